"""Frozen image and audio encoders of any family, by spec (:mod:`expr.features.spec`): load, preprocess as the
family does, encode. Nothing is trained here.

Image (face crops -> one vector per frame):

- ``open_clip``: the model's ``encode_image`` (its projected embedding: 512-d for ViT-B/32) after open_clip's own
  transform; ``pool=cls`` / ``mean`` take the vision tower's tokens instead (ViT towers).
- ``timm``: ``create_model(..., num_classes=0)`` with timm's own eval transform (``resolve_model_data_config``):
  ``pooled`` is the model's head pooling (the class token for DINOv2 ViTs, global average for CNNs); ``cls`` the
  class token; ``mean`` the mean of patch tokens (ViTs) or of the feature map (CNNs).
- ``hf``: ``AutoModel`` with its ``AutoImageProcessor``: ``pooled`` is ``pooler_output`` (DINOv2: the layer-normed
  class token); ``cls`` ``last_hidden_state[:, 0]``; ``mean`` the mean of the patch tokens.

Audio (16 kHz mono -> 50 feature frames per second): Hugging Face speech encoders (wav2vec2, HuBERT, WavLM,
data2vec-audio, the Whisper encoder), over a whole track in overlapping chunks (:class:`AudioEncoder`), the hidden
state or range of hidden states that ``layer`` names.

``random`` weights are drawn from a fixed seed: identical in every process and every later command.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from expr.features.spec import RANDOM, EncoderSpec, SpecError, parse_spec

RANDOM_SEED = 20240601


class EncoderError(RuntimeError):
    """An encoder that cannot be loaded or used; the message says how to provide it."""


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
    return EncoderError(
        f"encoder '{spec}': weights are not available here ({type(error).__name__}). Download them once on a machine "
        f"with internet ({download}; cached under ~/.cache/huggingface), or give a local file or folder as "
        f"{spec.family}:{spec.model}@PATH, or use @random for a smoke run."
    )


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


class ImageEncoder:
    """A frozen image encoder: ``encode(images)`` -> [N, dim] fp16, the mean over the spec's views; batched, fp16
    weights on a GPU.

    ``to_batch`` turns PIL images into the model's input batch (the family's own preprocessing); ``forward`` turns
    a batch into [B, dim] features."""

    def __init__(self, spec: EncoderSpec, model, to_batch: Callable, forward: Callable, batch_size: int = 64):
        self.spec, self.model, self.to_batch, self.forward = spec, model, to_batch, forward
        self.batch_size = batch_size
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


def load_open_clip(spec: EncoderSpec, device) -> ImageEncoder:
    import open_clip

    local = _local(spec.weights)
    kwargs = spec.model_kwargs()
    with _quiet():
        if spec.model.startswith("local-dir:"):  # a folder with open_clip_config.json and the weights
            folder = Path(spec.model[len("local-dir:") :]).expanduser()
            if not (folder / "open_clip_config.json").is_file():
                raise EncoderError(f"CLIP folder {folder} has no open_clip_config.json (open_clip:local-dir:DIR)")
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        elif spec.random:
            with seeded():
                model, _, preprocess = open_clip.create_model_and_transforms(spec.model, pretrained=None, **kwargs)
        else:
            if spec.model not in open_clip.list_models() and not spec.model.startswith("hf-hub:"):
                raise EncoderError(f"encoder '{spec}': open_clip has no model '{spec.model}' (open_clip.list_models())")
            tag = str(local) if local else spec.weights or "openai"
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(spec.model, pretrained=tag, **kwargs)
            except Exception as e:  # noqa: BLE001 - hub/network errors come in many types; all mean "not available"
                raise unavailable(spec, e, f"open_clip.create_model('{spec.model}', pretrained='{tag}')") from None
    model = model.to(device).eval().requires_grad_(False)
    if spec.pool == "pooled":
        return open_clip_encoder(model, preprocess, spec)
    if spec.pool == "mean" and hasattr(model.visual, "transformer"):
        model.visual.output_tokens = True

        def forward(x):
            return model.visual(x)[1].mean(1)  # the patch tokens after the class token

    else:
        raise SpecError(f"encoder '{spec}': open_clip towers give pool=pooled, or pool=mean for ViT towers")
    return ImageEncoder(spec, model, lambda images: torch.stack([preprocess(im) for im in images]), forward)


def open_clip_encoder(model, preprocess, spec: EncoderSpec | None = None, batch_size: int = 64) -> ImageEncoder:
    """An open_clip model in memory as an :class:`ImageEncoder`: its projected image embedding (``encode_image``;
    512-d for ViT-B/32, not L2-normalised) after open_clip's own transform."""
    spec = spec or EncoderSpec("open_clip", "in-memory")
    to_batch = lambda images: torch.stack([preprocess(im) for im in images])  # noqa: E731
    return ImageEncoder(spec, model, to_batch, model.encode_image, batch_size)


