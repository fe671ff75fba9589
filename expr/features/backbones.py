"""Frozen backbones: load CLIP (open_clip) and encode; nothing is trained here.

``pretrained`` is an open_clip tag (``openai``), a local checkpoint file, or ``random``: weights drawn from a
fixed seed, identical in every process and every later command, for smoke runs and tests offline.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import torch

from expr.atomic import atomic_path
from expr.config import BackboneConfig, ConfigError, resolve_device
from expr.config.sections import Precision
from expr.data.store import DEFAULT_AUDIO, DEFAULT_VISUAL
from expr.features.encoders import load_audio_encoder, load_image_encoder
from expr.features.encoding import WeightsUnavailable, native_bf16, to_dtype
from expr.features.hf_audio import speech_model
from expr.features.hf_models import hf_config
from expr.features.open_clip_family import create_open_clip
from expr.features.spec import EncoderSpec

RANDOM = "random"
DEFAULT_CLIP = "ViT-B-32/openai"
PRECISIONS = get_args(Precision)
DEFAULT_WAV2VEC2 = "facebook/wav2vec2-base"


class BackboneError(RuntimeError):
    """Backbone weights that cannot be loaded; the message says how to provide them."""


def cache_root() -> Path:
    return Path(os.environ.get("EXPR_CACHE_DIR", Path.home() / ".cache" / "expr"))


def load_clip(name: str = "ViT-B-32", pretrained: str = "openai", device: str | torch.device = "cpu"):
    """Return (model, preprocess, tokenizer) of a frozen open_clip model in eval mode: the zoo's spec
    ``open_clip:NAME@PRETRAINED`` (:func:`~expr.features.open_clip_family.create_open_clip`), with the messages of
    ``--clip``."""
    import open_clip

    if name.startswith("local-dir:"):  # a folder with open_clip_config.json and the weights; no tag
        folder = Path(name[len("local-dir:") :]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise BackboneError(f"CLIP folder {folder} has no open_clip_config.json (expected by --clip local-dir:DIR)")
    elif pretrained != RANDOM:
        if os.sep in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors")):
            if not Path(pretrained).is_file():
                raise BackboneError(f"CLIP checkpoint not found: {pretrained}")
    spec = EncoderSpec("open_clip", name, None if name.startswith("local-dir:") else pretrained)
    try:
        model, preprocess = create_open_clip(spec, device)
    except WeightsUnavailable as unavailable:
        e = unavailable.error
        raise BackboneError(
            f"CLIP weights {name}/{pretrained} are not available ({type(e).__name__}). Download them once on a "
            f"machine with internet (`python -c \"import open_clip; open_clip.create_model('{name}', "
            f"pretrained='{pretrained}')\"`, cached under ~/.cache/huggingface), or pass a local checkpoint file "
            f"(expr prepare --clip PATH; in training --backbones.clip_pretrained PATH), or use 'random' for a "
            f"smoke run."
        ) from None
    return model, preprocess, open_clip.get_tokenizer(name)


def split_preprocess(preprocess):
    """open_clip's image preprocessing cut in two: the PIL part (resize, crop, RGB) that data-loading workers run,
    and the (mean, std) of the normalisation that runs on the device after ``uint8 / 255``. Applying both gives
    exactly ``preprocess(image)``, so online features equal the cached ones."""
    import torchvision.transforms as T

    steps = list(getattr(preprocess, "transforms", []))
    names = [type(t).__name__ for t in steps]
    cut = next((i for i, n in enumerate(names) if n in ("ToTensor", "MaybeToTensor", "PILToTensor")), None)
    norm = next((t for t in steps if isinstance(t, T.Normalize)), None)
    if cut is None or norm is None:
        raise BackboneError(f"unexpected CLIP preprocessing (no ToTensor/Normalize step): {names}")
    return T.Compose(steps[:cut]), tuple(float(m) for m in norm.mean), tuple(float(s) for s in norm.std)


def prompts(classes: list[str] | tuple[str, ...], template: str) -> list[str]:
    """``template`` with ``{emotion}`` replaced by each lower-cased class name."""
    return [template.format(emotion=c.lower()) for c in classes]


@torch.no_grad()
def encode_text(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """[len(texts), D] L2-normalised CLIP text embeddings (fp32, CPU)."""
    device = next(model.parameters()).device
    emb = model.encode_text(tokenizer(texts).to(device)).float()
    return torch.nn.functional.normalize(emb, dim=-1).cpu()


def text_embeddings(classes, template: str, clip: str, pretrained: str) -> torch.Tensor:
    """The prompts' CLIP text embeddings, computed once and cached under ``$EXPR_CACHE_DIR/text``."""
    from safetensors.torch import load_file, save_file

    identity = {"classes": list(classes), "template": template, "clip": clip, "pretrained": pretrained}
    if Path(pretrained).is_file():
        stat = Path(pretrained).stat()
        identity["checkpoint"] = [str(Path(pretrained).resolve()), stat.st_size, int(stat.st_mtime)]
    key = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root() / "text" / f"{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["text"]
    model, _, tokenizer = load_clip(clip, pretrained)
    emb = encode_text(model, tokenizer, prompts(classes, template))
    with atomic_path(path) as tmp:
        save_file({"text": emb.contiguous()}, str(tmp), metadata={k: json.dumps(v) for k, v in identity.items()})
    return emb


