"""The training objective of a run, built from its store and config: class weights counted over the training frames,
the class prompts' text embeddings from the CLIP that made the store's image features, the AU positive weights, and
the losses of the trained tasks applied to a batch."""

from __future__ import annotations

from typing import Any

import torch
from accelerate.logging import get_logger

from expr.config import Config, ConfigError
from expr.features.backbones import clip_tag, text_embeddings
from expr.features.spec import EncoderSpec
from expr.tasks import TASKS
from expr.training.losses import au_loss, au_pos_weights, ccc_loss, class_weights, total_loss

logger = get_logger("expr.training.criterion")  # main process only


def text_source(store, cfg: Config) -> tuple[str | None, str, str] | None:
    """(open_clip set name or None, model, tag) of the CLIP that encodes the prompts: ``loss.text_set``, else the
    first open_clip set among the chosen visual sets, else the store's first open_clip set, else the store's recorded
    CLIP or (demo data) ``backbones.clip`` / ``clip_pretrained``; None when the store has no CLIP at all."""
    sets = store.feature_sets
    clips = [n for n, s in sets.items() if s.get("family") == "open_clip"]
    name = cfg.loss.text_set
    if name is not None and name not in clips:
        raise ConfigError(
            f"config key 'loss.text_set': the feature store {store.path} has no open_clip set '{name}' (its open_clip "
            f"sets: {', '.join(clips) or 'none'}); add one with expr prepare --visual NAME=open_clip:MODEL@TAG"
        )
    name = name or next((n for n in store.visual_sets if n in clips), None) or (clips[0] if clips else None)
    if name is not None:
        spec = EncoderSpec("open_clip", sets[name]["model"], sets[name].get("weights"))
        return name, spec.model, clip_tag(spec)
    recorded = store.meta.get("backbones", {})
    if "clip_pretrained" in recorded:
        return None, recorded["clip"], recorded["clip_pretrained"]
    if all(s.get("family") == "synthetic" for s in sets.values()):
        return None, cfg.backbones.clip, cfg.backbones.clip_pretrained
    return None


def prompt_embeddings(store, cfg: Config) -> torch.Tensor:
    """[C, D] text embeddings of the class prompts (``loss.prompt_template``) from the CLIP of :func:`text_source`:
    the store's own when it made them, else encoded (and cached). ``model.text_dim`` follows their width. A store
    without any CLIP gives zeros when the contrastive loss is off, and an error naming the fix when it is on."""
    source = text_source(store, cfg)
    if source is None:
        if cfg.loss.contrastive_weight > 0:
            raise ConfigError(
                f"the contrastive loss needs CLIP text embeddings, and the feature store {store.path} has no open_clip "
                f"set: add one (expr prepare ... --out {store.path} --visual clip=open_clip:ViT-B-32@openai) and "
                f"pass --loss.text_set clip, or turn the loss off with --loss.contrastive_weight 0"
            )
        return torch.zeros(cfg.num_classes, cfg.model.text_dim)
    name, clip, clip_pretrained = source
    text = store.text_embeddings(cfg.loss.prompt_template, name)
    if text is None:
        text = text_embeddings(cfg.data.classes, cfg.loss.prompt_template, clip, clip_pretrained)
    if clip_pretrained == "random":
        logger.warning(
            "the CLIP weights of this data are random: its text embeddings (and image features) come from "
            "randomly initialised CLIP (fine for the demo and smoke runs, meaningless for real data)"
        )
    if int(text.shape[1]) != cfg.model.text_dim:
        logger.info("model.text_dim: %d (the prompt embeddings' width)", int(text.shape[1]))
        cfg.model.text_dim = int(text.shape[1])
    return text


def frame_class_weights(store, cfg: Config) -> torch.Tensor:
    """Class weights from the training frames (every labelled frame once), not from the windows, whose count
    depends on the window length and stride of the run."""
    rows = store.frame_rows(store.training_videos("expr", cfg.train.tasks, cfg.train.task_overlap))
    return class_weights(store.labels[rows], cfg.num_classes, cfg.loss.class_weights)


def au_train_weights(store, cfg: Config) -> torch.Tensor:
    """Per-unit positive weights of the AU loss from the frames of the AU training videos."""
    videos = store.training_videos("au", cfg.train.tasks, cfg.train.task_overlap)
    return au_pos_weights(store.task_labels["au"][store.frame_rows(videos)])


