"""What every encoder family shares (:mod:`expr.features.encoders` loads them by spec): the frozen
:class:`ImageEncoder` (views averaged per frame) and :class:`AudioEncoder` (a whole track in overlapping chunks),
the errors a user sees, seeded random weights, and the small helpers of the family loaders.

``random`` weights are drawn from a fixed seed: identical in every process and every later command.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from expr.features.spec import RANDOM, EncoderSpec, SpecError

RANDOM_SEED = 20240601


class EncoderError(RuntimeError):
    """An encoder that cannot be loaded or used; the message says how to provide it."""


class WeightsUnavailable(EncoderError):
    """Weights that are not on this machine; ``error`` is the library's own exception (for a caller's own message)."""

    error: Exception | None = None


@contextlib.contextmanager
def seeded(enabled: bool = True):
    """Random initialisation from :data:`RANDOM_SEED`, without touching the caller's random state."""
    if not enabled:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        yield


@contextlib.contextmanager
def _quiet():
    """Libraries log their own download failures through the root logger: our error says it once, with the fix."""
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _local(weights: str | None) -> Path | None:
    """A local file or folder that ``weights`` names, or None for a tag / hub name; a path that does not exist is an
    error."""
    if weights is None or weights == RANDOM:
        return None
    path = Path(weights).expanduser()
    if path.exists():
        return path
    if weights.startswith(("/", ".", "~")) or os.sep in weights and weights.count("/") > 1:
        raise EncoderError(f"encoder weights not found: {weights}")
    return None


def unavailable(spec: EncoderSpec, error: Exception, download: str) -> EncoderError:
    """The one-line message for weights that are not on this machine."""
    out = WeightsUnavailable(
        f"encoder '{spec}': weights are not available here ({type(error).__name__}). Download them once on a machine "
        f"with internet ({download}; cached under ~/.cache/huggingface), or give a local file or folder as "
        f"{spec.family}:{spec.model}@PATH, or use @random for a smoke run."
    )
    out.error = error
    return out


# ------------------------------------------------------------------------------------------------------ images
def view(image, mirrored: bool, scale: float):
    """A face crop as one test-time view: mirrored, and re-cropped around its centre (``scale`` < 1) or padded with
    its edge pixels (``scale`` > 1), back to its own size."""
    from PIL import Image, ImageOps

    if mirrored:
        image = ImageOps.mirror(image)
    if scale == 1.0:
        return image
    w, h = image.size
    if scale < 1.0:
        cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
        left, top = (w - cw) // 2, (h - ch) // 2
        return image.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC)
    pw, ph = round(w * (scale - 1) / 2), round(h * (scale - 1) / 2)
    padded = np.pad(np.asarray(image), ((ph, ph), (pw, pw), (0, 0)), mode="edge")
    return Image.fromarray(padded).resize((w, h), Image.BICUBIC)


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX on x86, read from /proc/cpuinfo): there
    the encoders run about twice as fast in bf16 (BENCHMARKS.md section 6); elsewhere oneDNN emulates it, slower than
    fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell here
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def to_dtype(encoder, dtype: torch.dtype) -> None:
    """Run ``encoder`` (an :class:`ImageEncoder` or :class:`AudioEncoder` on torch) in ``dtype``: its weights and the
    inputs it casts; its outputs stay fp32 (then fp16 in a store)."""
    encoder.model.to(dtype)
    encoder.dtype = dtype


class ImageEncoder:
    """A frozen image encoder: ``encode(images)`` -> [N, dim] fp16, the mean over the spec's views; batched, fp16
    weights on a GPU.

    ``to_batch`` turns PIL images into the model's input batch (the family's own preprocessing); ``forward`` turns
    a batch into [B, dim] features."""

    def __init__(self, spec: EncoderSpec, model, to_batch: Callable, forward: Callable, batch_size: int = 64):
        self.spec, self.model, self.to_batch, self.forward = spec, model, to_batch, forward
        self.batch_size = batch_size
        self.transform = None  # the per-image transform (a torchvision Compose) where the family has one
        self.device = next(model.parameters()).device
        if self.device.type == "cuda":
            self.model.half()
        self.dtype = next(model.parameters()).dtype
        from PIL import Image

        self.dim = int(self._run([Image.new("RGB", (32, 32))]).shape[1])

    @torch.no_grad()
    def _run(self, images) -> torch.Tensor:
        return self.forward(self.to_batch(images).to(self.device, self.dtype, non_blocking=True)).float()

    @torch.no_grad()
    def encode(self, images) -> np.ndarray:
        out = np.zeros((len(images), self.dim), np.float32)
        views = self.spec.views
        for i in range(0, len(images), self.batch_size):
            chunk = images[i : i + self.batch_size]
            for mirrored, scale in views:
                out[i : i + len(chunk)] += self._run([view(im, mirrored, scale) for im in chunk]).cpu().numpy()
        return (out / len(views)).astype(np.float16)


