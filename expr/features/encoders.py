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

Each family has its loader module (:mod:`~expr.features.open_clip_family`, :mod:`~expr.features.timm_family`,
:mod:`~expr.features.hf_image`, :mod:`~expr.features.hf_audio`, :mod:`~expr.features.finetuned`); the classes and
helpers they share are in :mod:`expr.features.encoding`. This module picks a spec's loader (``IMAGE_LOADERS``,
``AUDIO_LOADERS``), and other packages import encoders from here.

``random`` weights are drawn from a fixed seed: identical in every process and every later command.
"""

from __future__ import annotations

import torch

from expr.features.encoding import (
    RANDOM_SEED,
    AudioEncoder,
    EncoderError,
    ImageEncoder,
    WeightsUnavailable,
    _named_errors,
    conv_geometry,
    seeded,
    unavailable,
    view,
)
from expr.features.finetuned import BASE_LOADERS, TUNED_INFO, load_finetuned, load_tuned, tuned_folder
from expr.features.hf_audio import load_hf_audio, speech_model
from expr.features.hf_image import load_hf_image
from expr.features.hf_models import cached_first, hf_config, refuse_remote_code
from expr.features.open_clip_family import create_open_clip, load_open_clip, open_clip_encoder
from expr.features.spec import EncoderSpec
from expr.features.timm_family import load_timm

IMAGE_LOADERS = {**BASE_LOADERS, "finetuned": load_finetuned}
"""A spec's family -> the loader of its image encoder: ``loader(spec, device) -> ImageEncoder``."""
AUDIO_LOADERS = {"hf": load_hf_audio}
"""A spec's family -> the loader of its audio encoder: ``loader(spec, device, chunk_seconds, context_seconds)``."""


def load_image_encoder(spec: EncoderSpec, device: str | torch.device = "cpu", batch_size: int = 64) -> ImageEncoder:
    with _named_errors(spec):
        encoder = IMAGE_LOADERS[spec.family](spec, torch.device(device))
    encoder.batch_size = batch_size
    return encoder


def load_audio_encoder(spec: EncoderSpec, device: str | torch.device = "cpu", chunk_seconds: float = 30.0,
                       context_seconds: float = 2.0) -> AudioEncoder:  # fmt: skip
    with _named_errors(spec):
        return AUDIO_LOADERS[spec.family](spec, device, chunk_seconds, context_seconds)


__all__ = [
    "AUDIO_LOADERS",
    "IMAGE_LOADERS",
    "RANDOM_SEED",
    "TUNED_INFO",
    "AudioEncoder",
    "EncoderError",
    "ImageEncoder",
    "WeightsUnavailable",
    "cached_first",
    "conv_geometry",
    "create_open_clip",
    "hf_config",
    "load_audio_encoder",
    "load_finetuned",
    "load_hf_audio",
    "load_hf_image",
    "load_image_encoder",
    "load_open_clip",
    "load_timm",
    "load_tuned",
    "open_clip_encoder",
    "refuse_remote_code",
    "seeded",
    "speech_model",
    "tuned_folder",
    "unavailable",
    "view",
]
