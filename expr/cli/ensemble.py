"""``expr ensemble RUN RUN [RUN ...] --out DIR [--split validation] [--weights equal|fit] [--calibrate]``, or
``expr ensemble --study SWEEP_DIR --out DIR``: several runs (or exported heads) as one model. Each member's frame
probabilities come from ``expr evaluate``'s own path (its window length, feature sets, mode and encoders; written
under ``DIR/members/``); the ensemble's are the weighted mean of the members' raw probabilities, then its own
decision (calibration, smoothing), scored and reported like a run (``DIR/eval/SPLIT/``) with a table of every
member and of the steps from the best run to the submission (``members.md``).

Weights: ``equal``, or ``fit`` on the split itself by greedy selection with replacement (Caruana et al. 2004): start
from the best member, then repeatedly add the member whose addition raises macro-F1 most; the weights are the
selection counts. The fitted ensemble never scores below its best member on that split, which is also why its
score there is optimistic: fit on validation, judge on other data. Members must agree on classes, split and frames.

``--study``: the runs of a k-fold study's best setting, every fold. Each validated on its own fold, so the ensemble
is scored out of fold (every pooled video by the models that did not train on it); for the test set all vote.

``expr submit DIR --example F --out F``, ``expr predict VIDEO --run DIR`` and ``expr calibrate DIR`` take the
ensemble folder like a run directory."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from expr.cli.options import parse_options, positional
from expr.config import ConfigError, Smoothing
from expr.data.store import StoreError
from expr.runs.ensemble import EnsembleError, ensemble, study_selection
from expr.runs.layout import RunError


@dataclass(kw_only=True)
class EnsembleOptions:
    runs: tuple[str, ...] = positional(default=())
    """run directories or exported folders (two or more)"""
    out: str
    """folder to write (ensemble.json, members/, eval/SPLIT/)"""
    split: str = "validation"
    """the labelled split to combine and score"""
    weights: Literal["equal", "fit"] = "equal"
    """equal weights, or weights fitted on the split (greedy selection; never below the best member there)"""
    study: str | None = None
    """instead of RUNs: the --out folder of an `expr sweep` (with --folds K): its best setting's runs, every fold"""
    smoothing: Smoothing | None = None
    """the ensemble's temporal smoothing (default: the members', when they agree)"""
    width: int | None = None
    """the ensemble's smoothing width in frames"""
    calibrate: bool = False
    """also fit per-class decision offsets on the split (expr calibrate), reported in-sample and cross-fitted"""
    groups: int = 5
    """groups of whole videos for the cross-fitted calibration check (a k-fold study uses its folds)"""
    cache: str | None = None
    """the feature store (default: each run's own)"""
    device: str = "auto"
    """cuda, cpu or auto"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, _ = parse_options(EnsembleOptions, argv, "expr ensemble", "ensemble", __doc__.split("\n\n")[0],
                            config_keys=False)  # fmt: skip
    try:
        if args.groups < 2:
            raise EnsembleError("--groups must be 2 or more")
        if bool(args.study) == bool(args.runs):
            raise EnsembleError("give the members as RUN RUN ..., or --study SWEEP_DIR, not both or neither")
        selection = study_selection(args.study) if args.study else None
        runs = selection["runs"] if selection else list(args.runs)
        report = ensemble(runs, args.out, args.split, args.weights, args.cache, args.device, args.smoothing,
                          args.width, args.calibrate, args.groups, selection)  # fmt: skip
    except (RunError, StoreError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "eval" / args.split / "members.md").read_text())
    print(f"wrote {args.out}: ensemble.json, eval/{args.split}/ (report, frame probabilities), members/")
    return 0 if report else 2
