"""Exports (``expr export``, :mod:`expr.cli.export`): the trained head as a self-contained folder in the layout of a
Hugging Face Hub model repository (``config.json``, ``model.safetensors``, ``README.md`` model card), loadable without
the run directory and without unpickling anything::

    from expr.runs.export import load_head
    head, info = load_head("exported/")          # an exported folder or a run directory
    logits = head(visual, visual_mask, audio, audio_mask).logits
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from expr.atomic import atomic_path
from expr.runs.layout import CALIBRATION, EXPORT_FORMAT, TUNED_ENCODERS, RunError, load_head, load_run, run_info  # noqa: F401 (load_head: documented here)


class ExportError(RunError):
    """A run or folder that cannot be exported; the message names it."""


def export_run(run_dir: str | Path, out: str | Path, extra=None) -> Path:
    """The run's best head, config, calibration and model card in folder ``out``; ``extra(folder)`` writes more
    into it before it appears (an ONNX export's models)."""
    run_dir, out = Path(run_dir), Path(out)
    cfg, _ = load_run(run_dir)  # checks the run has a trained head
    info = run_info(run_dir, cfg)
    info.pop("cfg")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        shutil.copyfile(run_dir / "best" / "model.safetensors", tmp / "model.safetensors")
        if (run_dir / "best" / TUNED_ENCODERS).is_file():  # an online run whose encoders trained: their weights
            shutil.copyfile(run_dir / "best" / TUNED_ENCODERS, tmp / TUNED_ENCODERS)
        if (run_dir / CALIBRATION).is_file():  # its decision calibration (expr calibrate) travels with it
            shutil.copyfile(run_dir / CALIBRATION, tmp / CALIBRATION)
        (tmp / "config.json").write_text(json.dumps(info, indent=2))
        (tmp / "README.md").write_text(model_card(info))
        if extra is not None:
            extra(tmp)
    return out


def export_tuned(run_dir: str | Path, out: str | Path, merge: bool = False) -> Path:
    """An ``expr finetune`` run's tuned encoder and frame classifier: ``model.safetensors`` (what trained: adapters
    or unfrozen blocks, and the classifier; with ``merge``, the full encoder weights with the adapters merged in),
    ``tuning.json`` (the base encoder's spec and its tuning), ``config.json`` (the run's config) and a model card.
    ``finetuned:OUT`` names it as an encoder (``expr prepare --visual``);
    :func:`expr.models.frame.load_frame_classifier` loads it."""
    from expr.features.encoders import TUNED_INFO, tuned_folder
    from expr.features.tuning import merged_state
    from expr.models.frame import load_frame_classifier
    from expr.training.checkpoint import save_head

    run_dir, out = Path(run_dir), Path(out)
    try:
        folder = tuned_folder(run_dir)
        model, info = load_frame_classifier(run_dir)
    except Exception as e:  # noqa: BLE001 - EncoderError, SpecError, TuningError: one line naming the run
        raise ExportError(f"{run_dir}: {e}") from None
    info = {**info, "merged": bool(merge or info.get("merged"))}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        if merge:
            state = {f"encoder.{k}": v for k, v in merged_state(model.encoder).items()}
            state.update({f"classifier.{k}": v for k, v in model.classifier.state_dict().items()})
            save_head(state, tmp / "model.safetensors", {"merged": "true", "backbone": info["backbone"]})
        else:
            shutil.copyfile(folder / "model.safetensors", tmp / "model.safetensors")
        (tmp / TUNED_INFO).write_text(json.dumps(info, indent=2))
        saved = run_dir / "config.yaml"
        if saved.is_file():
            import yaml

            (tmp / "config.json").write_text(json.dumps(yaml.safe_load(saved.read_text()), indent=2))
        (tmp / "README.md").write_text(tuned_card(info))
    return out


def tuned_card(info: dict[str, Any]) -> str:
    t = info["tuning"]
    how = "adapters merged into the full encoder weights" if info["merged"] else "only the weights that trained"
    base = (
        "Loading builds the base encoder from the spec above (its weights must be here) and replaces all of them."
        if info["merged"]
        else "The base weights are not included: they load from the spec above."
    )
    return f"""---
library_name: expr
tags:
- facial-expression-recognition
- abaw
---

# expr tuned image encoder

`{info["backbone"]}` tuned as a frame classifier by `expr finetune` ({t["method"]}); `model.safetensors` holds
{how} (keys `encoder.*`) and the linear classifier (`classifier.*`) over {", ".join(info["classes"])}.
{base} Validation frame macro-F1
{info["val/macro_f1"]:.4f} (epoch {info["epoch"]}); features are {info["dim"]}-d.

```
expr prepare affwild2 ROOT --out STORE --visual tuned=finetuned:path/to/this/folder
```
```python
from expr.models.frame import load_frame_classifier
model, info = load_frame_classifier("path/to/this/folder")   # logits = model(pixels)
```
"""


def model_card(info: dict[str, Any]) -> str:
    b = info["backbones"]
    f1 = info["validation"]["macro_f1"]
    random = b.get("random_weights") or "random" in (b.get("clip_pretrained"), b.get("wav2vec2"))
    return f"""---
library_name: expr
tags:
- facial-expression-recognition
- audio-visual
- abaw
metrics:
- f1
---

# expr fusion head

The trainable head of an audio-visual facial expression recogniser (frozen CLIP image features per frame, frozen
Wav2Vec2 audio features, dilated causal TCN, bi-directional cross-attention, MLP), trained with expr.

- Classes: {", ".join(info["classes"])}
- Expects features from CLIP `{b.get("clip")}` / `{b.get("clip_pretrained")}` (512-d per frame) and Wav2Vec2
  `{b.get("wav2vec2")}` (768-d, 50 per second){" - **random backbone weights: a smoke-test model**" if random else ""}
- Windows of {info["window"]} frames, frame predictions averaged over windows every {info["eval_stride"]} frames;
  smoothing: {info["smoothing"]["method"]} (width {info["smoothing"]["width"]})
- Validation frame-level macro-F1: {f"{f1:.4f}" if f1 is not None else "n/a"} (epoch {info["validation"]["epoch"]}),
  trained on `{info["trained_on"]["source"] or info["trained_on"]["store"]}`

```python
from expr.runs.export import load_head
head, info = load_head("path/to/this/folder")
```

or `expr predict clip.mp4 --run path/to/this/folder --out predictions/`. `model.safetensors` holds the weights,
`config.json` the full training config and the facts above; nothing is pickled. `head` gives raw window
probabilities; a `calibration.json` here (per-class offsets fitted by `expr calibrate`) is applied by `expr predict`
and `expr submit`, in Python by `expr.scoring.decision.Decision`.
"""
