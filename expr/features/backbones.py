"""Frozen backbones: load CLIP (open_clip) and encode; nothing is trained here.

``pretrained`` is an open_clip tag (``openai``), a local checkpoint file, or ``random``: weights drawn from a
fixed seed, identical in every process and every later command, for smoke runs and tests offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from expr.atomic import atomic_path
from expr.config import BackboneConfig, ConfigError, resolve_device

RANDOM = "random"
DEFAULT_CLIP = "ViT-B-32/openai"
DEFAULT_WAV2VEC2 = "facebook/wav2vec2-base"
RANDOM_SEED = 20240601


class BackboneError(RuntimeError):
    """Backbone weights that cannot be loaded; the message says how to provide them."""


def cache_root() -> Path:
    return Path(os.environ.get("EXPR_CACHE_DIR", Path.home() / ".cache" / "expr"))


@contextlib.contextmanager
def _quiet_root_logger():
    """open_clip logs through the root logger ("No pretrained weights loaded", download failures): our own warning
    or error says it once, with what to do."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def load_clip(name: str = "ViT-B-32", pretrained: str = "openai", device: str | torch.device = "cpu"):
    """Return (model, preprocess, tokenizer) of a frozen open_clip model in eval mode."""
    import open_clip

    if name.startswith("local-dir:"):  # a folder with open_clip_config.json and the weights; no tag
        folder = Path(name[len("local-dir:") :]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise BackboneError(f"CLIP folder {folder} has no open_clip_config.json (expected by --clip local-dir:DIR)")
        with _quiet_root_logger():
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    elif pretrained == RANDOM:
        with torch.random.fork_rng(devices=[]), _quiet_root_logger():
            torch.manual_seed(RANDOM_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    else:
        if os.sep in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors")):
            if not Path(pretrained).is_file():
                raise BackboneError(f"CLIP checkpoint not found: {pretrained}")
        try:
            with _quiet_root_logger():
                model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
        except Exception as e:  # noqa: BLE001 - hub/network errors come in many types; all mean "not available"
            raise BackboneError(
                f"CLIP weights {name}/{pretrained} are not available ({type(e).__name__}). Download them once on a "
                f"machine with internet (`python -c \"import open_clip; open_clip.create_model('{name}', "
                f"pretrained='{pretrained}')\"`, cached under ~/.cache/huggingface), or pass a local checkpoint file "
                f"(expr prepare --clip PATH; in training --backbones.clip_pretrained PATH), or use 'random' for a "
                f"smoke run."
            ) from None
    model = model.to(device).eval().requires_grad_(False)
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
    extractor does."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    if name == RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = Wav2Vec2Model(config or Wav2Vec2Config())
        normalize = True
    else:
        local = Path(name).expanduser()
        if local.is_dir():
            name = str(local)
        elif name.startswith(("/", ".", "~")) or name.count("/") > 1:
            raise BackboneError(f"Wav2Vec2 directory not found: {name}")
        try:
            model = Wav2Vec2Model.from_pretrained(name)
        except Exception as e:  # noqa: BLE001 - OSError, HTTP and hub errors all mean "not available here"
            raise BackboneError(
                f"Wav2Vec2 weights '{name}' are not available ({type(e).__name__}). Download them once on a machine "
                f"with internet (`huggingface-cli download {name}`, cached under ~/.cache/huggingface), or pass a "
                f"local directory with --wav2vec2 DIR, or use 'random' for a smoke run."
            ) from None
        try:
            normalize = bool(Wav2Vec2FeatureExtractor.from_pretrained(name).do_normalize)
        except Exception:  # noqa: BLE001 - a checkpoint without a preprocessor config: Wav2Vec2-Base's default
            normalize = True
    return model.to(device).eval().requires_grad_(False), normalize


class VisualEncoder:
    """Frozen CLIP image encoder over face crops: open_clip's own preprocessing, batched, fp16 on GPU.

    ``encode`` returns the raw ``encode_image`` output ([N, 512] for ViT-B/32, not L2-normalised) as fp16."""

    def __init__(self, model, preprocess, batch_size: int = 64):
        self.model, self.preprocess, self.batch_size = model, preprocess, batch_size
        self.device = next(model.parameters()).device
        if self.device.type == "cuda":
            self.model.half()
        self.dtype = next(model.parameters()).dtype
        self.dim = int(model.visual.output_dim)

    @torch.no_grad()
    def encode(self, images) -> np.ndarray:
        out = np.zeros((len(images), self.dim), np.float16)
        for i in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[i : i + self.batch_size]])
            emb = self.model.encode_image(batch.to(self.device, self.dtype, non_blocking=True))
            out[i : i + len(batch)] = emb.float().cpu().numpy()
        return out


