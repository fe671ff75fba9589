"""The unit ``expr train`` trains: the fusion head on windows of a feature store (cached features, or online mode's
encoders on face crops and audio, frozen or tuned inside the prepared model), its criterion, validation as the
challenge scores it, and ``best/``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from accelerate.logging import get_logger

from expr.atomic import write_text
from expr.config import selection_metric
from expr.data.windows import target_coverage
from expr.features.tuning import param_groups as encoder_groups
from expr.features.tuning import trainable_keys
from expr.models.fusion import FusionHead, count_parameters
from expr.models.online import OnlineModel
from expr.scoring.outputs import mirrored, validation_metrics
from expr.training.checkpoint import save_head
from expr.training.criterion import Criterion
from expr.training.distributed import whole_parameter
from expr.training.loaders import build_run_data, split_record
from expr.training.optim import param_groups
from expr.training.rundir import TUNED_ENCODERS, write_best
from expr.training.unit import TrainUnit

logger = get_logger("expr.training.trainer")  # main process only, unless a call says otherwise


def epoch_line(metrics: dict[str, Any], epochs: int, improved: bool) -> str:
    """The log line of one epoch: loss, frame- and window-level macro-F1, accuracy, per-class F1; the VA and AU
    scores when those tasks train; P_MTL on the multi-task split."""
    parts = [f"epoch {metrics['epoch']}/{epochs}  train/loss {metrics['train/loss']:.4f}"]
    if "val/macro_f1" in metrics:
        parts.append(
            f"val/macro_f1 {metrics['val/macro_f1']:.4f} (frames; windows {metrics['val/window_macro_f1']:.4f})  "
            f"val/accuracy {metrics['val/accuracy']:.4f}"
        )
    if "val/ccc" in metrics:
        parts.append(f"val/ccc {metrics['val/ccc']:.4f} (valence {metrics['val/ccc_valence']:.3f}, arousal "
                     f"{metrics['val/ccc_arousal']:.3f})")  # fmt: skip
    if "val/au_f1" in metrics:
        parts.append(f"val/au_f1 {metrics['val/au_f1']:.4f}")
    if "val/p_mtl" in metrics:
        parts.append(f"val/p_mtl {metrics['val/p_mtl']:.4f}")
    line = "  ".join(parts) + f"{'  *best*' if improved else ''}  ({metrics['time/epoch_s']:.1f} s)"
    if "val/per_class_f1" in metrics:
        per_class = " ".join(f"{k[:4]} {v:.2f}" for k, v in metrics["val/per_class_f1"].items())
        if "val/absent_classes" in metrics:  # they count 0 in val/macro_f1, as in the challenge's score
            absent = ", ".join(metrics["val/absent_classes"])
            per_class += (
                f"; no validation frames of {absent} (mean over the others {metrics['val/macro_f1_present']:.4f})"
            )
        line += f"  [{per_class}]"
    return line


class HeadUnit(TrainUnit):
    """The fusion head (:class:`~expr.models.fusion.FusionHead`) and its objective (:class:`Criterion`)."""

    tuned = False
    """Online mode with trainable encoders: the prepared model is an :class:`~expr.models.online.OnlineModel`."""

    def setup(self) -> None:
        """Data, loss, model, optimizer and schedule (prepared), and the resolved config saved in the run."""
        cfg, acc = self.cfg, self.accelerator
        self.data = build_run_data(cfg, acc)
        self.store, self.encoders = self.data.store, self.data.encoders
        with acc.main_process_first():  # the main process caches the prompts' text embeddings first
            self.criterion = Criterion.for_store(self.store, cfg)
        if acc.is_main_process:  # the store has set the head's input widths
            if not self.resuming:
                self.save_config()
            record = split_record(self.store, self.data.train_set, self.data.val_set)
            write_text(self.run_dir / "videos.json", json.dumps(record, indent=2))
            crossing = self.store.crossing_videos(cfg.train.tasks)
            if cfg.train.task_overlap == "exclude" and len(crossing):
                logger.info("train.task_overlap=exclude: %d videos that one trained task validates or tests on are "
                            "kept out of every task's training", len(crossing))  # fmt: skip
            elif len(crossing):
                logger.warning(
                    "train.task_overlap=allow: %d videos (%d frames) that one trained task validates or tests on "
                    "train another; the validation scores of this run are not held out",
                    len(crossing), int(self.store.num_frames[crossing].sum()),
                )  # fmt: skip
        self._build_model()

    def _build_model(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        model = FusionHead(cfg.model, cfg.num_classes, cfg.train.tasks, cfg.loss.task_balance == "uncertainty")
        num_params = count_parameters(model)  # before prepare: ZeRO-3 partitions the module in place
        groups = None
        if self.encoders is not None and self.encoders.trains:  # tuned encoders train inside the prepared module
            model, groups = OnlineModel(self.encoders, model), self._tuned_groups(self.encoders, model)
            num_params = count_parameters(model)
            self.encoders, self.tuned = None, True
        self.prepare(model, groups)
        self.criterion.to(acc.device)
        t, n = cfg.train, acc.num_processes
        logger.info(
            f"head: {num_params / 1e6:.2f} M trainable parameters; {len(self.data.train_set)} train / "
            f"{len(self.data.val_set)} validation windows of {cfg.data.window} frames; effective batch "
            f"{t.batch_size * n * t.grad_accum_steps} ({t.batch_size} per device x {n} processes x "
            f"{t.grad_accum_steps} accumulation); lr {self.lr:.3g} (train.scale_lr={t.scale_lr}); "
            f"{self.steps_per_epoch * t.epochs} optimizer steps"
        )

    def _tuned_groups(self, encoders, head) -> Callable[[float], list[dict]]:
        """Optimizer groups of a tuned online run: the head at the run's learning rate, the encoders' trained
        weights at ``finetune.lr`` with layer-wise decay."""
        f, wd = self.cfg.finetune, self.cfg.train.weight_decay
        factor = (f.lr or self.cfg.train.lr) / self.cfg.train.lr

        def groups(lr: float) -> list[dict]:
            out = param_groups(head, wd)
            for name in ("clip_visual", "wav2vec2"):
                out += encoder_groups(getattr(encoders, name), f"encoders.{name}.", lr * factor, f.layer_decay, wd)
            return out

        return groups

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The losses of a batch (``loss`` is optimised, all are logged)."""
        return self.criterion(self._forward(batch), batch)

    def _forward(self, batch: dict[str, torch.Tensor]):
        """The head on a batch; in online mode the frozen encoders first turn crops and audio into features."""
        if self.tuned:
            return self.model(
                batch["pixels"], batch["visual_mask"], batch["wave"], batch["wave_mask"], batch.get("wave_length")
            )
        if self.encoders is not None:
            batch = self.encoders.encode_batch(batch)
        dtype = next(self.model.parameters()).dtype
        dtype = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
        return self.model(
            batch["visual"].to(dtype), batch["visual_mask"], batch["audio"].to(dtype), batch["audio_mask"]
        )

    def epoch_line(self, metrics: dict[str, Any], improved: bool) -> str:
        return epoch_line(metrics, self.cfg.train.epochs, improved)

    @property
    def class_weights(self) -> torch.Tensor:
        return self.criterion.class_weights

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Class probabilities of every validation window, gathered from all processes without the padding
        duplicates, scored at frame level by :func:`expr.scoring.outputs.validation_metrics`."""
        self.model.eval()
        tasks = [t for t in self.cfg.train.tasks if t != "expr"]
        indices, probs, outputs = [], [], {t: [] for t in tasks}

        def window_outputs(batch):  # class probabilities, and the other tasks' values
            scores = self._forward(batch).scores(("expr", *tasks))
            return scores["expr"], [scores[t] for t in tasks]

        for batch in self.val_loader:
            p, extra = window_outputs(batch)
            if self.cfg.eval.flip and "pixels" in batch:  # test-time view: the mirrored crops
                p2, extra2 = window_outputs(mirrored(batch))
                p, extra = (p + p2) / 2, [(a + b) / 2 for a, b in zip(extra, extra2, strict=True)]
            i, p, extra = self.accelerator.gather_for_metrics((batch["index"], p, extra))
            indices.append(i.cpu())
            probs.append(p.cpu())
            for t, e in zip(tasks, extra, strict=True):
                outputs[t].append(e.cpu())
        index = torch.cat(indices).numpy()
        order = np.argsort(index, kind="stable")
        probs = torch.cat(probs).numpy()[order]
        outputs = {t: torch.cat(v).numpy()[order] for t, v in outputs.items()}
        metrics, self.last_frame_probs, self.last_task_frames = validation_metrics(
            self.store, self.data.val_set, index[order], probs, self.cfg, outputs
        )
        module = self.accelerator.unwrap_model(self.model)
        log_vars = getattr(getattr(module, "head", module), "task_log_vars", None)  # a tuned OnlineModel's head
        if log_vars is not None:  # uncertainty weighting: the weights learned so far
            learned = self.criterion.learned_weights(whole_parameter(self.accelerator, log_vars))
            metrics["train/task_weights"] = {t: round(w, 4) for t, w in learned.items()}
        return metrics

    def save_best(self, epoch: int, metrics: dict[str, Any]) -> None:
        """The best head so far (:func:`expr.training.rundir.write_best`); ZeRO-3 partitions are gathered on every
        rank."""
        state = self.accelerator.get_state_dict(self.model)
        if self.accelerator.is_main_process:
            encoders = None
            if self.tuned:  # the head as always; the encoders' trained weights beside it
                keep = trainable_keys(self.accelerator.unwrap_model(self.model))
                encoders = {
                    k[len("encoders.") :]: v for k, v in state.items() if k.startswith("encoders.") and k in keep
                }
                state = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
            info = {
                "epoch": epoch,
                **{
                    k: metrics[k]
                    for k in ("val/macro_f1", "val/ccc", "val/au_f1", "val/score", "val/p_mtl")
                    if k in metrics
                },
                "selected_by": selection_metric(self.cfg),
                "classes": list(self.cfg.data.classes),
                "config": self.cfg.to_dict(),
                "store": {"path": str(self.store.path), **self.store.meta},
            }
            rows, probs = self.last_frame_probs
            write_best(self.run_dir, state, info, rows, probs, self.store.labels[rows], self.last_task_frames.get("va"))
            if encoders is not None:
                save_head(encoders, self.run_dir / "best" / TUNED_ENCODERS)

    def target_coverage(self) -> dict[str, float]:
        """Per task: the labelled training frames that were a target at least once in the epochs trained."""
        return target_coverage(self.data.train_set, len(self.progress.history))