class Criterion:
    """``criterion(out, batch)`` -> the loss terms of one batch for the run's ``train.tasks``: EXPR's
    :func:`expr.training.losses.total_loss` (``loss_cls``, ``loss_con``) over the windows with an EXPR label,
    ``loss_va`` (CCC or MSE) and ``loss_au`` (weighted BCE) over those with VA / AU targets; ``loss``: their weighted
    sum."""

    def __init__(self, cfg: Config, text: torch.Tensor, weights: torch.Tensor, au_weights: torch.Tensor | None = None):
        self.loss, self.audio_only = cfg.loss, cfg.model.modalities == "audio"
        self.text, self.class_weights, self.au_weights = text, weights, au_weights
        self.tasks = cfg.train.tasks
        self.task_weights = dict(zip(self.tasks, cfg.loss.task_weights or [1.0] * len(self.tasks), strict=True))
        self.uncertainty = cfg.loss.task_balance == "uncertainty"

    @classmethod
    def for_store(cls, store, cfg: Config) -> Criterion:
        au = au_train_weights(store, cfg) if "au" in cfg.train.tasks else None
        return cls(cfg, prompt_embeddings(store, cfg), frame_class_weights(store, cfg), au)

    def to(self, device) -> Criterion:
        self.text, self.class_weights = self.text.to(device), self.class_weights.to(device)
        if self.au_weights is not None:
            self.au_weights = self.au_weights.to(device)
        return self

    def expression(self, out, batch: dict[str, Any], keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """EXPR's terms over the windows ``keep`` (default all)."""
        pick = (lambda x: x) if keep is None else (lambda x: x[keep])  # noqa: E731
        return total_loss(
            pick(out.logits),
            pick(out.visual_embedding),
            out.logit_scale,
            pick(batch["label"]),
            self.text,
            self.class_weights,
            self.loss.contrastive_weight,
            self.loss.label_smoothing,
            # Only windows whose pooled visual embedding saw a face enter the contrastive term.
            has_face=pick(batch["visual_mask"].any(1) & (not self.audio_only)),
        )

    def weigh(self, task: str, loss: torch.Tensor, out, parts: dict[str, torch.Tensor], present=True) -> torch.Tensor:
        """Task ``task``'s term of the total: ``loss.task_weights``' weight times its loss, or with uncertainty
        weighting weight x (c exp(-s) loss + s / 2), s the head's learned log-variance of the task and c 1/2 for
        values (a Gaussian likelihood), 1 for classes and units (Kendall et al. 2018). The learned weight c exp(-s)
        is logged as ``weight_<task>``. A batch without the task's targets (``present`` False: its loss is a zero that
        keeps the task's head in the graph) adds nothing, and leaves the log-variance alone."""
        if not self.uncertainty or not present:
            return self.task_weights[task] * loss
        s = out.log_vars[self.tasks.index(task)].float()
        c = 0.5 if TASKS[task].kind == "values" else 1.0
        parts[f"weight_{task}"] = (c * torch.exp(-s)).detach()
        return self.task_weights[task] * (c * torch.exp(-s) * loss + 0.5 * s)

    def learned_weights(self, log_vars: torch.Tensor) -> dict[str, float]:
        """Uncertainty weighting: each task's learned weight c exp(-s) from the head's log-variances."""
        return {t: float((0.5 if TASKS[t].kind == "values" else 1.0) * torch.exp(-s)) for t, s in
                zip(self.tasks, log_vars, strict=True)}  # fmt: skip

    def __call__(self, out, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.tasks == ("expr",) and not self.uncertainty:
            return self.expression(out, batch)
        parts: dict[str, torch.Tensor] = {}
        # Every parameter stays in the graph (DDP reduces all of them) when a batch lacks a task's targets: the
        # classifier, the contrastive projection and scale through zero terms, the task heads through their losses.
        total = (out.logits.sum() + out.visual_embedding.sum() + out.logit_scale.sum()) * 0.0
        if getattr(out, "log_vars", None) is not None:  # a task without targets here adds no gradient to its own
            total = total + out.log_vars.sum() * 0.0
        if "expr" in self.tasks:
            labelled = batch["label"] >= 0
            if labelled.any():
                expr = self.expression(out, batch, None if labelled.all() else labelled)
                total = total + self.weigh("expr", expr.pop("loss"), out, parts)
                parts.update(expr)
        if "va" in self.tasks:
            target = batch["va"].to(out.va.device)
            valid = ~torch.isnan(target).any(-1)
            if self.loss.va_loss == "ccc":
                va = ccc_loss(out.va, target, valid)
            else:
                va = ((out.va[valid].float() - target[valid]) ** 2).mean() if valid.any() else out.va.sum() * 0.0
            parts["loss_va"] = va
            total = total + self.weigh("va", va, out, parts, bool(valid.any()))
        if "au" in self.tasks:
            target = batch["au"].to(out.au.device)
            au = au_loss(out.au, target, self.au_weights)
            parts["loss_au"] = au
            total = total + self.weigh("au", au, out, parts, bool((target >= 0).all(-1).any()))
        return {"loss": total, **parts}
