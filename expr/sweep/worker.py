"""Workers: run the trials a worker claims (train with the trial's values, or score a post-processing setting on a
finished run's saved outputs), alone or as one multi-process accelerate job."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from expr.config import ConfigError, build_config, config_from_argv, selection_metric
from expr.sweep import optuna_api
from expr.sweep.posthoc import posthoc_trial
from expr.sweep.queue import finish, heartbeat, next_trial, start_worker, worker_id
from expr.sweep.report import TASK_COLUMNS
from expr.sweep.spec import Study, SweepError
from expr.training.trainer import run

logger = logging.getLogger("expr.sweep")


def suggest(trial, study: Study, seeds: list[int], folds: int) -> dict[str, Any]:
    """The trial's values, recorded as its Optuna params: queued values for grid studies, sampled ones for search
    studies; plus the repeat (seed, fold)."""
    values = {}
    fixed = optuna_api.system_attrs(trial).get("fixed_params", {})
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
    retry_of = optuna_api.system_attrs(trial).get("failed_trial")
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

    if resume:
        cfg, _ = config_from_argv(["--resume", resume])
        result = run(cfg, resume_dir=resume, on_epoch_end=on_epoch_end)
    else:
        result = run(build_config(settings), on_epoch_end=on_epoch_end)
    if result["best_epoch"] < 1:  # no epoch ever scored (a NaN metric): a failed trial, not another epoch's numbers
        return float("nan"), {"run_dir": result["run_dir"], "epochs_run": len(result["history"])}
    best = result["history"][result["best_epoch"] - 1]  # the epoch the run's selection metric chose
    attrs = {
        "run_dir": result["run_dir"],
        "best_epoch": result["best_epoch"],
        "objective": result["best_metric"],
        "macro_f1": best.get("val/macro_f1"),
        "per_class_f1": best.get("val/per_class_f1"),
        "window_macro_f1": best.get("val/window_macro_f1"),
        "epochs_run": len(result["history"]),
        "steps": best.get("step"),  # to the best epoch
        "task_scores": {k: best[k] for k in TASK_COLUMNS if k in best},  # every trained task's, at that epoch
    }
    return result["best_score"], attrs


def epoch_reporter(trial, study: Study, objective: str = "val/macro_f1"):
    """The trainer's per-epoch callback (main process): report the run's ``objective`` (its selection metric) to
    Optuna; True stops a pruned search trial."""
    pruned = {"flag": False}

    def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> bool:
        trial.report(metrics[objective], epoch)
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
    cfg = config_from_argv(["--resume", resume])[0] if resume else build_config(settings)
    on_epoch_end, pruned = epoch_reporter(trial, study, selection_metric(cfg))
    value, attrs = train_trial(settings, resume, on_epoch_end)
    return value, attrs, pruned["flag"]


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
        with heartbeat(storage, optuna_api.trial_id(trial), heartbeat_s):
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
        objective = selection_metric(config_from_argv(["--resume", resume])[0] if resume else build_config(settings))
        on_epoch_end, pruned = (epoch_reporter(trial, study, objective) if main
                                else (lambda epoch, metrics: False, {"flag": False}))  # fmt: skip
        beat = heartbeat(storage, optuna_api.trial_id(trial), heartbeat_s) if main else contextlib.nullcontext()
        with beat:
            value, attrs = train_trial(settings, resume, on_epoch_end)
        if main:
            finish(handle, trial, value, attrs, pruned["flag"])
    state.wait_for_everyone()
