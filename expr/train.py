"""Training entry point: ``accelerate launch expr/train.py [--config FILE] [--section.key VALUE ...]``.

``run(cfg)`` trains the fusion head from a feature store (the built-in demo data when ``data.cache`` is unset)
and returns a result dict; ``main(argv)`` parses the command line. Sweeps call ``run`` directly.

A run directory holds: ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON object per epoch),
``best/`` (the best head by validation macro-F1: ``model.safetensors`` + ``head.json``), ``states/`` (accelerate
resume states, the newest named in ``states/latest.json``) and tracker logs (TensorBoard by default).
``--resume RUN_DIR`` continues a killed run from its newest state and ends with the same metrics as an
uninterrupted run with the same seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script (`accelerate launch expr/train.py`): keep expr/ itself off sys.path so its modules cannot
    # shadow top-level packages, and make the package importable from a source checkout.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():  # DeepSpeed picks its accelerator when first imported (accelerate imports it)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

from accelerate.logging import get_logger  # noqa: E402

from expr.atomic import atomic_path, write_text
from expr.config import (  # noqa: E402
    Config,
    ConfigError,
    apply_dict,
    available_cores,
    build_config,
    load_yaml,
    parse_cli,
    validate,
)

logger = get_logger("expr.train")  # main process only, unless a call says otherwise

EpochCallback = Callable[[int, dict[str, Any]], bool | None]


def cosine_schedule(optimizer, total_steps: int, warmup_ratio: float, min_lr_ratio: float):
    """Linear warm-up then cosine decay to ``min_lr_ratio`` x the peak learning rate."""
    warmup = int(round(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and conv kernels only; not on biases, norms, the logit scale or the gains of
    weight-normalised convolutions (``weight.original0``: a per-channel scale, like a norm's, although 3-d)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kernel = p.ndim >= 2 and "logit_scale" not in name and not name.endswith("original0")
        (decay if kernel else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _new_run_dir() -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / stamp
    n = 1
    while path.exists():
        path = Path("runs") / f"{stamp}-{n}"
        n += 1
    return str(path)


def _flat_config(cfg: Config) -> dict[str, Any]:
    out = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            out[f"{section}/{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


class Trainer:
    """One training run. Construct, then :meth:`fit`."""

    def __init__(self, cfg: Config, resume_dir: str | None = None, on_epoch_end: EpochCallback | None = None):
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, broadcast_object_list, set_seed

        self.cfg = cfg
        self.on_epoch_end = on_epoch_end
        trackers = [t.strip() for t in (cfg.train.log_with or "").split(",") if t.strip() not in ("", "none")]
        run_dir = resume_dir or cfg.train.output_dir
        if not resume_dir and run_dir and any((Path(run_dir) / f).exists() for f in ("metrics.jsonl", "states")):
            raise ConfigError(
                f"train.output_dir {run_dir} already holds a run: continue it with --resume {run_dir} or choose "
                f"another --train.output_dir"
            )
        # Without CUDA, processes started by the multi-GPU launcher must be told to use the CPU (gloo); otherwise
        # accelerate falls back to one process per launch.
        deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") == "true"
        no_cuda = not torch.cuda.is_available()
        use_cpu = no_cuda and not deepspeed  # cpu=True would silently drop DeepSpeed
        handlers = [InitProcessGroupKwargs(backend="gloo")] if deepspeed and no_cuda else []
        self.accelerator = Accelerator(
            cpu=use_cpu,
            kwargs_handlers=handlers,
            gradient_accumulation_steps=cfg.train.grad_accum_steps,
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=run_dir or ".", logging_dir=None),
        )
        acc = self.accelerator
        if acc.device.type == "cpu":
            local = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))
            torch.set_num_threads(cfg.train.cpu_threads or max(1, available_cores() // max(1, local)))
        if run_dir is None:  # every process must agree on the timestamped name
            holder = [_new_run_dir() if acc.is_main_process else None]
            broadcast_object_list(holder)
            run_dir = holder[0]
            acc.project_configuration.project_dir = run_dir
        self.run_dir = Path(run_dir)
        acc.project_configuration.logging_dir = str(self.run_dir / "logs")
        cfg.train.output_dir = str(self.run_dir)
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / "config.yaml")
        acc.wait_for_everyone()
        set_seed(cfg.train.seed)
        self._build_data()
        self._build_model()
        if trackers:
            acc.init_trackers("expr", config=_flat_config(cfg))
        self.start_epoch, self.skip_steps, self.global_step = 0, 0, 0
        self.skipped_steps = 0  # optimizer steps skipped by fp16 loss scaling (overflow), for the log and final.json
        self.best = {"macro_f1": -1.0, "epoch": -1}
        self.history: list[dict[str, Any]] = []
        self.epoch_sums = [0.0, 0.0]  # (sum of window losses, windows) in the current epoch, for resume
        if resume_dir:
            self._resume()

    # ----------------------------------------------------------------------------------------------- setup
    def _build_data(self) -> None:
        from expr.data.windows import EpochSampler, WindowDataset, collate_batch, load_or_build_windows
        from expr.features.backbones import text_embeddings
        from expr.losses import class_weights
        from expr.report import open_store

        cfg, acc = self.cfg, self.accelerator
        with acc.main_process_first():
            self.store = open_store(cfg)
            path = self.store.path
            if not cfg.data.cache:
                logger.info("data.cache is not set: using the built-in demo data at %s (synthetic; see README)", path)
            # The prompts must be encoded by the CLIP that made the store's image features: the store's own text
            # embeddings, else its recorded CLIP, else (demo data) backbones.clip / backbones.clip_pretrained.
            text = self.store.text_embeddings(cfg.loss.prompt_template)
            recorded = self.store.meta.get("backbones", {})
            clip = recorded.get("clip") if "clip_pretrained" in recorded else cfg.backbones.clip
            clip_pretrained = recorded.get("clip_pretrained", cfg.backbones.clip_pretrained)
            if text is None:
                text = text_embeddings(cfg.data.classes, cfg.loss.prompt_template, clip, clip_pretrained)
        if list(self.store.classes) != list(cfg.data.classes):
            raise ConfigError(
                f"config key 'data.classes' {list(cfg.data.classes)} does not match the classes of "
                f"the feature store {path}: {self.store.classes}"
            )
        for key, have in (
            ("visual_dim", self.store.meta.get("visual_dim")),
            ("audio_dim", self.store.meta.get("audio_dim")),
            ("text_dim", int(text.shape[1])),
        ):
            if have is not None and int(have) != getattr(cfg.model, key):
                raise ConfigError(
                    f"config key 'model.{key}' is {getattr(cfg.model, key)} but the feature store {path} has "
                    f"{have}-d features: pass --model.{key} {have} (or prepare the store with the intended backbones)"
                )
        if clip_pretrained == "random":
            logger.warning(
                "the CLIP weights of this data are random: its text embeddings (and image features) come from "
                "randomly initialised CLIP (fine for the demo and smoke runs, meaningless for real data)"
            )
        for split in ("train", "validation"):
            if not len(self.store.videos_in(split)):
                raise ConfigError(f"the feature store {path} has no '{split}' videos (data.cache)")
        with acc.main_process_first():
            train_windows = load_or_build_windows(
                self.store,
                "train",
                cfg.data.window,
                cfg.data.stride,
                cfg.data.label_frame,
                random_offset=cfg.data.random_offset,
            )
            val_windows = load_or_build_windows(
                self.store, "validation", cfg.data.window, cfg.data.resolved_eval_stride(), cfg.data.label_frame, True
            )
        if len(train_windows) == 0:
            raise ConfigError(f"no labelled training windows in {path} (split 'train', data.window={cfg.data.window})")
        if not (np.asarray(val_windows["label"]) >= 0).any():
            raise ConfigError(f"no labelled validation windows in {path} (split 'validation')")
        self.encoders = None
        collate = collate_batch
        if cfg.data.mode == "online":
            from expr.data.online import OnlineWindowDataset, collate_online
            from expr.models.online import store_encoders

            # The encoders that made the store's features (and its text embeddings); never trained, never prepared.
            self.encoders, image_transform = store_encoders(self.store, acc.device)
            self.train_set = OnlineWindowDataset(
                self.store, train_windows, image_transform, cfg.data.augment, cfg.train.seed, cfg.data.label_frame
            )
            self.val_set = OnlineWindowDataset(self.store, val_windows, image_transform, augment=False)
            collate = collate_online
        else:
            self.train_set = WindowDataset(self.store, train_windows, cfg.data.label_frame, cfg.train.seed)
            self.val_set = WindowDataset(self.store, val_windows)
        # Indices carry the epoch, so every loader (persistent workers included) draws the epoch's window offsets
        # and augmentation from (seed, epoch, window) alone.
        self.sampler = EpochSampler(len(self.train_set), cfg.train.seed, with_epoch=True)
        workers = cfg.data.resolved_num_workers(int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes)))
        # Loaders draw worker seeds from their own generator, not the global RNG: creating one (e.g. the skipping
        # loader of a resumed epoch) must not shift the dropout randomness restored from a checkpoint.
        loader = dict(
            collate_fn=collate,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )
        self.train_loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=cfg.train.batch_size, sampler=self.sampler, **loader
        )
        self.val_loader = torch.utils.data.DataLoader(
            self.val_set, batch_size=cfg.train.batch_size * 2, shuffle=False, **loader
        )
        self.text = text
        # Class frequencies come from the training frames (every labelled frame once), not from the windows, whose
        # count depends on the window length and stride of the run.
        train_frames = self.store.frame_rows(self.store.videos_in("train"))
        self.class_weights = class_weights(self.store.labels[train_frames], cfg.num_classes, cfg.loss.class_weights)

    def _build_model(self) -> None:
        from expr.models.fusion import FusionHead, count_parameters

        cfg, acc = self.cfg, self.accelerator
        model = FusionHead(cfg.model, cfg.num_classes)
        num_params = count_parameters(model)  # before prepare: ZeRO-3 partitions the module in place
        self._sync_deepspeed_config()
        factor = acc.num_processes * cfg.train.grad_accum_steps
        scale = {"none": 1.0, "linear": float(factor), "sqrt": math.sqrt(factor)}[cfg.train.scale_lr]
        self.lr = cfg.train.lr * scale
        optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=self.lr)
        steps_per_epoch = math.ceil(len(self.train_loader) / cfg.train.grad_accum_steps)
        self.total_steps = steps_per_epoch * cfg.train.epochs
        scheduler = cosine_schedule(optimizer, self.total_steps, cfg.train.warmup_ratio, cfg.train.min_lr_ratio)
        (self.model, self.optimizer, self.train_loader, self.val_loader, self.scheduler) = acc.prepare(
            model, optimizer, self.train_loader, self.val_loader, scheduler
        )
        self.text = self.text.to(acc.device)
        self.class_weights = self.class_weights.to(acc.device)
        self.steps_per_epoch = math.ceil(len(self.train_loader) / cfg.train.grad_accum_steps)
        effective = cfg.train.batch_size * acc.num_processes * cfg.train.grad_accum_steps
        logger.info(
            "head: %.2f M trainable parameters; %d train / %d validation windows of %d frames; effective batch "
            "%d (%d per device x %d processes x %d accumulation); lr %.3g (train.scale_lr=%s); %d optimizer steps",
            num_params / 1e6,
            len(self.train_set),
            len(self.val_set),
            cfg.data.window,
            effective,
            cfg.train.batch_size,
            acc.num_processes,
            cfg.train.grad_accum_steps,
            self.lr,
            cfg.train.scale_lr,
            self.steps_per_epoch * cfg.train.epochs,
        )

    def _sync_deepspeed_config(self) -> None:
        """The trainer's config is the one source of truth for clipping and accumulation: fill DeepSpeed's ``auto``
        (or missing) values from it, and refuse a DeepSpeed config that says otherwise."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is None:
            return
        ds = plugin.deepspeed_config
        for ds_key, cfg_key, ours in (
            ("gradient_clipping", "train.max_grad_norm", float(self.cfg.train.max_grad_norm or 0.0)),
            ("gradient_accumulation_steps", "train.grad_accum_steps", self.cfg.train.grad_accum_steps),
        ):
            theirs = ds.get(ds_key, "auto")
            if theirs != "auto" and float(theirs) != float(ours):
                raise ConfigError(
                    f"the DeepSpeed config sets {ds_key}={theirs} but {cfg_key} is {ours}: set it to 'auto' in the "
                    f"accelerate/DeepSpeed config (expr fills it in) or pass --{cfg_key} {theirs}"
                )
            ds[ds_key] = ours
        for block in ("optimizer", "scheduler"):
            if block in ds:
                raise ConfigError(
                    f"the DeepSpeed config has a '{block}' block: remove it; expr builds AdamW and the cosine "
                    f"schedule from train.* so there is one source of truth"
                )

    # ------------------------------------------------------------------------------------------ checkpoint
    def _state_dir(self) -> Path:
        return self.run_dir / "states"

    def save_state(self, epoch: int, step_in_epoch: int) -> None:
        """Resume state of all ranks, written to a temporary folder and renamed; then ``latest.json``."""
        acc = self.accelerator
        name = f"step{self.global_step:08d}"
        final = self._state_dir() / name
        tmp = self._state_dir() / f".{name}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        from accelerate.utils import gather_object

        sums_per_rank = gather_object([self.epoch_sums])  # each rank's running loss sums of this epoch
        acc.wait_for_everyone()
        if acc.is_main_process:
            progress = {
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": self.global_step,
                "skipped_steps": self.skipped_steps,
                "best": self.best,
                "history": self.history,
                "epoch_sums_per_rank": sums_per_rank,
            }
            (tmp / "progress.json").write_text(json.dumps(progress))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            write_text(self._state_dir() / "latest.json", json.dumps({"state": name}))
            kept = sorted(p for p in self._state_dir().glob("step*") if p.is_dir())
            for old in kept[: max(0, len(kept) - self.cfg.train.keep_last_states)]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def _resume(self) -> None:
        latest = self._state_dir() / "latest.json"
        if not latest.is_file():
            raise ConfigError(f"--resume {self.run_dir}: no saved state found ({latest} is missing)")
        state = self._state_dir() / json.loads(latest.read_text())["state"]
        progress = json.loads((state / "progress.json").read_text())
        sums = progress["epoch_sums_per_rank"]
        if len(sums) != self.accelerator.num_processes:  # before load_state, which fails obscurely on a mismatch
            raise ConfigError(
                f"--resume {self.run_dir}: the state was saved by {len(sums)} processes, this launch has "
                f"{self.accelerator.num_processes}; resume with the same number of processes"
            )
        self.accelerator.load_state(str(state))
        self.global_step = progress["global_step"]
        self.skipped_steps = progress.get("skipped_steps", 0)
        self.best, self.history = progress["best"], progress["history"]
        self.epoch_sums = list(sums[self.accelerator.process_index])
        if progress["step_in_epoch"] >= self.steps_per_epoch:  # saved at the end of an epoch
            self.start_epoch, self.skip_steps = progress["epoch"] + 1, 0
            self.epoch_sums = [0.0, 0.0]
        else:
            self.start_epoch, self.skip_steps = progress["epoch"], progress["step_in_epoch"]
        if self.accelerator.is_main_process:
            # Rows written after the state was saved belong to work that will be redone.
            write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
            logger.info(
                "resumed %s from %s: epoch %d, step %d", self.run_dir, state.name, self.start_epoch + 1, self.skip_steps
            )

    def save_best(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Head-only export (no optimizer, no backbones) for inference, atomically replaced."""
        from expr.checkpoint import save_head

        acc = self.accelerator
        state = acc.get_state_dict(self.model)  # gathers ZeRO-3 partitions
        if acc.is_main_process:
            best = self.run_dir / "best"
            save_head(state, best / "model.safetensors")
            info = {
                "epoch": epoch,
                "val/macro_f1": metrics["val/macro_f1"],
                "classes": list(self.cfg.data.classes),
                "config": self.cfg.to_dict(),
                "store": {"path": str(self.store.path), **self.store.meta},
            }
            write_text(best / "head.json", json.dumps(info, indent=2))
            # The best epoch's validation frame probabilities: post-processing can be tuned without retraining.
            rows, probs = self.last_frame_probs
            with atomic_path(best / "val_frame_probs.npz") as tmp:
                np.savez(tmp, rows=rows, probs=probs.astype(np.float16), labels=self.store.labels[rows])

    def _write_summary(self) -> None:
        """``final.json``: best result, process layout, and a parameter checksum from every rank (they must agree)."""
        from accelerate.utils import gather_object

        acc = self.accelerator
        params = list(acc.unwrap_model(self.model).parameters())
        plugin = acc.state.deepspeed_plugin
        gathered = contextlib.nullcontext()
        if plugin is not None and plugin.zero_stage == 3:  # each rank holds a partition: gather to compare
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters(params)
        with gathered:
            checksum = float(sum(p.detach().double().sum() for p in params))
        checksums = gather_object([checksum])
        if acc.is_main_process:
            if len(set(checksums)) > 1:
                logger.warning("parameters differ between ranks: %s", checksums)
            summary = {
                "best": self.best,
                "global_step": self.global_step,
                "fp16_skipped_steps": self.skipped_steps,
                "num_processes": acc.num_processes,
                "effective_batch": self.cfg.train.batch_size * acc.num_processes * self.cfg.train.grad_accum_steps,
                "lr": self.lr,
                "final_lr": float(self.scheduler.get_last_lr()[0]),
                "param_checksum_per_rank": checksums,
            }
            write_text(self.run_dir / "final.json", json.dumps(summary, indent=2))

    # ------------------------------------------------------------------------------------------- training
    def _forward(self, batch: dict[str, torch.Tensor]):
        """The head on a batch; in online mode the frozen encoders first turn crops and audio into features."""
        if self.encoders is not None:
            batch = self.encoders.encode_batch(batch)
        dtype = next(self.model.parameters()).dtype
        dtype = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
        return self.model(
            batch["visual"].to(dtype), batch["visual_mask"], batch["audio"].to(dtype), batch["audio_mask"]
        )

    @torch.no_grad()
    def predict_validation(self) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities of every validation window, gathered from all processes without the padding
        duplicates: (window indices, [W, C] float32 probabilities), in window order."""
        acc = self.accelerator
        self.model.eval()
        indices, probs = [], []
        for batch in self.val_loader:
            out = self._forward(batch)
            i, p = acc.gather_for_metrics((batch["index"], out.logits.float().softmax(dim=-1)))
            indices.append(i.cpu())
            probs.append(p.cpu())
        index = torch.cat(indices).numpy()
        order = np.argsort(index, kind="stable")
        return index[order], torch.cat(probs).numpy()[order]

    def evaluate(self) -> dict[str, Any]:
        """Frame-level validation metrics as the challenge scores them, through the one path from window
        probabilities to frame labels (:mod:`expr.evaluation`; model selection uses ``val/macro_f1``), the
        window-level metric beside them, and the smoothed metric when ``eval.smoothing`` is set."""
        from expr.evaluation import frame_probabilities, frame_report, smooth_rows

        cfg, store, val = self.cfg, self.store, self.val_set
        index, probs = self.predict_validation()
        windows = frame_report(val.label[index], probs, cfg.data.classes)
        videos = store.videos_in("validation")
        rows, frame_probs = frame_probabilities(
            store.num_frames,
            store.frame_offset,
            store.face,
            videos,
            val.video[index],
            val.start[index],
            val.window,
            probs,
            cfg.data.label_frame,
        )
        frames = frame_report(store.labels[rows], frame_probs, cfg.data.classes)
        self.last_frame_probs = (rows, frame_probs)
        metrics = {
            "val/macro_f1": frames["macro_f1"],
            "val/accuracy": frames["accuracy"],
            "val/per_class_f1": frames["per_class_f1"],
            "val/confusion_matrix": frames["confusion_matrix"],
            "val/frames": frames["count"],
            "val/window_macro_f1": windows["macro_f1"],
            "val/window_accuracy": windows["accuracy"],
            "val/windows": windows["count"],
        }
        if frames["absent_classes"]:
            metrics["val/absent_classes"] = frames["absent_classes"]
            metrics["val/macro_f1_present"] = frames["macro_f1_present"]
        if cfg.eval.smoothing != "none" and cfg.eval.smoothing_width > 1:
            smoothed = smooth_rows(
                rows, frame_probs, store.num_frames, store.frame_offset, cfg.eval.smoothing, cfg.eval.smoothing_width
            )
            metrics["val/smoothed_macro_f1"] = frame_report(store.labels[rows], smoothed, cfg.data.classes)["macro_f1"]
        return metrics

    def fit(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        from expr.losses import total_loss

        cfg, acc = self.cfg, self.accelerator
        stopped = False
        for epoch in range(self.start_epoch, cfg.train.epochs):
            t0 = time.time()
            self.model.train()
            skip = self.skip_steps if epoch == self.start_epoch else 0
            loader = (
                acc.skip_first_batches(self.train_loader, skip * cfg.train.grad_accum_steps)
                if skip
                else self.train_loader
            )
            # Both: accelerate re-applies the prepared loader's own iteration counter (0 in a resumed process) to the
            # sampler on every __iter__ where it can reach it; under DDP the skipping loader wraps the sampler one
            # level deeper than accelerate's set_epoch looks, so ours is set directly as well.
            loader.set_epoch(epoch)
            self.sampler.set_epoch(epoch)
            if not skip:
                self.epoch_sums = [0.0, 0.0]
            step_in_epoch = skip
            bar = tqdm(
                total=self.steps_per_epoch,
                initial=skip,
                desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                disable=not acc.is_main_process,
                leave=False,
                dynamic_ncols=True,
            )
            for batch in loader:
                with acc.accumulate(self.model):
                    out = self._forward(batch)
                    losses = total_loss(
                        out.logits,
                        out.visual_embedding,
                        out.logit_scale,
                        batch["label"],
                        self.text,
                        self.class_weights,
                        cfg.loss.contrastive_weight,
                        cfg.loss.label_smoothing,
                        # Only windows whose pooled visual embedding saw a face enter the contrastive term.
                        has_face=batch["visual_mask"].any(1) & (cfg.model.modalities != "audio"),
                    )
                    acc.backward(losses["loss"])
                    if acc.sync_gradients and cfg.train.max_grad_norm:
                        acc.clip_grad_norm_(self.model.parameters(), cfg.train.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad()
                n = batch["label"].shape[0]
                self.epoch_sums[0] += float(losses["loss"].detach()) * n
                self.epoch_sums[1] += n
                if not acc.sync_gradients:
                    continue
                self.global_step += 1
                self.skipped_steps += bool(getattr(self.optimizer, "step_was_skipped", False))
                step_in_epoch += 1
                bar.update(1)
                if self.global_step % cfg.train.log_every_steps == 0:
                    values = {f"train/{k}": float(v.detach()) for k, v in losses.items()}
                    values["train/lr"] = self.scheduler.get_last_lr()[0]
                    values["train/skipped_steps"] = self.skipped_steps
                    acc.log(values, step=self.global_step)
                    bar.set_postfix(loss=f"{values['train/loss']:.3f}")
                if (
                    cfg.train.checkpoint_every_steps
                    and self.global_step % cfg.train.checkpoint_every_steps == 0
                    and step_in_epoch < self.steps_per_epoch
                ):
                    self.save_state(epoch, step_in_epoch)
                if cfg.train.stop_after_steps and self.global_step >= cfg.train.stop_after_steps:
                    stopped = True
                    break
            bar.close()
            if stopped:
                if step_in_epoch < self.steps_per_epoch:
                    self.save_state(epoch, step_in_epoch)
                    logger.info(
                        "stopped after %d steps (train.stop_after_steps); resume with --resume %s",
                        self.global_step,
                        self.run_dir,
                        main_process_only=True,
                    )
                    break
            totals = torch.tensor(self.epoch_sums, device=acc.device, dtype=torch.float64)
            totals = acc.reduce(totals, reduction="sum")
            metrics = {
                "epoch": epoch + 1,
                "step": self.global_step,
                "train/loss": float(totals[0] / totals[1].clamp(min=1)),
            }
            metrics.update(self.evaluate())
            metrics["time/epoch_s"] = round(time.time() - t0, 2)
            self.history.append(metrics)
            improved = metrics["val/macro_f1"] > self.best["macro_f1"]
            if improved:
                self.best = {"macro_f1": metrics["val/macro_f1"], "epoch": epoch + 1}
                self.save_best(epoch + 1, metrics)
            if acc.is_main_process:
                with open(self.run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(metrics) + "\n")
            acc.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=self.global_step)
            per_class = " ".join(f"{k[:4]} {v:.2f}" for k, v in metrics["val/per_class_f1"].items())
            if "val/absent_classes" in metrics:  # they count 0 in val/macro_f1, as in the challenge's score
                absent = ", ".join(metrics["val/absent_classes"])
                per_class += (
                    f"; no validation frames of {absent} (mean over the others {metrics['val/macro_f1_present']:.4f})"
                )
            logger.info(
                "epoch %d/%d  train/loss %.4f  val/macro_f1 %.4f (frames; windows %.4f)  val/accuracy %.4f%s  "
                "(%.1f s)  [%s]",
                epoch + 1,
                cfg.train.epochs,
                metrics["train/loss"],
                metrics["val/macro_f1"],
                metrics["val/window_macro_f1"],
                metrics["val/accuracy"],
                "  *best*" if improved else "",
                metrics["time/epoch_s"],
                per_class,
                main_process_only=True,
            )
            self.save_state(epoch, self.steps_per_epoch)
            if stopped:
                break
            if self.on_epoch_end is not None:
                from accelerate.utils import broadcast_object_list

                holder = [bool(self.on_epoch_end(epoch + 1, metrics)) if acc.is_main_process else None]
                broadcast_object_list(holder)
                if holder[0]:
                    stopped = True
                    break
        self._write_summary()
        # Not acc.end_training(): it also destroys the process group, and a multi-process sweep worker trains many
        # runs in one group. The entry points tear the group down when they leave.
        for tracker in acc.trackers:
            tracker.finish()
        return {
            "run_dir": str(self.run_dir),
            "best_macro_f1": self.best["macro_f1"],
            "best_epoch": self.best["epoch"],
            "history": self.history,
            "stopped": stopped,
            "completed": not stopped and len(self.history) == cfg.train.epochs,
        }


def run(cfg: Config, resume_dir: str | None = None, on_epoch_end: EpochCallback | None = None) -> dict[str, Any]:
    """Train with ``cfg`` (or continue ``resume_dir``) and return the result dict."""
    return Trainer(cfg, resume_dir=resume_dir, on_epoch_end=on_epoch_end).fit()


def config_from_argv(argv: list[str]) -> tuple[Config, str | None]:
    """The resolved config of a command line; with ``--resume RUN_DIR`` the run's saved config plus overrides."""
    overrides, files, preset, resume = parse_cli(argv)
    if resume:
        saved = Path(resume) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {resume}: not a run directory ({saved} is missing)")
        cfg = Config()
        apply_dict(cfg, load_yaml(saved), str(saved))
        cfg.train.stop_after_steps = 0  # a simulated kill is not part of the run to continue
        for f in files:
            apply_dict(cfg, load_yaml(f), f)
        apply_dict(cfg, overrides, "command line")
        validate(cfg)
        return cfg, resume
    return build_config(overrides, files, preset), None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    # Our own messages at INFO; libraries (open_clip logs through the root logger) only from WARNING up.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    logging.getLogger("expr").setLevel(logging.INFO)
    try:
        cfg, resume = config_from_argv(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    from expr.data.store import StoreError
    from expr.features.backbones import BackboneError

    try:
        result = run(cfg, resume_dir=resume)
        is_main = PartialState().is_main_process
    except (ConfigError, StoreError, BackboneError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        # Leaving with a live gloo/NCCL group lets its threads race interpreter exit ("terminate called without
        # an active exception", SIGABRT on a finished run). Entry point only: run() may be called again.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # no rank tears down while another still writes
            torch.distributed.destroy_process_group()
    if is_main:
        print(
            f"best val/macro_f1 {result['best_macro_f1']:.4f} at epoch {result['best_epoch']}; run: {result['run_dir']}"
        )
    return 0


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Everything is written (atomically) and the process group is gone. Interpreter teardown of a finished
        # multi-process run can still abort in C++ ("terminate called without an active exception") and make
        # torchrun report a failure, so leave without it.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
