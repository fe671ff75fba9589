"""The ``open_clip`` family: the model's ``encode_image`` (its projected embedding: 512-d for ViT-B/32) after
open_clip's own transform; ``pool=mean`` takes the mean of the vision tower's patch tokens instead (ViT towers).
The paper's CLIP (``open_clip:ViT-B-32@openai``) loads here too: :func:`create_open_clip` also gives the text
tower that encodes the class prompts (:func:`expr.features.backbones.load_clip`)."""

from __future__ import annotations

from pathlib import Path

import torch

from expr.features.encoding import EncoderError, ImageEncoder, _local, _quiet, seeded, unavailable
from expr.features.spec import EncoderSpec, SpecError


def create_open_clip(spec: EncoderSpec, device) -> tuple:
    """(model, preprocess) of an open_clip spec: the whole CLIP model (both towers) frozen in eval mode on
    ``device``, and open_clip's own image transform. Weights that are not here raise
    :class:`~expr.features.encoding.WeightsUnavailable`."""
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
    return model, preprocess


def load_open_clip(spec: EncoderSpec, device) -> ImageEncoder:
    model, preprocess = create_open_clip(spec, device)
    if spec.pool == "pooled":
        return open_clip_encoder(model, preprocess, spec)
    if spec.pool == "mean" and hasattr(model.visual, "transformer"):
        model.visual.output_tokens = True

        def forward(x):
            return model.visual(x)[1].mean(1)  # the patch tokens after the class token

    else:
        raise SpecError(f"encoder '{spec}': open_clip towers give pool=pooled, or pool=mean for ViT towers")
    encoder = ImageEncoder(spec, model, lambda images: torch.stack([preprocess(im) for im in images]), forward)
    encoder.transform = preprocess  # its steps, for an ONNX export
    return encoder


def open_clip_encoder(model, preprocess, spec: EncoderSpec | None = None, batch_size: int = 64) -> ImageEncoder:
    """An open_clip model in memory as an :class:`ImageEncoder`: its projected image embedding (``encode_image``;
    512-d for ViT-B/32, not L2-normalised) after open_clip's own transform."""
    spec = spec or EncoderSpec("open_clip", "in-memory")
    to_batch = lambda images: torch.stack([preprocess(im) for im in images])  # noqa: E731
    encoder = ImageEncoder(spec, model, to_batch, model.encode_image, batch_size)
    encoder.transform = preprocess  # its steps, for an ONNX export
    return encoder
