"""The one training loop: :class:`Trainer` runs a :class:`~expr.training.unit.TrainUnit` (the fusion head of
``expr train``, the frame classifier of ``expr finetune``) on one or many processes, with checkpoints, exact resume,
logging and the best model kept. ``run(cfg)`` trains the fusion head and returns a result dict; sweeps call it.

A run directory holds: ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON object per epoch),
``best/`` (the best head by validation macro-F1: ``model.safetensors`` + ``head.json``), ``states/`` (accelerate
resume states, the newest named in ``states/latest.json``) and tracker logs (TensorBoard by default).
``--resume RUN_DIR`` continues a killed run from its newest state and ends with the same metrics as an
uninterrupted run with the same seed.
"""

from __future__ import annotations

import enum
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger

from expr.atomic import write_text
from expr.config import (
    Config,
    ConfigError,
    selection_metric,
)
from expr.locks import FolderLock, LockedError
from expr.training.checkpoint import Progress, resume_progress, save_progress
from expr.training.distributed import (
    agree,
    loss_scale,
    make_accelerator,
    param_checksums,
    sync_deepspeed_config,
)
from expr.training.head import HeadUnit
from expr.training.optim import build_optimizer, scaled_lr
from expr.training.rundir import new_run_dir
from expr.training.unit import TrainUnit

logger = get_logger("expr.training.trainer")  # main process only, unless a call says otherwise

EpochCallback = Callable[[int, dict[str, Any]], bool | None]


