"""The training objective of a run, built from its store and config: class weights counted over the training frames,
the class prompts' text embeddings from the CLIP that made the store's image features, and
:func:`expr.losses.total_loss` applied to a batch."""

from __future__ import annotations

from typing import Any

import torch
from accelerate.logging import get_logger

from expr.config import Config, ConfigError
from expr.features.backbones import text_embeddings
from expr.losses import class_weights, total_loss

logger = get_logger("expr.criterion")  # main process only


def prompt_embeddings(store, cfg: Config) -> torch.Tensor:
    """[C, D] text embeddings of the class prompts (``loss.prompt_template``), encoded by the CLIP that made the
    store's image features: the store's own embeddings, else its recorded CLIP, else (demo data)
    ``backbones.clip`` / ``backbones.clip_pretrained``."""
    text = store.text_embeddings(cfg.loss.prompt_template)
    recorded = store.meta.get("backbones", {})
    clip = recorded.get("clip") if "clip_pretrained" in recorded else cfg.backbones.clip
    clip_pretrained = recorded.get("clip_pretrained", cfg.backbones.clip_pretrained)
    if text is None:
        text = text_embeddings(cfg.data.classes, cfg.loss.prompt_template, clip, clip_pretrained)
    if clip_pretrained == "random":
        logger.warning(
            "the CLIP weights of this data are random: its text embeddings (and image features) come from "
            "randomly initialised CLIP (fine for the demo and smoke runs, meaningless for real data)"
        )
    if int(text.shape[1]) != cfg.model.text_dim:
        raise ConfigError(
            f"config key 'model.text_dim' is {cfg.model.text_dim} but the feature store {store.path} has "
            f"{int(text.shape[1])}-d text embeddings: pass --model.text_dim {int(text.shape[1])}"
        )
    return text


def frame_class_weights(store, cfg: Config) -> torch.Tensor:
    """Class weights from the training frames (every labelled frame once), not from the windows, whose count
    depends on the window length and stride of the run."""
    rows = store.frame_rows(store.videos_in("train"))
    return class_weights(store.labels[rows], cfg.num_classes, cfg.loss.class_weights)


class Criterion:
    """``criterion(out, batch)`` -> the loss terms of :func:`expr.losses.total_loss` for one batch."""

    def __init__(self, cfg: Config, text: torch.Tensor, weights: torch.Tensor):
        self.loss, self.audio_only = cfg.loss, cfg.model.modalities == "audio"
        self.text, self.class_weights = text, weights

    @classmethod
    def for_store(cls, store, cfg: Config) -> Criterion:
        return cls(cfg, prompt_embeddings(store, cfg), frame_class_weights(store, cfg))

    def to(self, device) -> Criterion:
        self.text, self.class_weights = self.text.to(device), self.class_weights.to(device)
        return self

    def __call__(self, out, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return total_loss(
            out.logits,
            out.visual_embedding,
            out.logit_scale,
            batch["label"],
            self.text,
            self.class_weights,
            self.loss.contrastive_weight,
            self.loss.label_smoothing,
            # Only windows whose pooled visual embedding saw a face enter the contrastive term.
            has_face=batch["visual_mask"].any(1) & (not self.audio_only),
        )
