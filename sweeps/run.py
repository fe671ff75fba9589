"""Run an ablation study: ``python sweeps/run.py --study window [-- --train.epochs 2 --data.cache CACHE]``.

Studies live in ``sweeps/studies/<name>.yaml`` (see expr/sweep.py for the format). Results go to ``--out``
(default ``sweeps/results/<study>/``): ``report.md``, ``results.csv``, plots, the SQLite study file ``study.db``
and every trial's run directory under ``trials/``. Re-running the same command continues a killed sweep; several
workers (on one machine or many, with ``--storage postgresql://...``) share one study.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing: `python sweeps/run.py`
    sys.path.insert(0, str(ROOT))


def parse(argv: list[str]):
    from expr.sweep import STUDY_DIR, study_files

    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1 :]
    else:
        overrides = []
    parser = argparse.ArgumentParser(
        prog="python sweeps/run.py",
        description=__doc__.split("\n\n")[0],
        epilog=f"studies in {STUDY_DIR}: {', '.join(study_files())}. After --, config overrides for every trial in "
        "expr/train.py's syntax.",
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


def main(argv: list[str] | None = None) -> int:
    from expr.config import ConfigError, parse_cli
    from expr.sweep import SweepError, load_study, open_study, work, write_report

    argv = sys.argv[1:] if argv is None else argv
    args, rest = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("expr").setLevel(logging.INFO)
    import warnings

    import optuna

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
        out = Path(args.out) if args.out else ROOT / "sweeps" / "results" / study.name
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
    print(f"results: {out} (report.md, results.csv, plots; watch with `optuna-dashboard {_url(out, args.storage)}`)")
    return 0


def _url(out: Path, storage: str | None) -> str:
    from expr.sweep import storage_url

    return storage_url(out, storage)


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a multi-process worker: leave as expr/train.py does
        import torch

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
