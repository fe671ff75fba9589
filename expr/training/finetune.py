"""The unit of ``expr finetune`` (:mod:`expr.cli.finetune`), :class:`FrameUnit`:
stage I of the leaders' recipe. An image encoder of any family (SPEC as ``expr prepare --visual`` takes it) learns
to classify single face crops of the store (``expr prepare ... --media`` keeps them); stage II then trains the
temporal head on its features.

How to run it, and what it writes: :mod:`expr.cli.finetune`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import numpy as np
import torch

from expr.atomic import write_text
from expr.config import ConfigError, default_num_workers
from expr.data.frames import FrameDataset, FrameSampler, labelled_face_rows, spread
from expr.data.online import MediaStore
from expr.data.source import open_store
from expr.data.store import video_of_rows
from expr.features.encoders import TUNED_INFO
from expr.features.spec import SpecError, parse_spec
from expr.features.tuning import Tuning, param_groups, tower, trainable_keys
from expr.models.frame import FrameClassifier, build_frame_classifier
from expr.scoring.metrics import classification_report
from expr.training.loaders import RunData
from expr.training.optim import param_groups as head_groups
from expr.training.rundir import write_best
from expr.training.trainer import Trainer
from expr.training.unit import TrainUnit

logger = logging.getLogger("expr.training.finetune")


class FrameUnit(TrainUnit):
    """Stage I: :class:`~expr.models.frame.FrameClassifier` on single face crops; the loop, checkpoints and resume
    are :class:`~expr.training.trainer.Trainer`'s."""

    def setup(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        if not cfg.data.cache:
            raise ConfigError(
                "expr finetune trains on a store's face crops: give --data.cache STORE, a store prepared with "
                "`expr prepare ... --media`"
            )
        store = self.store = open_store(cfg)
        if list(store.classes) != list(cfg.data.classes):
            raise ConfigError(f"config key 'data.classes' {list(cfg.data.classes)} does not match {store.classes}")
        self.encoders = None
        MediaStore(store.path / "media")  # the face crops: a store without them gets the message that says how
        text = cfg.finetune.backbone or store.feature_sets[store.visual_sets[0]].get("spec")
        if not text:
            raise ConfigError("config key 'finetune.backbone': give the image encoder to tune, e.g. timm:convnext_tiny")
        try:
            self.spec = parse_spec(text, "visual")
        except SpecError as e:
            raise ConfigError(f"config key 'finetune.backbone': {e}") from None
        if self.spec.family == "finetuned":
            raise ConfigError("config key 'finetune.backbone': give the base encoder's spec, not finetuned:RUN_DIR")
        cfg.finetune.backbone = str(self.spec)
        self.tuning = Tuning.image(cfg.finetune)
        model, self.encoder = build_frame_classifier(self.spec, self.tuning, cfg.num_classes, cfg.finetune.dropout)
        self.data = self._frames(store, self.encoder.to_batch)
        if acc.is_main_process and not self.resuming:
            self.save_config()
        enc_lr = (cfg.finetune.lr or cfg.train.lr) / cfg.train.lr  # as a factor of the (scaled) head lr

        def groups(lr: float) -> list[dict]:
            part = tower(model.encoder, self.spec.family)
            prefix = "encoder." + ("visual." if part is not model.encoder else "")
            wd, decay = cfg.train.weight_decay, cfg.finetune.layer_decay
            return head_groups(model.classifier, wd) + param_groups(part, prefix, lr * enc_lr, decay, wd)

        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        self.prepare(model, groups)
        logger.info(
            f"{self.spec} ({self.tuning.method}): {trained / 1e6:.2f} M of {total / 1e6:.1f} M parameters train; "
            f"{len(self.data.sampler)} training frames per epoch (of {len(self.data.train_set)}), "
            f"{len(self.data.val_set)} validation frames; lr {self.lr:.3g} (classifier), {self.lr * enc_lr:.3g} "
            f"(encoder, layer decay {cfg.finetune.layer_decay}); {self.steps_per_epoch * cfg.train.epochs} steps"
        )

    def _frames(self, store, to_batch) -> RunData:
        cfg, f = self.cfg, self.cfg.finetune
        train_rows = labelled_face_rows(store, "train")
        val_rows = spread(labelled_face_rows(store, "validation"), f.val_frames)
        for split, rows in (("train", train_rows), ("validation", val_rows)):
            if not len(rows):
                raise ConfigError(f"the store {store.path} has no labelled face crops in its '{split}' videos")

        def to_tensor(image):
            return to_batch([image])[0]

        train_set = FrameDataset(store, train_rows, to_tensor, cfg.data.augment, cfg.train.seed)
        val_set = FrameDataset(store, val_rows, to_tensor)
        sampler = FrameSampler(train_set.labels, f.frames_per_epoch, f.balanced, cfg.train.seed)
        workers = cfg.data.num_workers
        if workers is None:
            workers = default_num_workers("online", self.accelerator.num_processes)
        loader = dict(
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )
        bs = cfg.train.batch_size
        train_loader = torch.utils.data.DataLoader(train_set, batch_size=bs, sampler=sampler, **loader)
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=bs * 2, shuffle=False, **loader)
        return RunData(store, train_set, val_set, sampler, train_loader, val_loader)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.model(batch["pixels"])
        loss = torch.nn.functional.cross_entropy(
            logits.float(), batch["label"], ignore_index=-1, label_smoothing=self.cfg.loss.label_smoothing
        )
        return {"loss": loss}

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Frame-level macro-F1 of the validation crops, gathered from every process without padding duplicates."""
        self.model.eval()
        indices, labels, probs = [], [], []
        for batch in self.val_loader:
            p = self.model(batch["pixels"]).float().softmax(-1)
            i, y, p = self.accelerator.gather_for_metrics((batch["index"], batch["label"], p))
            indices.append(i.cpu())
            labels.append(y.cpu())
            probs.append(p.cpu())
        index = torch.cat(indices).numpy()
        order = np.argsort(index, kind="stable")
        labels, probs = torch.cat(labels).numpy()[order], torch.cat(probs).numpy()[order]
        report = classification_report(labels, probs.argmax(1), self.cfg.data.classes)
        self.last_frame_probs = (self.data.val_set.rows[index[order]], probs, labels)
        metrics = {"val/macro_f1": report["macro_f1"], "val/accuracy": report["accuracy"]}
        metrics["val/per_class_f1"] = report["per_class_f1"]
        if report["absent_classes"]:
            metrics["val/absent_classes"] = report["absent_classes"]
            metrics["val/macro_f1_present"] = report["macro_f1_present"]
        return metrics

    def trained_on(self) -> dict[str, Any]:
        """The videos whose face crops stage I trained on (a ``finetuned:`` set records them: training or validating
        on them later is refused), and the folds of the split it used."""
        store, rows = self.store, self.data.train_set.rows
        videos = np.unique(video_of_rows(store.frame_offset, rows))
        d = self.cfg.data
        return {"videos": [store.names[v] for v in videos], "folds": d.folds, "fold": d.fold if d.folds else None}

    def target_coverage(self) -> dict[str, float]:
        """The labelled training face crops drawn at least once in the epochs trained."""
        sampler, total = self.data.sampler, len(self.data.train_set)
        drawn, epoch = np.zeros(total, bool), sampler.epoch
        for e in range(len(self.progress.history)):
            sampler.set_epoch(e)
            drawn[np.fromiter(sampler, np.int64) % total] = True
        sampler.set_epoch(epoch)
        return {"expr": float(drawn.mean()) if total else float("nan")}

    def epoch_line(self, metrics: dict[str, Any], improved: bool) -> str:
        per_class = " ".join(f"{k[:4]} {v:.2f}" for k, v in metrics["val/per_class_f1"].items())
        return (
            f"epoch {metrics['epoch']}/{self.cfg.train.epochs}  train/loss {metrics['train/loss']:.4f}  val/macro_f1 "
            f"{metrics['val/macro_f1']:.4f} (frames)  val/accuracy {metrics['val/accuracy']:.4f}"
            f"{'  *best*' if improved else ''}  ({metrics['time/epoch_s']:.1f} s)  [{per_class}]"
        )

    def save_best(self, epoch: int, metrics: dict[str, Any]) -> None:
        """``best/model.safetensors``: what trained (the tuned part of the encoder and the classifier), never the
        base weights; ``best/tuning.json``: the base encoder and its tuning, which ``finetuned:RUN_DIR`` rebuilds."""
        acc = self.accelerator
        state = acc.get_state_dict(self.model)
        if not acc.is_main_process:
            return
        model: FrameClassifier = acc.unwrap_model(self.model)
        keep = trainable_keys(model)
        state = {k: v for k, v in state.items() if k in keep}
        info = {"epoch": epoch, "val/macro_f1": metrics["val/macro_f1"], "classes": list(self.cfg.data.classes),
                "config": self.cfg.to_dict(), "store": {"path": str(self.store.path)}}  # fmt: skip
        rows, probs, labels = self.last_frame_probs
        write_best(self.run_dir, state, info, rows, probs, labels)
        tuned = {"backbone": str(self.spec), "tuning": dataclasses.asdict(self.tuning), "dim": self.encoder.dim,
                 **{k: info[k] for k in ("classes", "epoch", "val/macro_f1")},
                 "trained_on": self.trained_on()}  # fmt: skip
        write_text(self.run_dir / "best" / TUNED_INFO, json.dumps(tuned, indent=2))


def run(cfg, resume_dir: str | None = None) -> dict[str, Any]:
    """Stage I with ``cfg`` (or continue ``resume_dir``); the result dict of :meth:`Trainer.fit`."""
    return Trainer(cfg, resume_dir=resume_dir, unit=FrameUnit).fit()
