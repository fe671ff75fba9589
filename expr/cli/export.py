"""``expr export RUN_DIR --out DIR``: the trained head as a self-contained folder in the layout of a Hugging Face
Hub model repository (``config.json``, ``model.safetensors``, ``README.md`` model card), loadable without the run
directory and without unpickling anything::

    from expr.runs.export import load_head
    head, info = load_head("exported/")          # an exported folder or a run directory
    logits = head(visual, visual_mask, audio, audio_mask).logits"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from expr.cli.options import parse_options, positional
from expr.runs.export import ExportError, export_run, export_tuned
from expr.runs.layout import CALIBRATION, EXPORT_FORMAT, TUNED_ENCODERS, RunError, load_head, load_run, run_info  # noqa: F401 (load_head: documented here)
from expr.training.checkpoint import CheckpointError, export_head


@dataclass(kw_only=True)
class ExportOptions:
    run_dir: str = positional()
    """a run directory (its best head is exported)"""
    out: str
    """folder to write (replaced if it exists)"""
    merge: bool = False
    """an `expr finetune` run: merge its LoRA adapters into full encoder weights (default: the adapters or unfrozen
    blocks alone, which need the base weights to load)"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, _ = parse_options(ExportOptions, argv, "expr export", "export", __doc__.split("\n\n")[0], config_keys=False)
    try:
        if (Path(args.run_dir) / "best" / "tuning.json").is_file():
            out = export_tuned(args.run_dir, args.out, args.merge)
            kind = "merged encoder weights" if args.merge else "trained weights only; the base loads from its spec"
            print(f"wrote {out}: tuning.json, model.safetensors ({kind}), config.json, README.md")
            return 0
        if args.merge:
            raise ExportError(f"--merge: {args.run_dir} is not an `expr finetune` run (it has no tuned encoder)")
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
