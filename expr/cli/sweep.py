"""``expr sweep --study NAME [options] [-- CONFIG OVERRIDES]`` (also ``python sweeps/run.py``): run an ablation study.

Studies ship with expr (``expr/sweep/studies/<name>.yaml``; ``--study path/to/file.yaml`` for your own). Results go
to ``--out`` (default ``sweeps/results/<study>/``): ``report.md``, ``results.csv``, plots, the SQLite study file
``study.db`` and every trial's run directory under ``trials/``. Re-running the same command continues a killed sweep;
several workers (on one machine or many, with ``--storage postgresql://...``) share one study. Under
``accelerate launch`` a worker is one multi-process job.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from expr.cli.options import parse_options
from expr.config import ConfigError, build_config, parse_cli
from expr.data.source import open_store
from expr.data.store import StoreError
from expr.sweep.queue import open_study, storage_url
from expr.sweep.report import write_report
from expr.sweep.spec import FROM_STORE, STUDY_DIR, SweepError, load_study, resolve_store_axes, study_files
from expr.sweep.worker import work


@dataclass(kw_only=True)
class SweepOptions:
    study: str
    """a study name or a YAML file"""
    n_trials: int | None = None
    """search studies: the trial budget (default: the study's)"""
    seeds: str = "42"
    """comma-separated seeds; each setting runs once per seed"""
    folds: int = 0
    """k-fold cross-validation over videos (0: off)"""
    storage: str | None = None
    """Optuna storage URL (default: sqlite:///OUT/study.db)"""
    out: str | None = None
    """results folder (default sweeps/results/<study>)"""
    report: bool = False
    """only write the report of the study as it stands"""
    run: str | None = None
    """posthoc studies (smoothing): the finished run whose validation outputs to use"""
    heartbeat: int = 30
    """seconds between a trial's heartbeats"""


def parse(argv: list[str], prog: str = "expr sweep") -> tuple[SweepOptions, dict]:
    """(the sweep's options, config overrides for every trial: dotted options before or after ``--``)."""
    if "--" in argv:
        cut = argv.index("--")
        argv, after = argv[:cut], argv[cut + 1 :]
    else:
        after = []
    epilog = (
        f"studies in {STUDY_DIR}: {', '.join(study_files())}. Config overrides for every trial in `expr train`'s "
        "syntax (--section.key VALUE), here or after --."
    )
    args, overrides = parse_options(SweepOptions, argv, prog, "sweep", __doc__.split("\n\n")[0], epilog)
    given, files, preset, resume = parse_cli(after)
    if files or preset or resume:
        raise SweepError("after --, give config overrides only (--section.key VALUE)")
    return args, {**overrides, **given}


def main(argv: list[str] | None = None, results_root: Path | None = None, prog: str = "expr sweep") -> int:
    """``results_root``: where ``--out`` defaults to ``<root>/<study>`` (``sweeps/results`` under the working folder;
    ``python sweeps/run.py`` passes the checkout's)."""
    import warnings

    import optuna

    argv = sys.argv[1:] if argv is None else argv
    try:
        args, overrides = parse(argv, prog)
    except (SweepError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("expr").setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        study = load_study(args.study)
        if FROM_STORE in study.params.values():
            study = resolve_store_axes(study, open_store(build_config({**study.overrides, **overrides})))
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if args.folds == 1 or args.folds < 0:
            raise SweepError("--folds must be 0 (off) or at least 2")
        for fold in range(args.folds):  # before any trial: a tuned set must not validate on its training videos
            open_store(build_config({**study.overrides, **overrides, "data.folds": args.folds, "data.fold": fold}))
        out = Path(args.out) if args.out else (results_root or Path("sweeps") / "results") / study.name
        if args.report and args.storage is None and not (out / "study.db").is_file():
            raise SweepError(f"{out}: no study here yet (no study.db); run it without --report first, or give --out")
        if not args.report:
            work(study, out, args.storage, seeds, args.folds, args.n_trials, overrides, args.run, args.heartbeat)
        if int(os.environ.get("RANK", 0)) != 0:
            return 0  # a multi-process worker: the main process writes the report
        handle, _ = open_study(study, out, args.storage, seeds, args.folds, args.heartbeat)
        report = write_report(handle, study, out)
    except (SweepError, ConfigError, StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.read_text())
    url = storage_url(out, args.storage)
    print(f"results: {out} (report.md, results.csv, plots; watch with `optuna-dashboard {url}`)")
    return 0