def _flat_config(cfg: Config) -> dict[str, Any]:
    out = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            out[f"{section}/{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


class NonFiniteError(RuntimeError):
    """The training loss is not a number: damaged features (named) or a diverged run."""


FP16_NON_FINITE_STEPS = 50
"""Under fp16 loss scaling, this many non-finite losses in a row are not overflow any more: the run stops."""


class EpochEnd(enum.Enum):
    """How :meth:`Trainer.train_epoch` ended."""

    DONE = "done"
    """The epoch ran to its end: validate, go on."""
    STOPPED = "stopped"
    """``train.stop_after_steps`` was reached inside the epoch: its state is saved, nothing to validate; stop."""
    LAST = "last"
    """``train.stop_after_steps`` was reached on the epoch's last step: validate, save, then stop."""


class Trainer:
    """One training run of a :class:`~expr.training.unit.TrainUnit` (default: the fusion head). Construct, then
    :meth:`fit`."""

    def __init__(
        self,
        cfg: Config,
        resume_dir: str | None = None,
        on_epoch_end: EpochCallback | None = None,
        unit: type[TrainUnit] = HeadUnit,
    ):
        self.cfg, self.on_epoch_end = cfg, on_epoch_end
        if cfg.predict.fps:
            raise ConfigError(
                "predict.fps is for commands that read a finished run (expr predict, and expr evaluate to measure its "
                "cost): training reads every frame's features"
            )
        self.unit = unit(self)
        self.data = self.store = self.encoders = None
        self._non_finite_steps = 0
        trackers = [t.strip() for t in (cfg.train.log_with or "").split(",") if t.strip() not in ("", "none")]
        run_dir = resume_dir or cfg.train.output_dir
        if not resume_dir and run_dir and any((Path(run_dir) / f).exists() for f in ("metrics.jsonl", "states")):
            raise ConfigError(
                f"train.output_dir {run_dir} already holds a run: continue it with --resume {run_dir} or choose "
                f"another --train.output_dir"
            )
        self.accelerator = acc = make_accelerator(cfg, run_dir, trackers)
        if run_dir is None:  # every process must agree on the timestamped name
            run_dir = agree(acc, new_run_dir() if acc.is_main_process else None)
            acc.project_configuration.project_dir = run_dir
        self.run_dir = Path(run_dir)
        acc.project_configuration.logging_dir = str(self.run_dir / "logs")
        cfg.train.output_dir = str(self.run_dir)
        self.lock, refused = None, None
        if acc.is_main_process:  # one writer per run directory, for as long as this run trains
            hint = f"wait for it to finish (--resume {self.run_dir} then continues it), or choose another directory"
            try:
                self.lock = FolderLock(self.run_dir, "run", hint).acquire()
            except LockedError as e:
                refused = str(e)
        refused = agree(acc, refused)  # every process stops with the same line, none waits in a collective
        if refused:
            raise LockedError(refused)
        try:
            self._start(resume_dir, trackers)
        except BaseException:
            self.close()  # a run that cannot start holds nothing
            raise

    def _start(self, resume_dir: str | None, trackers: list[str]) -> None:
        """Everything after the run directory is ours: data, model, and the resumed state."""
        from accelerate.utils import set_seed

        cfg, acc = self.cfg, self.accelerator
        acc.wait_for_everyone()
        set_seed(cfg.train.seed)
        self.resuming = bool(resume_dir)  # config.yaml is then rewritten only once the state has loaded
        self.unit.setup()
        if trackers:
            acc.init_trackers("expr", config=_flat_config(cfg))
        p = self.progress = resume_progress(acc, self.run_dir, self.steps_per_epoch) if resume_dir else Progress()
        if resume_dir:
            if acc.is_main_process:  # rows written after the state was saved belong to work that will be redone
                write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in p.history))
                self.save_config()
            logger.info("resumed %s at epoch %d, step %d", self.run_dir, p.epoch + 1, p.step_in_epoch)
        self.start_epoch, self.skip_steps = p.epoch, p.step_in_epoch

    def prepare(self, model: torch.nn.Module, groups: Callable[[float], list[dict]] | None = None) -> None:
        """The optimizer (``groups(lr)``: its parameter groups; default: every trainable parameter at the run's
        learning rate) and schedule of ``model``, and all of them prepared with the loaders."""
        cfg, acc = self.cfg, self.accelerator
        sync_deepspeed_config(acc, cfg)
        self.lr = scaled_lr(cfg.train, acc.num_processes)
        self.steps_per_epoch = math.ceil(len(self.data.train_loader) / cfg.train.grad_accum_steps)
        optimizer, scheduler = build_optimizer(
            model, cfg.train, self.lr, self.steps_per_epoch * cfg.train.epochs, groups(self.lr) if groups else None
        )
        self.model, self.optimizer, self.train_loader, self.val_loader, self.scheduler = acc.prepare(
            model, optimizer, self.data.train_loader, self.data.val_loader, scheduler
        )

    # ------------------------------------------------------------------------------------------ checkpoint
    def save_state(self, epoch: int, step_in_epoch: int) -> None:
        """Resume state of all ranks with the trainer's progress (:func:`expr.training.checkpoint.save_progress`)."""
        self.progress.epoch, self.progress.step_in_epoch = epoch, step_in_epoch
        save_progress(self.accelerator, self.run_dir, self.progress, self.cfg.train.keep_last_states)

    def non_finite(self, step: int, value: float) -> str:
        """What a non-finite training loss at ``step`` comes from: the store's first non-finite feature, if any."""
        bad = self.store.first_non_finite()
        if bad:
            return f"the training loss is not finite at step {step}: {bad}; the store is damaged, prepare it again"
        return (f"the training loss is not finite at step {step} although every feature is finite: training diverged; "
                f"lower train.lr (now {self.lr:g}) or set train.max_grad_norm")  # fmt: skip

    def save_config(self) -> None:
        """``config.yaml``: the resolved config (written once a resumed run's state has loaded, never before)."""
        self.cfg.save(self.run_dir / "config.yaml")

    def _write_summary(self) -> None:
        """``final.json``: best result, process layout, and a parameter checksum from every rank (they must agree)."""
        acc = self.accelerator
        checksums = param_checksums(acc, self.model)
        if acc.is_main_process:
            if len(set(checksums)) > 1:
                logger.warning("parameters differ between ranks: %s", checksums)
            coverage = self.unit.target_coverage()
            summary = {
                "best": self.progress.best,
                # labelled training frames that were a window's label frame at least once (per task when several)
                "target_coverage": coverage["expr"] if list(coverage) == ["expr"] else coverage,
                "global_step": self.progress.global_step,
                "fp16_skipped_steps": self.progress.skipped_steps,
                "fp16_loss_scale": loss_scale(acc, self.optimizer),  # None without fp16 loss scaling
                "num_processes": acc.num_processes,
                "effective_batch": self.cfg.train.batch_size * acc.num_processes * self.cfg.train.grad_accum_steps,
                "lr": self.lr,
                "final_lr": float(self.scheduler.get_last_lr()[0]),
                "param_checksum_per_rank": checksums,
            }
            write_text(self.run_dir / "final.json", json.dumps(summary, indent=2))
            shares = ", ".join(f"{task} {share:.1%}" for task, share in coverage.items())
            logger.info("training targets: %s of the labelled training frames were a target at least once", shares)

    # ------------------------------------------------------------------------------------------- training
    def train_epoch(self, epoch: int) -> EpochEnd:
        """One epoch (or its rest, after a resume); how it ended (``train.stop_after_steps`` may end it early)."""
        from tqdm.auto import tqdm

        cfg, acc, p = self.cfg, self.accelerator, self.progress
        self.model.train()
        skip = self.skip_steps if epoch == self.start_epoch else 0
        loader = (
            acc.skip_first_batches(self.train_loader, skip * cfg.train.grad_accum_steps) if skip else self.train_loader
        )
        # Both: accelerate re-applies the prepared loader's own iteration counter (0 in a resumed process) to the
        # sampler on every __iter__ where it can reach it; under DDP the skipping loader wraps the sampler one
        # level deeper than accelerate's set_epoch looks, so ours is set directly as well.
        loader.set_epoch(epoch)
        self.data.sampler.set_epoch(epoch)
        if not skip:
            p.epoch_sums = [0.0, 0.0]
        step_in_epoch = skip
        desc = f"epoch {epoch + 1}/{cfg.train.epochs}"
        quiet = not acc.is_main_process
        bar = tqdm(total=self.steps_per_epoch, initial=skip, desc=desc, disable=quiet, leave=False, dynamic_ncols=True)
        for batch in loader:
            with acc.accumulate(self.model):
                losses = self.unit.loss(batch)
                acc.backward(losses["loss"])
                if acc.sync_gradients and cfg.train.max_grad_norm:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.train.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
            n = batch["label"].shape[0]
            value = float(losses["loss"].detach())
            p_bad = self._non_finite_steps = (self._non_finite_steps + 1) if not math.isfinite(value) else 0
            # fp16: a loss overflow is the scaler's to skip, unless it never ends (NaN features under fp16)
            stop = p_bad >= (FP16_NON_FINITE_STEPS if acc.mixed_precision == "fp16" else 1)
            if acc.num_processes > 1:  # every process stops at the same step, none waits in the next all-reduce
                stop = bool(acc.reduce(torch.tensor(float(stop), device=acc.device), reduction="sum").item())
            if stop:
                raise NonFiniteError(self.non_finite(p.global_step + 1, value))
            p.epoch_sums[0] += value * n
            p.epoch_sums[1] += n
            if not acc.sync_gradients:
                continue
            p.global_step += 1
            p.skipped_steps += bool(getattr(self.optimizer, "step_was_skipped", False))
            step_in_epoch += 1
            bar.update(1)
            if p.global_step % cfg.train.log_every_steps == 0:
                values = {f"train/{k}": float(v.detach()) for k, v in losses.items()}
                values.update({"train/lr": self.scheduler.get_last_lr()[0], "train/skipped_steps": p.skipped_steps})
                acc.log(values, step=p.global_step)
                bar.set_postfix(loss=f"{values['train/loss']:.3f}")
            every = cfg.train.checkpoint_every_steps
            if every and p.global_step % every == 0 and step_in_epoch < self.steps_per_epoch:
                self.save_state(epoch, step_in_epoch)
            if cfg.train.stop_after_steps and p.global_step >= cfg.train.stop_after_steps:
                bar.close()
                if step_in_epoch < self.steps_per_epoch:
                    self.save_state(epoch, step_in_epoch)
                    logger.info("stopped after %d steps; resume with --resume %s", p.global_step, self.run_dir)
                    return EpochEnd.STOPPED
                return EpochEnd.LAST  # stopped on the epoch's last step: finish the epoch, then stop
        bar.close()
        return EpochEnd.DONE

    def close(self) -> None:
        """Let go of the run directory (its lock); :meth:`fit` does this when it returns."""
        if self.lock is not None:
            self.lock.release()

    def fit(self) -> dict[str, Any]:
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> dict[str, Any]:
        cfg, acc, p = self.cfg, self.accelerator, self.progress
        stopped = False
        for epoch in range(self.start_epoch, cfg.train.epochs):
            t0 = time.time()
            outcome = self.train_epoch(epoch)
            if outcome is EpochEnd.STOPPED:  # its state is saved, nothing to validate
                stopped = True
                break
            totals = acc.reduce(torch.tensor(p.epoch_sums, device=acc.device, dtype=torch.float64), reduction="sum")
            metrics = {
                "epoch": epoch + 1,
                "step": p.global_step,
                "train/loss": float(totals[0] / totals[1].clamp(min=1)),
            }
            metrics.update(self.unit.evaluate())
            metrics["time/epoch_s"] = round(time.time() - t0, 2)
            p.history.append(metrics)
            key = selection_metric(cfg)
            same = p.best.get("metric", "val/macro_f1") == key  # a resume that changed train.select starts afresh
            best = p.best.get("score", p.best["macro_f1"]) if same else -math.inf
            improved = metrics[key] > best
            if improved:
                p.best = {"macro_f1": metrics.get("val/macro_f1", float("nan")), "epoch": epoch + 1}
                if key != "val/macro_f1":
                    p.best.update({"score": metrics[key], "metric": key})
                self.unit.save_best(epoch + 1, metrics)
            if acc.is_main_process:
                with open(self.run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(metrics) + "\n")
            acc.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=p.global_step)
            logger.info("%s", self.unit.epoch_line(metrics, improved))
            self.save_state(epoch, self.steps_per_epoch)
            if outcome is EpochEnd.LAST:
                stopped = True
                break
            if self.on_epoch_end is not None and agree(
                acc, bool(self.on_epoch_end(epoch + 1, metrics)) if acc.is_main_process else None
            ):
                stopped = True
                break
        self._write_summary()
        # Not acc.end_training(): it also destroys the process group, and a multi-process sweep worker trains many
        # runs in one group. The entry points tear the group down when they leave.
        for tracker in acc.trackers:
            tracker.finish()
        return {
            "run_dir": str(self.run_dir),
            "best_macro_f1": p.best["macro_f1"],
            "best_epoch": p.best["epoch"],
            "best_metric": p.best.get("metric", "val/macro_f1"),
            "best_score": p.best.get("score", p.best["macro_f1"]),
            "history": p.history,
            "stopped": stopped,
            "completed": not stopped and len(p.history) == cfg.train.epochs,
        }


def run(cfg: Config, resume_dir: str | None = None, on_epoch_end: EpochCallback | None = None) -> dict[str, Any]:
    """Train with ``cfg`` (or continue ``resume_dir``) and return the result dict."""
    return Trainer(cfg, resume_dir=resume_dir, on_epoch_end=on_epoch_end).fit()
