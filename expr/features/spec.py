"""Encoder specs: ``FAMILY:MODEL[@WEIGHTS][,key=value ...]``, the one way to name an image or audio encoder.

    open_clip:ViT-B-32@openai                     an open_clip architecture and pretrained tag
    open_clip:ViT-L-14@/weights/clip.pt           ... with a local checkpoint
    timm:vit_large_patch14_dinov2.lvd142m         a timm model (its default pretrained weights)
    timm:efficientnet_b0@random                   seeded random weights (smoke runs and tests only)
    hf:facebook/dinov2-large,pool=mean            a Hugging Face ``transformers`` vision encoder, mean of patch tokens
    hf:facebook/wavlm-base-plus,layer=6-9         a speech encoder, mean of hidden layers 6..9
    hf:/models/hubert-large                       a local ``save_pretrained`` folder
    finetuned:runs/stage1                         the image encoder that ``expr finetune`` tuned in that run (its
                                                  best epoch; base model, pooling and adapters as the run recorded)

WEIGHTS: a tag (open_clip), a local file or folder, or ``random``; omitted: the family's default weights of MODEL.
Options after commas:

- ``pool``: image output. ``cls`` (the class token), ``pooled`` (the model's own pooled output: timm's head
  pooling, ``pooler_output`` of transformers, CLIP's projected embedding), ``mean`` (mean of patch tokens, or of the
  feature map). Default ``pooled``.
- ``layer``: audio output. ``last`` (default), ``N`` (hidden state N; 0 = the feature projection's output) or
  ``A-B`` (the mean of hidden states A..B).
- ``flip``: ``1`` also encodes each face mirrored and averages the two (test-time augmentation).
- ``scales``: crop scales averaged per frame, ``+``-separated (``scales=1.0+0.85``): a scale below 1 re-crops the
  centre of the face crop, above 1 pads it (edge pixels) before the encoder's own preprocessing.
- anything else: a keyword argument of the model's constructor (timm: ``img_size=224``; transformers and
  open_clip random models: a config field, e.g. ``num_hidden_layers=2``); values are Python literals.

No torch here: specs are parsed and checked before any model is loaded.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAMILIES = ("open_clip", "timm", "hf", "finetuned")
IMAGE_FAMILIES = ("open_clip", "timm", "hf", "finetuned")
AUDIO_FAMILIES = ("hf",)
POOLS = ("pooled", "cls", "mean")
RANDOM = "random"
IMAGE_KEYS = ("pool", "flip", "scales")
AUDIO_KEYS = ("layer",)


class SpecError(ValueError):
    """An encoder spec that cannot name an encoder; the message names the spec and the fix."""


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder, as ``FAMILY:MODEL[@WEIGHTS][,key=value ...]`` names it."""

    family: str
    model: str
    weights: str | None = None
    options: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def random(self) -> bool:
        return self.weights == RANDOM

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    def model_kwargs(self) -> dict[str, Any]:
        """The options passed to the model's constructor (all but pool / flip / scales / layer)."""
        return {k: v for k, v in self.options if k not in IMAGE_KEYS + AUDIO_KEYS}

    @property
    def pool(self) -> str:
        return str(self.option("pool", "pooled"))

    @property
    def views(self) -> tuple[tuple[bool, float], ...]:
        """(mirrored, scale) of every view averaged per frame; one plain view by default."""
        scales = self.option("scales", (1.0,))
        flips = (False, True) if self.option("flip", False) else (False,)
        return tuple((f, float(s)) for s in scales for f in flips)

    @property
    def layer(self) -> tuple[int, int] | None:
        """(first, last) hidden state averaged, or None for the last hidden state."""
        layer = self.option("layer", "last")
        if layer == "last":
            return None
        if isinstance(layer, int):
            return layer, layer
        first, last = (int(x) for x in str(layer).split("-"))
        return first, last

    def __str__(self) -> str:
        text = f"{self.family}:{self.model}" + (f"@{self.weights}" if self.weights else "")
        for key, value in self.options:
            if key == "scales":
                value = "+".join(str(s) for s in value)
            elif isinstance(value, bool):
                value = int(value)
            text += f",{key}={value}"
        return text

    def identity(self) -> dict[str, Any]:
        """What the store records of the encoder (its provenance)."""
        out = {
            "spec": str(self),
            "family": self.family,
            "model": self.model,
            "weights": self.weights,
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in self.options},
            "random_weights": self.random,
        }
        if self.family == "finetuned":  # the videos stage I tuned it on: no split may validate on them
            out["trained_on"] = tuned_training(self.model)
        return out


def tuned_training(run: str) -> dict[str, Any] | None:
    """What an ``expr finetune`` run (or its export) records of its training data in ``tuning.json``: ``videos``,
    ``folds``, ``fold``; None where it does not say (an older run)."""
    for folder in (Path(run) / "best", Path(run)):
        if (folder / "tuning.json").is_file():
            return json.loads((folder / "tuning.json").read_text()).get("trained_on")
    return None


