"""``expr export RUN_DIR --out DIR``: the trained head as a self-contained folder in the layout of a Hugging Face
Hub model repository (``config.json``, ``model.safetensors``, ``README.md`` model card), loadable without the run
directory and without unpickling anything::

    from expr.export import load_head
    head, info = load_head("exported/")          # an exported folder or a run directory
    logits = head(visual, visual_mask, audio, audio_mask).logits
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expr.atomic import atomic_path
from expr.checkpoint import CheckpointError, export_head
from expr.options import parse_options, positional
from expr.runs import EXPORT_FORMAT, RunError, load_head, load_run, run_info  # noqa: F401 (load_head: documented here)


class ExportError(RunError):
    """A run or folder that cannot be exported; the message names it."""


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    run_dir, out = Path(run_dir), Path(out)
    cfg, _ = load_run(run_dir)  # checks the run has a trained head
    info = run_info(run_dir, cfg)
    info.pop("cfg")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        shutil.copyfile(run_dir / "best" / "model.safetensors", tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(info, indent=2))
        (tmp / "README.md").write_text(model_card(info))
    return out


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
from expr.export import load_head
head, info = load_head("path/to/this/folder")
```

or `expr predict clip.mp4 --run path/to/this/folder --out predictions/`. `model.safetensors` holds the weights,
`config.json` the full training config and the facts above; nothing is pickled.
"""


@dataclass(kw_only=True)
class ExportOptions:
    run_dir: str = positional()
    """a run directory (its best head is exported)"""
    out: str
    """folder to write (replaced if it exists)"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, _ = parse_options(ExportOptions, argv, "expr export", "export", __doc__.split("\n\n")[0], config_keys=False)
    try:
        out = export_run(args.run_dir, args.out)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: config.json, model.safetensors, README.md (upload as a Hugging Face model repository)")
    return 0


@dataclass(kw_only=True)
class ExportHeadOptions:
    state_dir: str = positional()
    """a resume state, a folder of RUN_DIR/states/ (DeepSpeed ZeRO states included)"""
    out: str
    """the safetensors file to write"""


def main_head(argv: list[str] | None = None) -> int:
    """``expr export-head STATE_DIR --out FILE``: one safetensors file of the head of a resume state."""
    argv = sys.argv[1:] if argv is None else argv
    doc = main_head.__doc__
    args, _ = parse_options(ExportHeadOptions, argv, "expr export-head", "export_head", doc, config_keys=False)
    try:
        path = export_head(args.state_dir, args.out)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
