"""The ``hf`` image family: ``AutoModel`` with its ``AutoImageProcessor``: ``pooled`` is ``pooler_output``
(DINOv2: the layer-normed class token); ``cls`` ``last_hidden_state[:, 0]``; ``mean`` the mean of the patch
tokens."""

from __future__ import annotations

from expr.features.encoding import ImageEncoder, _tokens
from expr.features.hf_models import _hf_model, _hf_source, cached_first, hf_config
from expr.features.spec import EncoderSpec, SpecError


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