def _value(key: str, text: str, spec: str) -> Any:
    if key == "pool":
        if text not in POOLS:
            raise SpecError(f"encoder spec '{spec}': pool={text} is not one of {', '.join(POOLS)}")
        return text
    if key == "flip":
        if text not in ("0", "1", "true", "false"):
            raise SpecError(f"encoder spec '{spec}': flip takes 1 or 0, not '{text}'")
        return text in ("1", "true")
    if key == "scales":
        try:
            scales = tuple(float(s) for s in text.split("+"))
        except ValueError:
            raise SpecError(f"encoder spec '{spec}': scales are numbers joined by '+', e.g. scales=1.0+0.85") from None
        if not scales or any(not 0.2 <= s <= 3.0 for s in scales):
            raise SpecError(f"encoder spec '{spec}': every scale must lie in [0.2, 3]")
        return scales
    if key == "layer":
        if text == "last":
            return text
        parts = text.split("-")
        if not all(p.isdigit() for p in parts) or len(parts) > 2 or (len(parts) == 2 and int(parts[0]) > int(parts[1])):
            raise SpecError(f"encoder spec '{spec}': layer is 'last', N or A-B (A <= B), not '{text}'")
        return int(text) if len(parts) == 1 else text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _split(text: str) -> list[str]:
    """``text`` cut at the commas outside brackets (``conv_dim=[16, 16]`` is one option)."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += c in "[(" and 1 or c in "])" and -1 or 0
        if c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def parse_spec(text: str, modality: str | None = None) -> EncoderSpec:
    """Parse ``FAMILY:MODEL[@WEIGHTS][,key=value ...]``; ``modality`` (``visual`` / ``audio``) checks the family
    and the options. Raises :class:`SpecError` naming the spec and what to write instead."""
    head, *rest = _split(text.strip())
    family, colon, model = head.partition(":")
    if not colon or family not in FAMILIES or not model:
        raise SpecError(
            f"encoder spec '{text}': expected FAMILY:MODEL[@WEIGHTS] with FAMILY one of {', '.join(FAMILIES)} "
            f"(e.g. open_clip:ViT-B-32@openai, timm:efficientnet_b0, hf:facebook/wav2vec2-base@random)"
        )
    model, at, weights = model.partition("@")
    if at and not weights:
        raise SpecError(f"encoder spec '{text}': nothing after '@' (a tag, a local file or folder, or 'random')")
    options: list[tuple[str, Any]] = []
    for item in rest:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key or not value:
            raise SpecError(f"encoder spec '{text}': option '{item}' is not key=value")
        if key in (k for k, _ in options):
            raise SpecError(f"encoder spec '{text}': option '{key}' given twice")
        options.append((key, _value(key, value.strip(), text)))
    if family == "finetuned":  # recorded as an absolute path: commands run from elsewhere find the run too
        import os

        model = os.path.abspath(os.path.expanduser(model))
    spec = EncoderSpec(family, model, weights or None, tuple(options))
    if family == "finetuned":
        if weights or any(k not in ("flip", "scales") for k, _ in options):
            raise SpecError(
                f"encoder spec '{text}': finetuned:RUN_DIR takes its base model, weights and pooling from the run; "
                f"only flip and scales may be added"
            )
    if modality == "audio":
        if family not in AUDIO_FAMILIES:
            raise SpecError(
                f"encoder spec '{text}': audio encoders come from Hugging Face transformers (hf:NAME, e.g. "
                f"hf:facebook/wav2vec2-base, hf:microsoft/wavlm-base-plus, hf:openai/whisper-base)"
            )
        wrong = [k for k, _ in options if k in IMAGE_KEYS]
    elif modality == "visual":
        wrong = [k for k, _ in options if k in AUDIO_KEYS]
    else:
        wrong = []
    if wrong:
        raise SpecError(f"encoder spec '{text}': option '{wrong[0]}' is not for {modality} encoders")
    return spec


def parse_named(text: str, modality: str) -> tuple[str, EncoderSpec]:
    """``NAME=SPEC`` (``--visual dinov2=hf:facebook/dinov2-base``) -> (name, spec)."""
    name, eq, spec = text.partition("=")
    name = name.strip()
    if not eq or not name:
        raise SpecError(f"--{modality} '{text}': expected NAME=SPEC, e.g. dinov2=timm:vit_base_patch14_dinov2.lvd142m")
    if not (name[0].isalnum() and all(c.isalnum() or c in "-_." for c in name)):
        raise SpecError(
            f"--{modality} '{text}': a feature set name starts with a letter or digit and uses letters, digits, '-', "
            f"'_' and '.' only"
        )
    return name, parse_spec(spec, modality)
