"""The ablation harness: Optuna studies over the paper's design choices (``python sweeps/run.py --study window``).

A study is a YAML file (``sweeps/studies/<name>.yaml``)::

    description: Window length (the paper's Table 1)
    type: grid                       # grid | search | posthoc
    params:                          # grid: lists of values; search: {choices: [...]} or {low, high, log}
      data.window: [10, 15, 30, 60]
    overrides: {}                    # config values for every trial
    n_trials: 30                     # search only: the trial budget
    sampler: tpe                     # search only: tpe | random
    pruner: median                   # search only: median | hyperband | none

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

from __future__ import annotations

import contextlib
import csv
import fcntl
import functools
import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from expr.atomic import atomic_path, write_text
from expr.config import ConfigError

logger = logging.getLogger("expr.sweep")

STUDY_DIR = Path(__file__).resolve().parent.parent / "sweeps" / "studies"
REPEAT_KEYS = ("train.seed", "data.fold")


class SweepError(ValueError):
    """A study definition or command line that cannot run; the message names the file or option."""


@dataclass
class Study:
    name: str
    type: str
    params: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    n_trials: int = 20
    sampler: str = "tpe"
    pruner: str = "median"
    path: Path | None = None

    def grid(self, seeds: list[int], folds: int) -> list[dict[str, Any]]:
        """Every setting x repeat of a grid study, in a fixed order."""
        import itertools

        keys = list(self.params)
        points = [dict(zip(keys, values, strict=True)) for values in itertools.product(*self.params.values())]
        out = []
        for p in points:
            for seed in seeds:
                for fold in range(max(folds, 1)):
                    q = dict(p, **{"train.seed": seed})
                    if folds:
                        q["data.fold"] = fold
                    out.append(q)
        return out


def study_files(folder: Path = STUDY_DIR) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def load_study(name_or_path: str, folder: Path = STUDY_DIR) -> Study:
    """A study by name (``sweeps/studies/<name>.yaml``) or by the path of a YAML file."""
    from expr.config import all_keys

    path = Path(name_or_path)
    if not path.suffix:
        known = study_files(folder)
        if name_or_path not in known:
            raise SweepError(f"unknown study '{name_or_path}'; studies in {folder}: {', '.join(known) or 'none'}")
        path = known[name_or_path]
    if not path.is_file():
        raise SweepError(f"{path}: study file not found")
    spec = yaml.safe_load(path.read_text()) or {}
    allowed = {"description", "type", "params", "overrides", "n_trials", "sampler", "pruner"}
    unknown = set(spec) - allowed
    if unknown:
        raise SweepError(
            f"{path}: unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}"
        )
    kind = spec.get("type", "grid")
    if kind not in ("grid", "search", "posthoc"):
        raise SweepError(f"{path}: type '{kind}' is not grid, search or posthoc")
    params = spec.get("params") or {}
    if not params:
        raise SweepError(f"{path}: no params")
    keys = set(all_keys())
    for key in {**params, **(spec.get("overrides") or {})}:
        if key not in keys:
            import difflib

            close = difflib.get_close_matches(key, keys, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise SweepError(f"{path}: '{key}' is not a config key.{hint}")
    for key, values in params.items():
        if kind in ("grid", "posthoc") and not (isinstance(values, list) and values):
            raise SweepError(f"{path}: params.{key} must be a non-empty list of values for a {kind} study")
        if kind == "search" and not (
            isinstance(values, dict) and ("choices" in values or {"low", "high"} <= set(values))
        ):
            raise SweepError(f"{path}: params.{key} must be {{choices: [...]}} or {{low: .., high: .., log: ..}}")
    if kind == "posthoc" and not set(params) <= {"eval.smoothing", "eval.smoothing_width"}:
        raise SweepError(f"{path}: a posthoc study varies only eval.smoothing and eval.smoothing_width")
    return Study(
        name=path.stem,
        type=kind,
        params=params,
        overrides=spec.get("overrides") or {},
        description=spec.get("description", ""),
        n_trials=int(spec.get("n_trials", 20)),
        sampler=spec.get("sampler", "tpe"),
        pruner=spec.get("pruner", "median"),
        path=path,
    )


# --------------------------------------------------------------------------------------------- storage
def storage_url(out: Path, url: str | None) -> str:
    return url or f"sqlite:///{(out / 'study.db').resolve()}"


@contextlib.contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _retry_callback():
    """Queue a failed trial again with the same params (at most 3 times per setting)."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)


