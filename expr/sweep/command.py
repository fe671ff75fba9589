"""``expr sweep --study NAME [options] [-- CONFIG OVERRIDES]`` (also ``python sweeps/run.py``): run an ablation study.

Studies ship with expr (``expr/sweep/studies/<name>.yaml``; ``--study path/to/file.yaml`` for your own). Results go
to ``--out`` (default ``sweeps/results/<study>/``): ``report.md``, ``results.csv``, plots, the SQLite study file
``study.db`` and every trial's run directory under ``trials/``. Re-running the same command continues a killed sweep;
several workers (on one machine or many, with ``--storage postgresql://...``) share one study. Under
``accelerate launch`` a worker is one multi-process job.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from expr.config import ConfigError, parse_cli
from expr.sweep.queue import open_study, storage_url
from expr.sweep.report import write_report
from expr.sweep.spec import STUDY_DIR, SweepError, load_study, study_files
from expr.sweep.worker import work


def parse(argv: list[str], prog: str = "expr sweep"):
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1 :]
    else:
        overrides = []
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        epilog=f"studies in {STUDY_DIR}: {', '.join(study_files())}. After --, config overrides for every trial in "
        "`expr train`'s syntax (--section.key VALUE).",
    )
    parser.add_argument("--study", required=True, help="a study name or a YAML file")
    parser.add_argument("--n-trials", type=int, help="search studies: the trial budget (default: the study's)")
    parser.add_argument("--seeds", default="42", help="comma-separated seeds; each setting runs once per seed")
    parser.add_argument("--folds", type=int, default=0, help="k-fold cross-validation over videos (0: off)")
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    parser.add_argument("--out", help="results folder (default sweeps/results/<study>)")
    parser.add_argument("--report", action="store_true", help="only write the report of the study as it stands")
    parser.add_argument("--run", help="posthoc studies (smoothing): the finished run whose validation outputs to use")
    parser.add_argument("--heartbeat", type=int, default=30, help="seconds between a trial's heartbeats")
    args = parser.parse_args(argv)
    return args, overrides


def main(argv: list[str] | None = None, results_root: Path | None = None, prog: str = "expr sweep") -> int:
    """``results_root``: where ``--out`` defaults to ``<root>/<study>`` (``sweeps/results`` under the working folder;
    ``python sweeps/run.py`` passes the checkout's)."""
    import warnings

    import optuna

    argv = sys.argv[1:] if argv is None else argv
    args, rest = parse(argv, prog)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("expr").setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        study = load_study(args.study)
        overrides, files, preset, resume = parse_cli(rest)
        if files or preset or resume:
            raise SweepError("after --, give config overrides only (--section.key VALUE)")
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if args.folds == 1 or args.folds < 0:
            raise SweepError("--folds must be 0 (off) or at least 2")
        out = Path(args.out) if args.out else (results_root or Path("sweeps") / "results") / study.name
        if not args.report:
            work(study, out, args.storage, seeds, args.folds, args.n_trials, overrides, args.run, args.heartbeat)
        if int(os.environ.get("RANK", 0)) != 0:
            return 0  # a multi-process worker: the main process writes the report
        handle, _ = open_study(study, out, args.storage, seeds, args.folds, args.heartbeat)
        report = write_report(handle, study, out)
    except (SweepError, ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.read_text())
    url = storage_url(out, args.storage)
    print(f"results: {out} (report.md, results.csv, plots; watch with `optuna-dashboard {url}`)")
    return 0