def load_wav2vec2(name: str = "facebook/wav2vec2-base", device: str | torch.device = "cpu", config=None):
    """Return (model, normalize) of a frozen ``transformers`` Wav2Vec2Model in eval mode. ``name`` is a hub name,
    a local directory, or ``random`` (a seeded random model of ``config``, default Wav2Vec2-Base's architecture).
    ``normalize`` says whether inputs are standardised (zero mean, unit variance), as the checkpoint's feature
    extractor does. The zoo's spec :func:`wav2vec2_encoder_spec` (:func:`~expr.features.hf_audio.speech_model`),
    with the messages of ``--wav2vec2``."""
    from transformers import Wav2Vec2Config

    spec = wav2vec2_encoder_spec(name)
    if not spec.random and not Path(name).expanduser().is_dir():
        if name.startswith(("/", ".", "~")) or name.count("/") > 1:
            raise BackboneError(f"Wav2Vec2 directory not found: {name}")
    try:
        model, normalize, _ = speech_model(spec, (config or Wav2Vec2Config()) if spec.random else hf_config(spec))
    except WeightsUnavailable as unavailable:
        e = unavailable.error
        raise BackboneError(
            f"Wav2Vec2 weights '{name}' are not available ({type(e).__name__}). Download them once on a machine "
            f"with internet (`huggingface-cli download {name}`, cached under ~/.cache/huggingface), or pass a "
            f"local directory with --wav2vec2 DIR, or use 'random' for a smoke run."
        ) from None
    return model.to(device).eval().requires_grad_(False), normalize


def clip_option(clip: str, clip_pretrained: str) -> str:
    """The ``--clip`` value (``expr prepare``'s MODEL/TAG form) of a config's or a store record's ``clip`` and
    ``clip_pretrained``: the inverse of :meth:`Backbones.clip_spec`, the one place the two spellings meet."""
    if clip.startswith("local-dir:"):
        return clip
    if (
        clip_pretrained == RANDOM
        or clip_pretrained.startswith("hf-hub:")
        or Path(clip_pretrained).expanduser().is_file()
    ):
        return clip_pretrained
    return f"{clip}/{clip_pretrained}"


# The config keys that name backbones, as `expr prepare` and `expr predict` take them beside --clip / --wav2vec2.
BACKBONE_KEYS = ("backbones.clip", "backbones.clip_pretrained", "backbones.wav2vec2")