def make_storage(url: str, heartbeat: int):
    import optuna

    kwargs = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=heartbeat,
        grace_period=heartbeat * 3,
        heartbeat_stale_trial_callback=_retry_callback(),
        **kwargs,
    )


def open_study(study: Study, out: Path, url: str | None, seeds: list[int], folds: int, heartbeat: int = 30):
    """Create (once) or load the Optuna study; a grid study's points are queued by its creator only."""
    import optuna

    url = storage_url(out, url)
    storage = _with_retries(lambda: make_storage(url, heartbeat))  # workers racing to create the tables
    name = f"expr-{study.name}"
    lock = file_lock(out / ".create.lock") if url.startswith("sqlite") else contextlib.nullcontext()
    with lock:
        try:
            created = optuna.create_study(
                storage=storage,
                study_name=name,
                direction="maximize",
                sampler=make_sampler(study),
                pruner=make_pruner(study),
            )
        except optuna.exceptions.DuplicatedStudyError:
            created = None
        except Exception as e:  # noqa: BLE001 - a database server's unique-key race: another worker created it
            if "IntegrityError" not in type(e).__name__ and "UniqueViolation" not in str(e):
                raise
            created = None
        if created is not None:
            created.set_user_attr(
                "expr_study", {"name": study.name, "type": study.type, "seeds": seeds, "folds": folds}
            )
            if study.type in ("grid", "posthoc"):
                for point in study.grid(seeds, folds if study.type == "grid" else 0):
                    created.enqueue_trial(point, skip_if_exists=False)
            created.set_user_attr("queued", True)
    handle = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(study), pruner=make_pruner(study))
    recorded = handle.user_attrs.get("expr_study", {})
    if recorded and (recorded.get("seeds") != seeds or recorded.get("folds") != folds):
        raise SweepError(
            f"study '{study.name}' in {url} was created with seeds {recorded.get('seeds')} and folds "
            f"{recorded.get('folds')}; this run asks for seeds {seeds}, folds {folds}. Use another --out, or the "
            f"same --seeds/--folds"
        )
    for _ in range(100):  # a worker that loads the study while its creator is still queueing waits for the queue
        if handle.user_attrs.get("queued"):
            break
        time.sleep(0.2)
        handle = optuna.load_study(
            study_name=name, storage=storage, sampler=make_sampler(study), pruner=make_pruner(study)
        )
    return handle, storage


def _with_retries(fn, attempts: int = 10):
    """Call ``fn`` again after a random pause when concurrent workers collide on a database server's schema."""
    import random

    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - sqlalchemy IntegrityError / ProgrammingError from a racing CREATE
            if i == attempts - 1 or not any(w in type(e).__name__ for w in ("IntegrityError", "ProgrammingError")):
                raise
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


def make_sampler(study: Study):
    import optuna

    if study.type != "search":
        return optuna.samplers.RandomSampler(seed=0)  # never used: every grid trial is queued
    if study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=None)
    return optuna.samplers.TPESampler(seed=None, multivariate=True)


def make_pruner(study: Study):
    import optuna

    if study.type != "search" or study.pruner == "none":
        return optuna.pruners.NopPruner()
    if study.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


# --------------------------------------------------------------------------------------------- workers
def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def reclaim_dead_trials(study) -> int:
    """Trials left RUNNING by a dead worker process of this machine: mark them failed and queue them again (the
    heartbeat does the same for other machines after its grace period)."""
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    retry = _retry_callback()
    reclaimed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("worker", "")
        name, _, pid = owner.rpartition(":")
        if name != host or not pid.isdigit() or _alive(int(pid)):
            continue
        if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            retry(study, study._storage.get_trial(t._trial_id))
            reclaimed += 1
            logger.info("trial %d of a dead worker (%s) marked failed and queued again", t.number, owner)
    optuna.storages.fail_stale_trials(study)
    return reclaimed


