"""The ``finetuned`` family: the image encoder that ``expr finetune`` tuned (``finetuned:RUN_DIR``, or an exported
tuned encoder's folder), rebuilt from its base encoder's spec, its tuning and its tuned weights."""

from __future__ import annotations

from pathlib import Path

import torch

from expr.features.encoding import EncoderError, ImageEncoder, _named_errors
from expr.features.hf_image import load_hf_image
from expr.features.open_clip_family import load_open_clip
from expr.features.spec import EncoderSpec, parse_spec
from expr.features.timm_family import load_timm

BASE_LOADERS = {"open_clip": load_open_clip, "timm": load_timm, "hf": load_hf_image}
"""The families a tuned encoder's base comes from: every image family but ``finetuned`` (``expr finetune`` tunes a
base encoder only)."""


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
    with _named_errors(base):
        encoder = BASE_LOADERS[base.family](base, torch.device("cpu"))
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