def load_timm(spec: EncoderSpec, device) -> ImageEncoder:
    import timm

    kwargs = spec.model_kwargs()
    local = _local(spec.weights)
    if not timm.is_model(spec.model.split(".")[0]):
        close = timm.list_models(f"*{spec.model.split('.')[0].split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise EncoderError(f"encoder '{spec}': timm has no model '{spec.model}'{hint}")
    try:
        with seeded(spec.random), _quiet():
            extra = {"checkpoint_path": str(local)} if local is not None else {}
            pretrained = not spec.random and local is None
            name = f"{spec.model}.{spec.weights}" if pretrained and spec.weights else spec.model  # a timm tag
            model = timm.create_model(name, pretrained=pretrained, num_classes=0, **extra, **kwargs)
    except Exception as e:  # noqa: BLE001 - offline hub lookups fail in many ways
        if spec.random or local is not None:
            raise EncoderError(f"encoder '{spec}': {e}") from None
        raise unavailable(spec, e, f"timm.create_model('{spec.model}', pretrained=True)") from None
    model = model.to(device).eval().requires_grad_(False)
    config = timm.data.resolve_model_data_config(model)
    if "img_size" in kwargs:
        size = kwargs["img_size"]
        config["input_size"] = (3, *(size if isinstance(size, (tuple, list)) else (size, size)))
    transform = timm.data.create_transform(**config, is_training=False)
    prefix = int(getattr(model, "num_prefix_tokens", 1))

    def forward(x):
        if spec.pool == "pooled":
            return model(x)
        return _tokens(model.forward_features(x), spec.pool, prefix)

    return ImageEncoder(spec, model, lambda images: torch.stack([transform(im) for im in images]), forward)


def _hf_source(spec: EncoderSpec) -> tuple[str, bool]:
    """(the name or folder ``from_pretrained`` reads, whether it is local)."""
    local = _local(spec.weights)
    if local is not None:
        return str(local), True
    folder = Path(spec.model).expanduser()
    if folder.is_dir():
        return str(folder), True
    if spec.model.startswith(("/", ".", "~")):
        raise EncoderError(f"encoder '{spec}': folder not found: {spec.model}")
    return spec.model, False


def cached_first(load: Callable, source: str, offline: bool):
    """``load(source)`` from the local Hugging Face cache first (no network round trips, which take minutes to time
    out on a machine without internet), then from the hub unless ``offline``. Never with the model's own code:
    ``trust_remote_code=False`` (transformers then refuses a config that names its own modelling code instead of
    asking on the terminal)."""
    with _quiet():
        try:
            return load(source, local_files_only=True, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001 - not cached (the type differs between libraries and versions)
            if offline or "trust_remote_code" in str(e):
                raise
        return load(source, trust_remote_code=False)


def refuse_remote_code(spec: EncoderSpec, source: str, local: bool, error: Exception | None = None) -> None:
    """An ``EncoderError`` when the model's ``config.json`` names its own code (``auto_map``), read before anything
    is loaded, or when transformers refused it (``error``): expr runs no code that comes with a model folder."""
    asks = error is not None and "trust_remote_code" in str(error)
    config = Path(source) / "config.json"
    if not asks and local and config.is_file():
        try:
            asks = "auto_map" in json.loads(config.read_text())
        except (ValueError, OSError):
            asks = False  # a broken config.json: transformers says what is wrong with it
    if asks:
        raise EncoderError(
            f"encoder '{spec}': the model's config.json names its own Python code (auto_map), and expr never runs "
            f"code that comes with a model folder (trust_remote_code=False): use a model whose architecture "
            f"transformers ships, or its weights converted to one"
        )


def hf_config(spec: EncoderSpec):
    """The model's ``transformers`` config (from its folder or the hub cache); for ``@random`` without one, the
    default config of the model type its name says (wav2vec2, hubert, wavlm, whisper, dinov2, vit), as a banner
    states. Constructor options of the spec override config fields."""
    import transformers

    source, local = _hf_source(spec)
    refuse_remote_code(spec, source, local)
    try:
        config = cached_first(transformers.AutoConfig.from_pretrained, source, local or spec.random)
    except Exception as e:  # noqa: BLE001 - offline hub lookups fail in many ways
        refuse_remote_code(spec, source, local, e)
        if not spec.random:
            raise unavailable(spec, e, f"huggingface-cli download {spec.model}") from None
        name = spec.model.lower()
        kinds = [("wav2vec2", "Wav2Vec2Config"), ("hubert", "HubertConfig"), ("wavlm", "WavLMConfig"),
                 ("whisper", "WhisperConfig"), ("dinov2", "Dinov2Config"), ("vit", "ViTConfig")]  # fmt: skip
        kind = next((cls for key, cls in kinds if key in name), None)
        if kind is None:
            raise EncoderError(
                f"encoder '{spec}': random weights need the model's architecture: give a folder with its config.json "
                f"(hf:DIR@random), or a name of a known type (wav2vec2, hubert, wavlm, whisper, dinov2, vit)"
            ) from None
        config = getattr(transformers, kind)()
    for key, value in spec.model_kwargs().items():
        if not hasattr(config, key):
            raise SpecError(f"encoder '{spec}': {type(config).__name__} has no field '{key}'")
        setattr(config, key, value)
    return config


def _hf_model(spec: EncoderSpec, config):
    import transformers

    source, local = _hf_source(spec)
    if spec.random:
        with seeded():
            return transformers.AutoModel.from_config(config)
    try:
        load = transformers.AutoModel.from_pretrained
        revision = {} if local or spec.weights is None else {"revision": spec.weights}  # a hub branch, tag or commit
        return cached_first(lambda name, **kw: load(name, config=config, **revision, **kw), source, local)
    except Exception as e:  # noqa: BLE001
        raise unavailable(spec, e, f"huggingface-cli download {spec.model}") from None


def load_hf_image(spec: EncoderSpec, device) -> ImageEncoder:
    import transformers

    config = hf_config(spec)
    model = _hf_model(spec, config).to(device).eval().requires_grad_(False)
    source, local = _hf_source(spec)
    try:
        processor = cached_first(transformers.AutoImageProcessor.from_pretrained, source, local or spec.random)
    except Exception:  # noqa: BLE001 - a random model or a folder without preprocessor_config.json
        size = int(getattr(config, "image_size", 224))
        processor = transformers.BitImageProcessor(
            size={"height": size, "width": size}, do_center_crop=False, image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        )  # fmt: skip

    def to_batch(images):
        return processor(images=list(images), return_tensors="pt")["pixel_values"]

    def forward(x):
        out = model(pixel_values=x)
        if spec.pool == "pooled":
            if getattr(out, "pooler_output", None) is None:
                raise SpecError(f"encoder '{spec}': the model has no pooled output; use pool=cls or pool=mean")
            return out.pooler_output.flatten(1)
        return _tokens(out.last_hidden_state, spec.pool, 1)

    return ImageEncoder(spec, model, to_batch, forward)


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


TUNED_INFO = "tuning.json"
"""The file beside a tuned encoder's ``model.safetensors`` (an ``expr finetune`` run's ``best/`` folder, or its
``expr export``) that says what was tuned: ``backbone`` (the base encoder's spec), ``tuning`` (the fields of
:class:`expr.features.tuning.Tuning`), ``merged`` (an export whose adapters were merged into full weights), ``dim``,
``classes``."""


def tuned_folder(path: str | Path) -> Path:
    """The folder holding a tuned encoder: ``RUN_DIR/best`` of an ``expr finetune`` run, or an exported folder."""
    path = Path(path).expanduser()
    for folder in (path / "best", path):
        if (folder / TUNED_INFO).is_file() and (folder / "model.safetensors").is_file():
            return folder
    raise EncoderError(
        f"{path} is neither an `expr finetune` run (best/{TUNED_INFO} and best/model.safetensors) nor an exported "
        f"tuned encoder ({TUNED_INFO} and model.safetensors); give the run directory that `expr finetune` wrote"
    )


def load_tuned(path: str | Path, device="cpu", spec: EncoderSpec | None = None):
    """(the tuned encoder as an :class:`ImageEncoder`, frozen, on ``device``; its ``tuning.json``; the weights
    file's tensors). The base encoder is loaded by its spec (its weights must be on this machine), tuned as
    recorded (adapters injected), then given the tuned weights: only those that trained, or all of them (a merged
    export)."""
    import json

    from safetensors.torch import load_file

    from expr.features.tuning import Tuning, apply, tuned_keys

    folder = tuned_folder(path)
    info = json.loads((folder / TUNED_INFO).read_text())
    base = parse_spec(info["backbone"], "visual")
    encoder = load_image_encoder(base, "cpu")
    tuning = Tuning(**{**info["tuning"], "grad_checkpointing": False})
    model = encoder.model if info.get("merged") else apply(encoder.model, base.family, tuning)
    weights = load_file(str(folder / "model.safetensors"))
    state = {k[len("encoder.") :]: v for k, v in weights.items() if k.startswith("encoder.")}
    expected = set(model.state_dict()) if info.get("merged") else tuned_keys(model)
    if set(state) != expected:
        raise EncoderError(f"{folder / 'model.safetensors'} does not fit {base} tuned as {folder / TUNED_INFO} says")
    model.load_state_dict(state, strict=False)
    model = model.to(device).eval().requires_grad_(False)
    spec = spec or EncoderSpec("finetuned", str(path))
    return ImageEncoder(spec, model, encoder.to_batch, encoder.forward), info, weights


def load_finetuned(spec: EncoderSpec, device) -> ImageEncoder:
    """``finetuned:RUN_DIR`` (or an exported tuned encoder's folder): see :func:`load_tuned`."""
    return load_tuned(spec.model, device, spec)[0]


def load_image_encoder(spec: EncoderSpec, device: str | torch.device = "cpu", batch_size: int = 64) -> ImageEncoder:
    loaders = {"open_clip": load_open_clip, "timm": load_timm, "hf": load_hf_image, "finetuned": load_finetuned}
    with _named_errors(spec):
        encoder = loaders[spec.family](spec, torch.device(device))
    encoder.batch_size = batch_size
    return encoder


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
        self.chunk = max(1, round(chunk_seconds * 16_000 / self.stride))  # output frames per chunk
        self.context = max(0, round(context_seconds * 16_000 / self.stride))
        self.rate = 16_000 / self.stride  # output frames per second
        self.layers = spec.layer if spec is not None else None

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


def load_audio_encoder(spec: EncoderSpec, device: str | torch.device = "cpu", chunk_seconds: float = 30.0,
                       context_seconds: float = 2.0) -> AudioEncoder:  # fmt: skip
    with _named_errors(spec):
        return _load_audio_encoder(spec, device, chunk_seconds, context_seconds)


def _load_audio_encoder(spec: EncoderSpec, device, chunk_seconds: float, context_seconds: float) -> AudioEncoder:
    import transformers

    config = hf_config(spec)
    mel = None
    if config.model_type == "whisper":
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if spec.random:  # the encoder alone: no decoder to build
            with seeded():
                model = WhisperEncoder(config)
        else:
            model = _hf_model(spec, config).encoder
        mel = transformers.WhisperFeatureExtractor(feature_size=config.num_mel_bins)
        normalize = False
    elif hasattr(config, "conv_kernel"):
        source, local = _hf_source(spec)
        try:
            extractor = cached_first(transformers.AutoFeatureExtractor.from_pretrained, source, local or spec.random)
            normalize = bool(extractor.do_normalize)
        except Exception:  # noqa: BLE001 - no preprocessor config: the wav2vec2-base convention
            normalize = True
    else:
        raise EncoderError(
            f"encoder '{spec}': a {config.model_type} model is not a speech encoder expr knows (wav2vec2, HuBERT, "
            f"WavLM, data2vec-audio, Whisper)"
        )
    if mel is None:
        model = _hf_model(spec, config)
    model = model.to(device).eval().requires_grad_(False)
    return AudioEncoder(model, normalize, chunk_seconds, context_seconds, spec, mel)