def requeue_failed(study) -> int:
    """Grid settings whose every trial failed (an error, since fixed) are queued again once per worker start."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    live = {_key(t.params) for t in trials if t.state != TrialState.FAIL}
    live |= {_key(t.system_attrs.get("fixed_params", {})) for t in trials if t.state == TrialState.WAITING}
    queued = 0
    for t in trials:
        if t.state == TrialState.FAIL and t.params and _key(t.params) not in live:
            study.enqueue_trial(dict(t.params), skip_if_exists=False)
            live.add(_key(t.params))
            queued += 1
    if queued:
        logger.info("%d failed settings queued again", queued)
    return queued


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_queued_trial(study):
    """Atomically take one queued (WAITING) trial: the storage's RUNNING transition succeeds for one worker only."""
    import optuna
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if study._storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
            return optuna.trial.Trial(study, t._trial_id)
    return None


@contextlib.contextmanager
def heartbeat(storage, trial_id: int, interval: int):
    stop = threading.Event()

    def beat():
        while not stop.wait(interval):
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id)

    storage.record_heartbeat(trial_id)
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def suggest(trial, study: Study, seeds: list[int], folds: int) -> dict[str, Any]:
    """The trial's values, recorded as its Optuna params: queued values for grid studies, sampled ones for search
    studies; plus the repeat (seed, fold)."""
    values = {}
    fixed = trial.study._storage.get_trial(trial._trial_id).system_attrs.get("fixed_params", {})
    choices = {"train.seed": seeds, "data.fold": list(range(max(folds, 1)))}
    if study.type == "search":
        for key, spec in study.params.items():
            if "choices" in spec:
                values[key] = trial.suggest_categorical(key, spec["choices"])
            elif isinstance(spec["low"], int) and isinstance(spec["high"], int) and not spec.get("log"):
                values[key] = trial.suggest_int(key, spec["low"], spec["high"])
            else:
                values[key] = trial.suggest_float(
                    key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log"))
                )
        values["train.seed"] = trial.suggest_categorical("train.seed", seeds) if len(seeds) > 1 else seeds[0]
        if folds:
            values["data.fold"] = trial.suggest_categorical("data.fold", choices["data.fold"])
    else:
        for key in fixed:
            values[key] = trial.suggest_categorical(key, study.params.get(key) or choices[key])
    if folds and study.type != "posthoc":
        values["data.folds"] = folds
    return values


def plan_trial(trial, study: Study, values: dict[str, Any], overrides: dict[str, Any], out: Path):
    """The trial's config overrides and, for a retry of a killed trial that saved state, the run to continue."""
    retry_of = trial.study._storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")
    resume = None
    if retry_of is not None:  # continue the killed trial's run from its last saved state, if it saved one
        failed = trial.study.get_trials(deepcopy=False)[retry_of]
        old = failed.user_attrs.get("run_dir")
        if old and (Path(old) / "states" / "latest.json").is_file():
            resume = old
    run_dir = resume or str(out / "trials" / f"{trial.number:04d}")
    trial.set_user_attr("run_dir", run_dir)
    settings = {**study.overrides, **overrides, **values, "train.output_dir": run_dir, "train.log_with": "none"}
    return settings, resume


def train_trial(settings: dict[str, Any], resume: str | None, on_epoch_end) -> tuple[float, dict[str, Any]]:
    """Train one trial (every process of a multi-process worker runs this); returns (objective, user attributes)."""
    from expr.config import build_config
    from expr.train import config_from_argv, run

    if resume:
        cfg, _ = config_from_argv(["--resume", resume])
        result = run(cfg, resume_dir=resume, on_epoch_end=on_epoch_end)
    else:
        result = run(build_config(settings), on_epoch_end=on_epoch_end)
    best = max(result["history"], key=lambda m: m["val/macro_f1"])
    attrs = {
        "run_dir": result["run_dir"],
        "best_epoch": result["best_epoch"],
        "per_class_f1": best["val/per_class_f1"],
        "window_macro_f1": best.get("val/window_macro_f1"),
        "epochs_run": len(result["history"]),
    }
    return result["best_macro_f1"], attrs


def epoch_reporter(trial, study: Study):
    """The trainer's per-epoch callback (main process): report to Optuna; True stops a pruned search trial."""
    pruned = {"flag": False}

    def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> bool:
        trial.report(metrics["val/macro_f1"], epoch)
        if study.type == "search" and trial.should_prune():
            pruned["flag"] = True
            return True
        return False

    return on_epoch_end, pruned