def _tokens(tokens: torch.Tensor, pool: str, prefix: int) -> torch.Tensor:
    """[B, D] from [B, N, D] tokens (``prefix`` leading class/register tokens) or a [B, C, H, W] feature map."""
    if tokens.ndim == 4:
        if pool == "cls":
            raise SpecError("pool=cls needs a transformer (this model gives a feature map); use pooled or mean")
        return tokens.mean((2, 3))
    if pool == "cls":
        return tokens[:, 0]
    return tokens[:, prefix:].mean(1)


@contextlib.contextmanager
def _named_errors(spec: EncoderSpec):
    """Any other failure while building an encoder (a wrong constructor option, a model that is no image or speech
    encoder) as one line naming the spec."""
    try:
        yield
    except (EncoderError, SpecError):
        raise
    except Exception as e:  # noqa: BLE001 - library errors come in every type
        raise EncoderError(
            f"encoder '{spec}': {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None


# ------------------------------------------------------------------------------------------------------- audio
def conv_geometry(config) -> tuple[int, int]:
    """(samples between output frames, samples one output frame sees) of a wav2vec2-style conv stack: (320, 400)
    for Wav2Vec2-Base, HuBERT and WavLM."""
    stride, receptive = 1, 1
    for kernel, step in zip(config.conv_kernel, config.conv_stride, strict=True):
        receptive += (int(kernel) - 1) * stride
        stride *= int(step)
    return stride, receptive


class AudioEncoder:
    """A frozen speech encoder over a whole audio track, in overlapping chunks so a long video never runs out of
    memory.

    The track (16 kHz mono) is cut into chunks of ``chunk_seconds``; each chunk is encoded with ``context_seconds``
    of extra audio on both sides and keeps only the output frames of its own span, so every output frame sees at
    least ``context_seconds`` of context on each side (or the track's edge). Output frame j covers samples
    [stride j, stride j + receptive) (320 and 400 for the wav2vec2 family: 50 frames per second), the same count as
    encoding the whole track at once. Whisper's encoder reads 30 s windows of log-mel frames: a chunk and its
    context are kept within 30 s and padded to it, and the frames of the real audio are kept."""

    def __init__(self, model, normalize: bool = True, chunk_seconds: float = 30.0, context_seconds: float = 2.0,
                 spec: EncoderSpec | None = None, mel=None):  # fmt: skip
        self.model, self.spec, self.normalize, self.mel = model, spec, normalize, mel
        self.device = next(model.parameters()).device
        if self.device.type == "cuda":
            self.model.half()
        self.dtype = next(model.parameters()).dtype
        config = model.config
        self.dim = int(getattr(config, "hidden_size", None) or config.d_model)
        if mel is not None:  # Whisper: 100 mel frames per second, halved by the encoder's second convolution
            self.stride, self.receptive = 320, 400
            window = 30.0
            context_seconds = min(context_seconds, 5.0)
            chunk_seconds = min(chunk_seconds, window - 2 * context_seconds)
        else:
            self.stride, self.receptive = conv_geometry(config)
        self._chunking(chunk_seconds, context_seconds)
        self.layers = spec.layer if spec is not None else None

    def _chunking(self, chunk_seconds: float, context_seconds: float) -> None:
        """Chunk and context lengths in output frames, and output frames per second, from ``self.stride``."""
        self.chunk = max(1, round(chunk_seconds * 16_000 / self.stride))  # output frames per chunk
        self.context = max(0, round(context_seconds * 16_000 / self.stride))
        self.rate = 16_000 / self.stride  # output frames per second

    def num_frames(self, num_samples: int) -> int:
        if not num_samples:
            return 0
        if self.mel is not None:
            return num_samples // self.stride
        return int(self.model._get_feat_extract_output_lengths(torch.tensor(num_samples)).item())

    def _hidden(self, wave: np.ndarray) -> torch.Tensor:
        """[frames, dim] of one piece of audio."""
        hidden_states = self.layers is not None
        if self.mel is not None:
            features = self.mel(wave, sampling_rate=16_000, return_tensors="pt").input_features
            out = self.model(features.to(self.device, self.dtype), output_hidden_states=hidden_states)
        else:
            x = torch.from_numpy(wave)[None].to(self.device, self.dtype)
            out = self.model(x, output_hidden_states=hidden_states)
        if self.layers is None:
            return out.last_hidden_state[0]
        first, last = self.layers
        states = out.hidden_states
        if last >= len(states):
            raise SpecError(f"encoder '{self.spec}': layer {last} does not exist (the model has {len(states) - 1})")
        return torch.stack([states[i][0] for i in range(first, last + 1)]).mean(0)

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
            hidden = self._hidden(wave[s0:s1]).float().cpu().numpy()
            out[c0:c1] = hidden[c0 - f0 : c1 - f0]
        return out
