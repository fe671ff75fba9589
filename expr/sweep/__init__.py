"""The ablation harness: Optuna studies over the paper's design choices (``expr sweep --study window``).

    spec.py        study files: what a study varies (grid, search, posthoc) -> Study
    queue.py       the shared Optuna study: created once, grid queued, trials claimed atomically, dead workers'
                   trials reclaimed, heartbeats
    optuna_api.py  every use of Optuna's private API
    worker.py      a worker: claim, train (or post-process), report; alone or as a multi-process job
    report.py      results.csv, report.md, plots
    command.py     ``expr sweep`` / ``python sweeps/run.py``

Every trial trains from the feature cache (``--data.cache`` in the overrides; the demo data otherwise) with the
trial's values and reports the frame-level validation macro-F1 of its best epoch; search studies report every
epoch to Optuna's pruner. ``--seeds 42,43`` repeats each setting per seed and ``--folds 5`` per cross-validation
fold; the report gives mean +- std over the repeats.

Many workers may share one study (``--storage``; an SQLite file in the study folder by default): grid points are
queued once, when the study is created (under a file lock, or by the one worker whose ``create_study`` succeeds on a
database server), and each worker claims a queued trial atomically, so every setting is evaluated exactly once. A
killed worker's trial is found on the next start (a dead process on this machine at once; on other machines when its
heartbeat stops), marked failed and queued again; the retry continues the killed trial's run from its last saved
state. Each trial's run directory is kept (``trials/<number>``) and named in the trial's user attributes.
"""

from expr.sweep.spec import STUDY_DIR, Study, SweepError, load_study, study_files

__all__ = ["STUDY_DIR", "Study", "SweepError", "load_study", "study_files"]