def backbone_options(overrides: dict[str, Any], clip: str | None, wav2vec2: str | None, command: str):
    """(--clip, --wav2vec2) of a command line that may give ``backbones.*`` dotted keys (``overrides``, already
    checked against the config) instead of the short options; giving both spellings of one backbone is an error."""
    if not overrides:
        return clip, wav2vec2
    default = BackboneConfig()
    get = {k.split(".")[1]: v for k, v in overrides.items()}
    if {"clip", "clip_pretrained"} & set(get):
        if clip is not None:
            raise ConfigError(f"{command}: give the CLIP backbone once, as --clip or as --backbones.clip*")
        clip = clip_option(str(get.get("clip", default.clip)), str(get.get("clip_pretrained", default.clip_pretrained)))
    if "wav2vec2" in get:
        if wav2vec2 is not None:
            raise ConfigError(f"{command}: give the Wav2Vec2 backbone once, as --wav2vec2 or as --backbones.wav2vec2")
        wav2vec2 = str(get["wav2vec2"])
    return clip, wav2vec2


def clip_encoder_spec(clip: str) -> EncoderSpec:
    """The encoder spec of a ``--clip`` value (``MODEL/TAG``, a checkpoint file, ``local-dir:DIR``, ``random``)."""
    model, tag = clip_model_tag(clip)
    return EncoderSpec("open_clip", model, None if tag == "local" else tag)


def wav2vec2_encoder_spec(wav2vec2: str) -> EncoderSpec:
    """The encoder spec of a ``--wav2vec2`` value (a hub name, a local folder, ``random``)."""
    if wav2vec2 == RANDOM:
        return EncoderSpec("hf", "facebook/wav2vec2-base", RANDOM)
    return EncoderSpec("hf", wav2vec2)


def clip_tag(spec: EncoderSpec) -> str:
    """The open_clip pretrained tag of an open_clip spec: its weights, ``local`` for a local-dir model, else
    ``openai``."""
    return spec.weights or ("local" if spec.model.startswith("local-dir:") else "openai")


def clip_model_tag(clip: str) -> tuple[str, str]:
    """(open_clip model name, pretrained tag / checkpoint path / ``random``) of a ``--clip`` value."""
    if clip.startswith("local-dir:"):  # a folder with open_clip_config.json and weights
        return clip, "local"
    if clip == RANDOM or Path(clip).expanduser().is_file() or clip.startswith("hf-hub:"):
        return "ViT-B-32", clip
    if "/" in clip:
        model, tag = clip.split("/", 1)
        return model, tag
    return "ViT-B-32", clip


