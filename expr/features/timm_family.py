"""The ``timm`` family: ``create_model(..., num_classes=0)`` with timm's own eval transform
(``resolve_model_data_config``): ``pooled`` is the model's head pooling (the class token for DINOv2 ViTs, global
average for CNNs); ``cls`` the class token; ``mean`` the mean of patch tokens (ViTs) or of the feature map (CNNs)."""

from __future__ import annotations

import torch

from expr.features.encoding import EncoderError, ImageEncoder, _local, _quiet, _tokens, seeded, unavailable
from expr.features.spec import EncoderSpec


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

    encoder = ImageEncoder(spec, model, lambda images: torch.stack([transform(im) for im in images]), forward)
    encoder.transform = transform  # its steps, for an ONNX export
    return encoder
