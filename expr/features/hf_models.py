"""What the Hugging Face ``transformers`` families (``hf`` images, :mod:`expr.features.hf_image`; speech,
:mod:`expr.features.hf_audio`) share: where a spec's model is, its config, its weights from the local cache before
the hub, and the refusal of code that comes with a model folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from expr.features.encoding import EncoderError, _local, _quiet, seeded, unavailable
from expr.features.spec import EncoderSpec, SpecError


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
        from transformers.models.auto.modeling_auto import MODEL_MAPPING

        with seeded():  # constructed directly: from_config would partition it under an active ZeRO-3 config
            return MODEL_MAPPING[type(config)](config) if type(config) in MODEL_MAPPING else \
                transformers.AutoModel.from_config(config)  # fmt: skip
    try:
        load = transformers.AutoModel.from_pretrained
        revision = {} if local or spec.weights is None else {"revision": spec.weights}  # a hub branch, tag or commit
        return cached_first(lambda name, **kw: load(name, config=config, **revision, **kw), source, local)
    except Exception as e:  # noqa: BLE001
        raise unavailable(spec, e, f"huggingface-cli download {spec.model}") from None
