"""The frame classifier of stage I (``expr finetune``): an image encoder of any family, tuned as the config says
(:mod:`expr.features.tuning`), its pooled feature, dropout and one linear layer to the classes.

Its feature is exactly what the encoder gives ``expr prepare`` (the family's pooling), so the tuned encoder makes a
feature set (``--visual NAME=finetuned:RUN_DIR``) on which stage II trains the temporal head.
"""

from __future__ import annotations

import torch
from torch import nn

from expr.features.encoders import ImageEncoder, load_image_encoder, load_tuned
from expr.features.spec import EncoderSpec, parse_spec
from expr.features.tuning import Tuning, apply, set_mode, tower


class FrameClassifier(nn.Module):
    """``forward(pixels [B, 3, H, W]) -> logits [B, C]``. ``encoder`` is the pretrained model (only what its tuning
    trains is saved: ``pretrained``), ``classifier`` the new linear layer."""

    pretrained = ("encoder",)

    def __init__(self, encoder: ImageEncoder, family: str, tuning: Tuning, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.encoder = encoder.model
        self._features = encoder.forward  # the family's pooled output, as feature extraction computes it
        self.family, self.tuning = family, tuning
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.dim, num_classes)

    def train(self, mode: bool = True):
        """The classifier trains; the encoder's frozen weights keep their eval behaviour (:func:`set_mode`)."""
        super().train(mode)
        self.encoder.eval()
        set_mode(tower(self.encoder, self.family), self.tuning, mode)
        return self

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The pooled feature [B, D] (float32), the input cast to the encoder's weights (half under DeepSpeed fp16)."""
        dtype = next(self.encoder.parameters()).dtype
        return self._features(pixels.to(dtype)).float()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.dropout(self.features(pixels))
        return self.classifier(features.to(self.classifier.weight.dtype))


def build_frame_classifier(spec: EncoderSpec, tuning: Tuning, num_classes: int, dropout: float = 0.0):
    """(the classifier on the CPU in fp32, the image encoder it wraps: its ``to_batch`` preprocesses images)."""
    encoder = load_image_encoder(spec, "cpu")
    apply(encoder.model, spec.family, tuning)
    return FrameClassifier(encoder, spec.family, tuning, num_classes, dropout), encoder


def load_frame_classifier(path) -> tuple[FrameClassifier, dict]:
    """The tuned frame classifier of an ``expr finetune`` run (its best epoch) or of an exported one, in eval mode
    on the CPU, and its ``tuning.json``."""
    encoder, info, weights = load_tuned(path)
    tuning = Tuning() if info.get("merged") else Tuning(**info["tuning"])
    family = parse_spec(info["backbone"]).family
    model = FrameClassifier(encoder, family, tuning, len(info["classes"]))
    model.classifier.load_state_dict(
        {k[len("classifier.") :]: v for k, v in weights.items() if k.startswith("classifier.")}
    )
    return model.eval(), info


__all__ = ["FrameClassifier", "build_frame_classifier", "load_frame_classifier"]
