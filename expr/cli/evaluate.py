"""``expr evaluate RUN_DIR``: frame-level evaluation of a trained head on a prepared split, with a report a person
reads (JSON, Markdown table, confusion-matrix PNG) written into the run directory.

    expr evaluate runs/2026-11-24_1200 [--cache CACHE] [--split validation] [--stride 5] [--smoothing mean --width 15]

The run's best head (``best/model.safetensors``) and its config are loaded; the cache defaults to the one the run
trained on. Windows of the run's length slide over every video of the split with ``--stride`` frames (default: the
run's ``data.eval_stride``); frame labels come from the path that training's validation, ``expr submit`` and
``expr predict`` share (:mod:`expr.scoring.decision`: window predictions placed at their label frames and interpolated,
frames without a face filled from the nearest face frame, the run's smoothing), so the report gives what a submission
of the split would score. Every frame whose label is not -1 is scored, without and with the temporal smoothing."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from expr.cli.options import parse_options, positional
from expr.config import ConfigError, Smoothing
from expr.data.store import StoreError
from expr.runs.evaluate import evaluate_run, report_folder
from expr.runs.layout import (
    RunError,
    run_options_help,
)


@dataclass(kw_only=True)
class EvaluateOptions:
    run_dir: str = positional()
    """a run directory (with best/model.safetensors)"""
    cache: str | None = None
    """feature store (default: the one the run trained on; = --data.cache)"""
    split: str = "validation"
    """the split to score"""
    stride: int | None = None
    """frames between windows (= --data.eval_stride)"""
    smoothing: Smoothing | None = None
    """temporal post-processing (= --eval.smoothing)"""
    width: int | None = None
    """smoothing width in frames (= --eval.smoothing_width)"""
    device: str = "auto"
    """cuda, cpu or auto"""
    out: str | None = None
    """report folder (default RUN_DIR/eval/SPLIT)"""


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_options(
        EvaluateOptions,
        sys.argv[1:] if argv is None else argv,
        "expr evaluate",
        "evaluate",
        __doc__.split("\n\n")[0],
        run_options_help(),
    )
    try:
        report = evaluate_run(
            args.run_dir,
            args.cache,
            args.split,
            args.stride,
            args.smoothing,
            args.width,
            args.device,
            args.out,
            overrides,
        )
    except (RunError, StoreError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", 0)) != 0:
        return 0  # the main process reports
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval" / report_folder(args.split, report["predict_fps"])
    print((out / "report.md").read_text())
    print(f"report: {out}/report.json, report.md, confusion_matrix.png")
    return 0