def run_trial(
    trial, study: Study, values: dict[str, Any], overrides: dict[str, Any], out: Path, source_run: str | None
):
    """Train (or post-process) one trial in this process; returns (objective, user attributes, pruned)."""
    if study.type == "posthoc":
        return posthoc_trial(values, source_run)
    settings, resume = plan_trial(trial, study, values, overrides, out)
    on_epoch_end, pruned = epoch_reporter(trial, study)
    value, attrs = train_trial(settings, resume, on_epoch_end)
    return value, attrs, pruned["flag"]


def posthoc_trial(values: dict[str, Any], source_run: str | None):
    """Score one post-processing setting on a run's saved validation frame probabilities (no retraining)."""
    from expr.evaluation import frame_report, smooth_rows

    if not source_run:
        raise SweepError("a posthoc study needs --run RUN_DIR (a finished run with best/val_frame_probs.npz)")
    path = Path(source_run) / "best" / "val_frame_probs.npz"
    if not path.is_file():
        raise SweepError(f"{path} is missing: train the run (or re-train with this version of expr) first")
    saved = np.load(path)
    rows, probs, labels = saved["rows"], saved["probs"].astype(np.float64), saved["labels"]
    info = json.loads((Path(source_run) / "best" / "head.json").read_text())
    num_frames, frame_offset = _video_layout(info["store"]["path"])
    method = values.get("eval.smoothing", "mean")
    width = int(values.get("eval.smoothing_width", 0))
    smoothed = smooth_rows(rows, probs, num_frames, frame_offset, method, width)
    report = frame_report(labels, smoothed, info["classes"])
    return report["macro_f1"], {"run_dir": str(source_run), "per_class_f1": report["per_class_f1"]}, False


@functools.lru_cache(maxsize=4)
def _video_layout(store_path: str) -> tuple[np.ndarray, np.ndarray]:
    """(num_frames, frame_offset) per video of a store, from its small ``videos`` table only (no features)."""
    import datasets

    videos = datasets.load_from_disk(str(Path(store_path) / "videos"))
    return np.asarray(videos["num_frames"], np.int64), np.asarray(videos["frame_offset"], np.int64)


def next_trial(handle, study: Study, budget: int):
    """Claim a queued trial, or (search studies, within the budget) ask the sampler for a new one; None: done."""
    from optuna.trial import TrialState

    trial = claim_queued_trial(handle)
    if trial is None and study.type == "search":
        done = handle.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        if len(done) < budget:
            trial = handle.ask()
    return trial


def start_worker(study: Study, out: Path, url: str | None, seeds: list[int], folds: int, heartbeat_s: int):
    handle, storage = open_study(study, out, url, seeds, folds, heartbeat_s)
    lock = file_lock(out / ".create.lock") if storage_url(out, url).startswith("sqlite") else contextlib.nullcontext()
    with lock:
        reclaim_dead_trials(handle)
        if study.type != "search":
            requeue_failed(handle)
    return handle, storage


def finish(handle, trial, value, attrs, pruned) -> None:
    from optuna.trial import TrialState

    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    if pruned:
        handle.tell(trial, state=TrialState.PRUNED)
        logger.info("trial %d pruned", trial.number)
    else:
        handle.tell(trial, value)
        logger.info("trial %d: macro-F1 %.4f", trial.number, value)


def work(
    study: Study,
    out: Path,
    url: str | None = None,
    seeds: list[int] | None = None,
    folds: int = 0,
    n_trials: int | None = None,
    overrides: dict[str, Any] | None = None,
    source_run: str | None = None,
    heartbeat_s: int = 30,
) -> None:
    """One worker: claim and run trials until the study has nothing left for it. Under ``accelerate launch`` with
    several processes the worker is one multi-process job (:func:`work_distributed`)."""
    from optuna.trial import TrialState

    seeds = seeds or [42]
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and study.type != "posthoc":
        return work_distributed(study, out, url, seeds, folds, n_trials, overrides, heartbeat_s)
    handle, storage = start_worker(study, out, url, seeds, folds, heartbeat_s)
    budget = n_trials if n_trials is not None else study.n_trials
    while (trial := next_trial(handle, study, budget)) is not None:
        trial.set_user_attr("worker", worker_id())
        values = suggest(trial, study, seeds, folds)
        logger.info("trial %d: %s", trial.number, ", ".join(f"{k}={v}" for k, v in values.items()))
        with heartbeat(storage, trial._trial_id, heartbeat_s):
            try:
                value, attrs, pruned = run_trial(trial, study, values, overrides or {}, out, source_run)
            except (ConfigError, SweepError):
                handle.tell(trial, state=TrialState.FAIL)
                raise
            except Exception:
                handle.tell(trial, state=TrialState.FAIL)
                logger.exception("trial %d failed", trial.number)
                continue
        finish(handle, trial, value, attrs, pruned)