@dataclass
class Backbones:
    """The frozen encoders of one preparation (``expr prepare``, ``expr predict``) by feature set name, loaded on
    first use. ``clip`` and ``wav2vec2`` (the ``--clip`` / ``--wav2vec2`` values) give the paper's sets ``clip`` and
    ``wav2vec2``; ``visual_sets`` / ``audio_sets`` (``--visual NAME=SPEC``, ``--audio NAME=SPEC``) replace them."""

    clip: str = DEFAULT_CLIP
    wav2vec2: str = DEFAULT_WAV2VEC2
    device: str = "auto"
    batch_size: int = 64
    chunk_seconds: float = 30.0
    context_seconds: float = 2.0
    visual_sets: dict[str, EncoderSpec] | None = None
    audio_sets: dict[str, EncoderSpec] | None = None
    precision: str = "fp32"
    """The encoders' weights on a CPU (``predict.precision``): fp32, bf16, or auto (bf16 where the CPU multiplies bf16
    natively, :func:`~expr.features.encoding.native_bf16`; else fp32). A GPU runs them in fp16 whatever this says."""
    implicit: tuple[str, ...] = ()
    """Sets that are only defaults (nobody named them): an existing store with sets of their modality keeps its
    own instead."""
    _encoders: dict[str, Any] = field(default_factory=dict)
    _clip: Any = None  # (model, preprocess, tokenizer) of the CLIP that encodes the class prompts

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"predict.precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.visual_sets is None:
            self.visual_sets = {DEFAULT_VISUAL: clip_encoder_spec(self.clip)}
            self.implicit = (*self.implicit, DEFAULT_VISUAL)
        if self.audio_sets is None:
            self.audio_sets = {DEFAULT_AUDIO: wav2vec2_encoder_spec(self.wav2vec2)}
            self.implicit = (*self.implicit, DEFAULT_AUDIO)

    def clip_spec(self) -> tuple[str, str]:
        """(open_clip model name, pretrained tag / checkpoint path / ``random``) of ``clip``."""
        return clip_model_tag(self.clip)

    def specs(self) -> dict[str, tuple[str, EncoderSpec]]:
        """Every set: name -> (modality, spec)."""
        return {
            **{n: ("visual", s) for n, s in self.visual_sets.items()},
            **{n: ("audio", s) for n, s in self.audio_sets.items()},
        }

    def set_identity(self, name: str) -> dict[str, Any]:
        modality, spec = self.specs()[name]
        return {"modality": modality, **spec.identity()}

    def identity(self) -> dict[str, Any]:
        """What the store records: every set's provenance, and (for the paper's two sets) the ``backbones`` keys of
        training's config that name them."""
        out: dict[str, Any] = {"sets": {n: self.set_identity(n) for n in self.specs()}}
        out["random_weights"] = any(s.random for _, s in self.specs().values())
        clip, w2v = self.visual_sets.get(DEFAULT_VISUAL), self.audio_sets.get(DEFAULT_AUDIO)
        if clip is not None and clip.family == "open_clip":
            out["clip"], out["clip_pretrained"] = clip.model, clip_tag(clip)
        if w2v is not None and w2v.family == "hf":
            out["wav2vec2"] = RANDOM if w2v.random else w2v.model
        return out

    def _device(self):
        return torch.device(resolve_device(self.device))

    def text_set(self) -> str | None:
        """The first open_clip visual set: its text tower encodes the class prompts."""
        return next((n for n, s in self.visual_sets.items() if s.family == "open_clip"), None)

    def load_clip(self):
        """(model, preprocess, tokenizer) of the text set's CLIP."""
        if self._clip is None:
            name = self.text_set()
            if name is None:
                raise BackboneError("no open_clip set among the visual sets: nothing encodes the class prompts")
            spec = self.visual_sets[name]
            self._clip = load_clip(spec.model, clip_tag(spec), self._device())
        return self._clip

    def visual(self, name: str | None = None):
        """The image encoder of set ``name`` (default: the first visual set)."""
        name = name or next(iter(self.visual_sets))
        if name not in self._encoders:
            self._encoders[name] = self._cast(
                load_image_encoder(self.visual_sets[name], self._device(), self.batch_size)
            )
        return self._encoders[name]

    def audio(self, name: str | None = None):
        """The audio encoder of set ``name`` (default: the first audio set)."""
        name = name or next(iter(self.audio_sets))
        if name not in self._encoders:
            spec = self.audio_sets[name]
            encoder = load_audio_encoder(spec, self._device(), self.chunk_seconds, self.context_seconds)
            self._encoders[name] = self._cast(encoder)
        return self._encoders[name]

    def run_precision(self) -> str:
        """What the encoders run in: fp16 on a GPU; on a CPU ``precision`` with auto resolved."""
        if self._device().type != "cpu":
            return "fp16"
        if self.precision == "auto":
            return "bf16" if native_bf16() else "fp32"
        return self.precision

    def _cast(self, encoder):
        if self.run_precision() == "bf16":
            to_dtype(encoder, torch.bfloat16)
        return encoder

    def load_all(self, names=None) -> None:
        """Load the encoders of ``names`` (default: every set) now: a missing checkpoint fails before any work."""
        for name in names if names is not None else self.specs():
            (self.visual if name in self.visual_sets else self.audio)(name)

    def text(self, classes: Sequence[str], template: str):
        model, _, tokenizer = self.load_clip()
        return encode_text(model, tokenizer, prompts(list(classes), template))
