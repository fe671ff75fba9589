"""``expr calibrate RUN_OR_ENSEMBLE [--split validation] [--groups 5]``: fit the per-class decision offsets that
raise macro-F1 (:mod:`expr.scoring.calibration`) on a labelled split, write them to ``calibration.json`` beside the
run's config (or in the ensemble or export folder), and report the split without them, with them, and cross-fitted.

From then on ``expr evaluate``, ``expr submit`` and ``expr predict`` apply them (before the smoothing);
``--eval.calibrate false`` ignores them, deleting the file removes them. The cross-fitted row is the one to judge by:
the frames are split into ``--groups`` groups of whole videos (the folds, for an ensemble of a k-fold study), and
each group is scored with offsets fitted on the others. If it does not beat the uncalibrated row, the offsets
follow noise of this split: do not use them."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from expr.cli.options import parse_options, positional
from expr.config import ConfigError
from expr.data.store import StoreError
from expr.runs.calibrate import calibrate
from expr.runs.layout import CALIBRATION, RunError


@dataclass(kw_only=True)
class CalibrateOptions:
    run_dir: str = positional()
    """a run directory, an exported folder, or an ensemble folder (expr ensemble)"""
    split: str = "validation"
    """the labelled split to fit on"""
    groups: int = 5
    """groups of whole videos for the cross-fitted check (an ensemble of a k-fold study uses its folds)"""
    cache: str | None = None
    """feature store (default: the run's own)"""
    device: str = "auto"
    """cuda, cpu or auto"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, _ = parse_options(CalibrateOptions, argv, "expr calibrate", "calibrate", __doc__.split("\n\n")[0],
                            config_keys=False)  # fmt: skip
    if args.groups < 2:
        print("error: --groups must be 2 or more", file=sys.stderr)
        return 2
    try:
        report = calibrate(args.run_dir, args.split, args.cache, args.device, args.groups)
    except (RunError, StoreError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not report:  # a secondary process under accelerate launch: the main one reports
        return 0
    print((Path(args.run_dir) / "eval" / args.split / "report.md").read_text())
    print(f"wrote {Path(args.run_dir) / CALIBRATION}; evaluate, submit and predict apply it")
    return 0