def work_distributed(study, out, url, seeds, folds, n_trials, overrides, heartbeat_s) -> None:
    """A worker that is a multi-process accelerate job: the main process talks to Optuna (claims, reports, tells)
    and broadcasts each trial's settings; every process trains it together."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=not torch.cuda.is_available())
    main = state.is_main_process
    handle = storage = None
    if main:
        handle, storage = start_worker(study, out, url, seeds, folds, heartbeat_s)
    budget = n_trials if n_trials is not None else study.n_trials
    while True:
        message, trial = [None], None
        if main and (trial := next_trial(handle, study, budget)) is not None:
            trial.set_user_attr("worker", worker_id())
            values = suggest(trial, study, seeds, folds)
            logger.info(
                "trial %d (%d processes): %s",
                trial.number,
                state.num_processes,
                ", ".join(f"{k}={v}" for k, v in values.items()),
            )
            message = [plan_trial(trial, study, values, overrides or {}, out)]
        broadcast_object_list(message)
        if message[0] is None:
            break
        settings, resume = message[0]
        # Every process passes a callback: the trainer broadcasts the main process's stop decision to all of them.
        on_epoch_end, pruned = epoch_reporter(trial, study) if main else (lambda epoch, metrics: False, {"flag": False})
        beat = heartbeat(storage, trial._trial_id, heartbeat_s) if main else contextlib.nullcontext()
        with beat:
            value, attrs = train_trial(settings, resume, on_epoch_end)
        if main:
            finish(handle, trial, value, attrs, pruned["flag"])
    state.wait_for_everyone()


# --------------------------------------------------------------------------------------------- results
def results_table(handle, study: Study) -> list[dict[str, Any]]:
    """One row per finished trial (complete or pruned)."""
    from optuna.trial import TrialState

    rows = []
    for t in handle.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        values = dict(t.params)
        row = {"trial": t.number, "state": t.state.name.lower(), "macro_f1": t.value}
        row.update(values)
        for cls, f1 in (t.user_attrs.get("per_class_f1") or {}).items():
            row[f"f1/{cls}"] = f1
        row["best_epoch"] = t.user_attrs.get("best_epoch")
        row["run_dir"] = t.user_attrs.get("run_dir")
        rows.append(row)
    return rows


def setting_of(row: dict[str, Any], study: Study) -> tuple:
    return tuple((k, row.get(k)) for k in study.params)


def summarise(rows: list[dict[str, Any]], study: Study) -> list[dict[str, Any]]:
    """Per setting: mean and std of macro-F1 and per-class F1 over its repeats (seeds x folds)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["state"] == "complete":
            groups.setdefault(setting_of(r, study), []).append(r)
    out = []
    for setting, members in groups.items():
        f1 = np.array([m["macro_f1"] for m in members], float)
        classes = [k for k in members[0] if k.startswith("f1/")]
        per_class = {}
        for c in classes:
            vals = [m[c] for m in members if m.get(c) is not None]
            per_class[c[3:]] = float(np.mean(vals)) if vals else None
        out.append(
            {
                "setting": dict(setting),
                "n": len(members),
                "mean": float(f1.mean()),
                "std": float(f1.std(ddof=1)) if len(f1) > 1 else 0.0,
                "per_class": per_class,
            }
        )
    if study.type == "grid" or study.type == "posthoc":
        order = {tuple(map(repr, p)): i for i, p in enumerate(_grid_order(study))}
        out.sort(key=lambda s: order.get(tuple(repr(v) for v in s["setting"].values()), math.inf))
    else:
        out.sort(key=lambda s: -s["mean"])
    return out


