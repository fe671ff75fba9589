"""The shared study: Optuna storage (SQLite beside the results, or a database server), the study created once with
its grid queued by its creator, and the worker-side queue: claiming a queued trial atomically, reclaiming the trials
of dead workers, heartbeats, telling results. Optuna's private API is reached only through
:mod:`expr.sweep.optuna_api`."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from expr.sweep import optuna_api
from expr.sweep.spec import Study, SweepError

logger = logging.getLogger("expr.sweep")


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
        if optuna_api.try_set_state(study, t, TrialState.FAIL):
            retry(study, optuna_api.stored_trial(study, t))
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
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if optuna_api.try_set_state(study, t, TrialState.RUNNING):
            return optuna_api.live_trial(study, t)
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
        logger.info("trial %d: %s %.4f", trial.number, attrs.get("objective", "val/macro_f1"), value)