def conv_geometry(config) -> tuple[int, int]:
    """(samples between Wav2Vec2 output frames, samples one output frame sees) of a Wav2Vec2 config's conv stack:
    (320, 400) for Wav2Vec2-Base."""
    stride, receptive = 1, 1
    for kernel, step in zip(config.conv_kernel, config.conv_stride, strict=True):
        receptive += (int(kernel) - 1) * stride
        stride *= int(step)
    return stride, receptive


class AudioEncoder:
    """Frozen Wav2Vec2 over a whole audio track, in overlapping chunks so a long video never runs out of memory.

    The track (16 kHz mono) is cut into chunks of ``chunk_seconds``; each chunk is encoded with ``context_seconds``
    of extra audio on both sides and keeps only the output frames of its own span, so every output frame sees at
    least ``context_seconds`` of context on each side (or the track's edge). Output frame j covers samples
    [320 j, 320 j + 400): 50 frames per second, the same count as encoding the whole track at once."""

    def __init__(self, model, normalize: bool = True, chunk_seconds: float = 30.0, context_seconds: float = 2.0):
        self.model, self.normalize = model, normalize
        self.device = next(model.parameters()).device
        if self.device.type == "cuda":
            self.model.half()
        self.dtype = next(model.parameters()).dtype
        self.dim = int(model.config.hidden_size)
        self.stride, self.receptive = conv_geometry(model.config)
        self.chunk = max(1, round(chunk_seconds * 16_000 / self.stride))  # output frames per chunk
        self.context = max(0, round(context_seconds * 16_000 / self.stride))
        self.rate = 16_000 / self.stride  # output frames per second

    def num_frames(self, num_samples: int) -> int:
        return int(self.model._get_feat_extract_output_lengths(torch.tensor(num_samples)).item()) if num_samples else 0

    @torch.no_grad()
    def encode(self, wave) -> np.ndarray:
        wave = np.asarray(wave, np.float32)
        if self.normalize:
            wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
        total = self.num_frames(len(wave))
        out = np.zeros((max(total, 0), self.dim), np.float16)
        for c0 in range(0, total, self.chunk):
            c1 = min(total, c0 + self.chunk)
            f0, f1 = max(0, c0 - self.context), min(total, c1 + self.context)
            s0, s1 = f0 * self.stride, min(len(wave), (f1 - 1) * self.stride + self.receptive)
            x = torch.from_numpy(wave[s0:s1])[None].to(self.device, self.dtype)
            hidden = self.model(x).last_hidden_state[0].float().cpu().numpy()
            out[c0:c1] = hidden[c0 - f0 : c1 - f0]
        return out


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


@dataclass
class Backbones:
    """The frozen encoders of one preparation (``expr prepare``, ``expr predict``), loaded on first use."""

    clip: str = DEFAULT_CLIP
    wav2vec2: str = DEFAULT_WAV2VEC2
    device: str = "auto"
    batch_size: int = 64
    chunk_seconds: float = 30.0
    context_seconds: float = 2.0
    _clip: Any = None
    _visual: Any = None
    _audio: Any = None

    def clip_spec(self) -> tuple[str, str]:
        """(open_clip model name, pretrained tag / checkpoint path / ``random``)."""
        spec = self.clip
        if spec.startswith("local-dir:"):  # a folder with open_clip_config.json and weights
            return spec, "local"
        if spec == "random" or Path(spec).expanduser().is_file() or spec.startswith("hf-hub:"):
            return "ViT-B-32", spec
        if "/" in spec:
            model, tag = spec.split("/", 1)
            return model, tag
        return "ViT-B-32", spec

    def identity(self) -> dict[str, Any]:
        model, tag = self.clip_spec()
        return {
            "clip": model,
            "clip_pretrained": tag,
            "wav2vec2": self.wav2vec2,
            "random_weights": "random" in (tag, self.wav2vec2),
        }

    def _device(self):
        return torch.device(resolve_device(self.device))

    def load_clip(self):
        if self._clip is None:
            model, tag = self.clip_spec()
            self._clip = load_clip(model, tag, self._device())
        return self._clip

    def visual(self):
        if self._visual is None:
            model, preprocess, _ = self.load_clip()
            self._visual = VisualEncoder(model, preprocess, self.batch_size)
        return self._visual

    def audio(self):
        if self._audio is None:
            model, normalize = load_wav2vec2(self.wav2vec2, self._device())
            self._audio = AudioEncoder(model, normalize, self.chunk_seconds, self.context_seconds)
        return self._audio

    def text(self, classes: Sequence[str], template: str):
        model, _, tokenizer = self.load_clip()
        return encode_text(model, tokenizer, prompts(list(classes), template))