def _grid_order(study: Study) -> list[tuple]:
    import itertools

    return list(itertools.product(*study.params.values()))


def write_report(handle, study: Study, out: Path, paper: dict | None = None) -> Path:
    """``results.csv``, ``report.md`` (Table 1's shape) and plots (a bar chart; importance and parallel-coordinate
    plots for search studies)."""
    rows = results_table(handle, study)
    summary = summarise(rows, study)
    out.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    write_text(out / "report.md", report_markdown(study, summary, rows, handle, paper))
    if summary:
        bar_chart(study, summary, out / f"{study.name}.png")
    if study.type == "search" and sum(r["state"] == "complete" for r in rows) >= 2:
        optuna_plots(handle, out)
    return out / "report.md"


PAPER_TABLE1 = {10: 0.3265, 15: 0.3324, 30: 0.3670, 60: 0.3599}


def report_markdown(study: Study, summary, rows, handle, paper: dict | None) -> str:
    from optuna.trial import TrialState

    counts = {s.name.lower(): len(handle.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    keys = list(study.params)
    classes = list(summary[0]["per_class"]) if summary else []
    paper_col = study.name == "window" and keys == ["data.window"]
    head = "| " + " | ".join(keys) + " | macro-F1 | n |" + (" paper |" if paper_col else "")
    head += "".join(f" {c} |" for c in classes)
    sep = "|---" * (len(keys) + 2 + int(paper_col) + len(classes)) + "|"
    lines = [f"# Study `{study.name}`", "", study.description.strip(), "", head, sep]
    for s in summary:
        vals = " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in s["setting"].values())
        f1 = f"{s['mean']:.4f} ± {s['std']:.4f}" if s["n"] > 1 else f"{s['mean']:.4f}"
        line = f"| {vals} | {f1} | {s['n']} |"
        if paper_col:
            p = PAPER_TABLE1.get(s["setting"]["data.window"])
            line += f" {p:.4f} |" if p else " |"
        line += "".join(f" {v:.3f} |" if v is not None else " - |" for v in s["per_class"].values())
        lines.append(line)
    lines += [
        "",
        "Macro-F1: frame-level validation macro-F1 of each trial's best epoch; mean ± sample std over the repeats "
        "(seeds x folds, n). Per-class columns: mean F1 over the repeats.",
        "",
        "Trials: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v),
        "",
        f"![{study.name}]({study.name}.png)",
    ]
    if study.type == "search":
        lines += ["", "![importance](importance.png)", "", "![parallel coordinates](parallel_coordinate.png)"]
    return "\n".join(lines) + "\n"


def bar_chart(study: Study, summary, path: Path) -> None:
    from expr.plots import pyplot, save_figure

    plt = pyplot()
    shown = summary[:20]
    labels = [", ".join(f"{k.split('.')[-1]}={v}" for k, v in s["setting"].items()) for s in shown]
    means = [s["mean"] for s in shown]
    stds = [s["std"] for s in shown]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(shown) + 2), 4), dpi=110)
    ax.bar(range(len(shown)), means, yerr=stds, capsize=4, color="#4C72B0")
    for i, m in enumerate(means):
        ax.text(i, m, f"{m:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(
        range(len(shown)), labels, rotation=30 if len(shown) > 4 else 0, ha="right" if len(shown) > 4 else "center"
    )
    ax.set_ylabel("validation macro-F1 (frames)")
    ax.set_title(f"study {study.name}" + (" (mean ± std over repeats)" if any(s["n"] > 1 for s in shown) else ""))
    low = min(m - s for m, s in zip(means, stds, strict=True))
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, max(means) + 0.05))
    save_figure(fig, path)


def optuna_plots(handle, out: Path) -> None:
    import optuna.visualization.matplotlib as vis

    from expr.plots import save_figure

    for name, fn in (("importance", vis.plot_param_importances), ("parallel_coordinate", vis.plot_parallel_coordinate)):
        try:
            ax = fn(handle)
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            fig.set_size_inches(9, 5)
            save_figure(fig, out / f"{name}.png", dpi=110)
        except Exception as e:  # noqa: BLE001 - a plot that cannot be drawn (e.g. one distinct value) is skipped
            logger.warning("no %s plot: %s", name, e)
