"""Checkpoints: resume states of a run (every rank's model, optimizer, scheduler, RNG and loader positions, plus the
trainer's progress) and head export, one safetensors file of the trainable head (never the frozen backbones).

``RUN_DIR/states/stepNNNNNNNN/`` is written to a temporary folder by all ranks and renamed by the main process;
``states/latest.json`` then names it, so a kill at any moment leaves the previous state intact.

A resume state under ``RUN_DIR/states/`` is what ``accelerate.save_state`` wrote: ``model.safetensors`` for
single-process and DDP runs, or a DeepSpeed checkpoint (``pytorch_model/``, ZeRO shards of every rank) under
DeepSpeed. ``expr export-head STATE_DIR --out head.safetensors`` turns either into one fp32 file that
:class:`expr.models.fusion.FusionHead` loads with ``load_state_dict``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from expr.atomic import atomic_path, write_text
from expr.config import ConfigError
from expr.features.tuning import trainable_keys

logger = logging.getLogger("expr.training.checkpoint")


class CheckpointError(ValueError):
    """A state folder that holds no head weights; the message names the folder."""


@dataclass
class Progress:
    """Where a run stands: saved with every resume state (``progress.json``) and restored by ``--resume``."""

    epoch: int = 0
    """The epoch in progress (0-based)."""
    step_in_epoch: int = 0
    """Optimizer steps done in it."""
    global_step: int = 0
    """Optimizer steps done in the run."""
    skipped_steps: int = 0
    """Optimizer steps skipped by fp16 loss scaling (overflow)."""
    best: dict[str, Any] = field(default_factory=lambda: {"macro_f1": -1.0, "epoch": -1})
    """The best validation frame macro-F1 so far and its epoch (1-based)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Every finished epoch's metrics."""
    epoch_sums: list[float] = field(default_factory=lambda: [0.0, 0.0])
    """This process's (sum of window losses, windows) in the epoch in progress."""


def save_progress(acc, run_dir: Path, progress: Progress, keep_last: int) -> None:
    """A resume state of every rank with ``progress`` (each rank's ``epoch_sums`` gathered). Called by all ranks."""
    from accelerate.utils import gather_object

    saved = {k: v for k, v in dataclasses.asdict(progress).items() if k != "epoch_sums"}
    saved["epoch_sums_per_rank"] = gather_object([progress.epoch_sums])
    save_state(acc, run_dir / "states", f"step{progress.global_step:08d}", saved, keep_last)


def resume_progress(acc, run_dir: Path, steps_per_epoch: int) -> Progress:
    """Load the newest resume state of ``run_dir`` into ``acc``; the progress points at the next step to take (the
    next epoch's first when the state was saved at an epoch's end). A state that does not load (damaged, cut short)
    is skipped for the next older kept one, with a warning, and renamed ``.damaged-stepN`` so that it is neither
    resumed nor counted among the kept states again. Called by all ranks; every rank checks its own files first and
    they load (a collective under DeepSpeed) only when all of them passed."""
    from accelerate.utils import gather_object

    candidates = kept_states(run_dir / "states", run_dir)
    if not candidates:
        raise ConfigError(f"--resume {run_dir}: no saved state found (no states/step* folder)")

    def agreed(error: str | None) -> list[str]:
        return [e for e in gather_object([error]) if e]  # every rank moves on together

    for i, state in enumerate(candidates):
        error, progress = None, None
        try:
            saved = json.loads((state / "progress.json").read_text())
            sums = saved.pop("epoch_sums_per_rank")
            if len(sums) != acc.num_processes:  # before load_state, which fails obscurely on a mismatch
                raise ConfigError(
                    f"--resume {run_dir}: the state was saved by {len(sums)} processes, this launch has "
                    f"{acc.num_processes}; resume with the same number of processes"
                )
            _check_random_state(state / f"random_states_{acc.process_index}.pkl")
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged state fails in many ways (JSON, safetensors, pickle)
            error = _describe(e)
        errors = agreed(error)
        if not errors:  # every rank's own files are sound: load together
            try:
                acc.load_state(str(state), **_partial_load(acc))
                progress = Progress(**saved, epoch_sums=list(sums[acc.process_index]))
            except Exception as e:  # noqa: BLE001
                error = _describe(e)
            errors = agreed(error)
        if not errors:
            break
        if i + 1 == len(candidates):
            raise CheckpointError(f"--resume {run_dir}: no kept state loads (the oldest, {state.name}: {errors[0]})")
        logger.warning("resume state %s does not load (%s): resuming from the older %s", state, errors[0],
                       candidates[i + 1].name)  # fmt: skip
        if acc.is_main_process and state.is_dir():  # out of the kept states: never resumed or counted again
            os.replace(state, state.with_name(f".damaged-{state.name}"))
    if progress.step_in_epoch >= steps_per_epoch:  # saved at the end of an epoch
        progress.epoch, progress.step_in_epoch, progress.epoch_sums = progress.epoch + 1, 0, [0.0, 0.0]
    return progress


def _describe(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _check_random_state(path: Path) -> None:
    """This process's random state loads as accelerate loads it: accelerate swallows a missing or refused one and
    goes on without it, and the resumed run would no longer be the same run."""
    from accelerate.utils import load

    states = load(path)  # missing: FileNotFoundError; a pickle torch refuses to load: UnpicklingError
    missing = {"random_state", "numpy_random_seed", "torch_manual_seed"} - set(states)
    if missing:
        raise ValueError(f"{path.name} lacks {', '.join(sorted(missing))}")


def save_state(acc, state_dir: Path, name: str, progress: dict[str, Any], keep_last: int) -> None:
    """Save every rank's accelerate state and the main process's ``progress`` (JSON) as ``state_dir/name``, point
    ``latest.json`` at it and keep the newest ``keep_last`` states. Called by all processes."""
    final, tmp = state_dir / name, state_dir / f".{name}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    handle = acc.register_save_state_pre_hook(_keep_trainable(acc))
    try:
        partial = _deepspeed(acc) and any(_pretrained(acc, m) for m in acc._models)
        acc.save_state(str(tmp), **({"exclude_frozen_parameters": True} if partial else {}))
    finally:
        handle.remove()
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / "progress.json").write_text(json.dumps(progress))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_text(state_dir / "latest.json", json.dumps({"state": name}))
        kept = sorted(p for p in state_dir.glob("step*") if p.is_dir())
        for old in kept[: max(0, len(kept) - keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _deepspeed(acc) -> bool:
    return acc.state.deepspeed_plugin is not None


def _pretrained(acc, model) -> bool:
    return bool(getattr(acc.unwrap_model(model), "pretrained", ()))


def _keep_trainable(acc):
    """A save-state hook: models with pretrained parts (a tuned encoder) keep only what trains
    (:func:`expr.features.tuning.trainable_keys`); the base weights are reloaded from their source on resume."""

    def hook(models, weights, output_dir):
        for i, (model, state) in enumerate(zip(models, weights, strict=False)):
            if _pretrained(acc, model):
                keep = trainable_keys(acc.unwrap_model(model))
                weights[i] = {k: v for k, v in state.items() if k.removeprefix("module.") in keep}

    return hook


def _partial_load(acc) -> dict[str, Any]:
    """``load_state`` options for states that hold only the trainable part of a model (see :func:`_keep_trainable`)."""
    if not any(_pretrained(acc, m) for m in acc._models):
        return {}
    return {"load_module_strict": False} if _deepspeed(acc) else {"strict": False}


def kept_states(state_dir: Path, run_dir: Path) -> list[Path]:
    """The run's kept resume states, newest first: the one ``latest.json`` names, then the other ``step*`` folders.
    ``latest.json`` may only name a folder inside ``states/``; an unreadable one is passed over for the folders."""
    latest = state_dir / "latest.json"
    folders = sorted((p for p in state_dir.glob("step*") if p.is_dir()), reverse=True)
    if not latest.is_file() and not folders:
        raise ConfigError(f"--resume {run_dir}: no saved state found ({latest} is missing)")
    named = None
    try:
        named = json.loads(latest.read_text())["state"]
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("%s is unreadable: resuming from the newest kept state folder", latest)
    if named is not None:
        if not isinstance(named, str) or Path(named).name != named or named in (".", "..") or not named.strip():
            raise ConfigError(
                f"--resume {run_dir}: {latest} names {named!r}, which is not a state folder of this run "
                f"(states/stepNNNNNNNN); delete {latest} to resume from the newest kept state"
            )
        named_folder = [state_dir / named] if (state_dir / named).is_dir() else []  # set aside as damaged: skip
        folders = named_folder + [p for p in folders if p.name != named]
    return folders


def head_state_dict(state_dir: str | Path) -> dict[str, torch.Tensor]:
    """The head's fp32 weights from a resume state folder (plain or DeepSpeed ZeRO stage 1-3)."""
    state_dir = Path(state_dir)
    plain = state_dir / "model.safetensors"
    if plain.is_file():
        from safetensors.torch import load_file

        return load_file(str(plain))
    latest = state_dir / "latest"
    if latest.is_file():  # a DeepSpeed checkpoint: gather the ZeRO partitions of all ranks on the CPU
        from expr.training.distributed import use_cpu_deepspeed

        use_cpu_deepspeed()  # DeepSpeed picks its accelerator when first imported
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        tag = latest.read_text().strip()
        return dict(get_fp32_state_dict_from_zero_checkpoint(str(state_dir), tag=tag))
    raise CheckpointError(
        f"{state_dir}: no head weights here (expected model.safetensors or a DeepSpeed checkpoint with a "
        f"'latest' file); pass a folder from RUN_DIR/states/"
    )


def save_head(state: dict[str, torch.Tensor], out: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write head weights to ``out`` (safetensors, on the CPU) through a temporary file and a rename, so a crash
    never leaves a half-written file under the final name."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    out = Path(out)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})
    return out


def export_head(state_dir: str | Path, out: str | Path) -> Path:
    """Write the head of ``state_dir`` to ``out`` as fp32 safetensors (of an online run whose encoders trained: its
    ``head.*`` part; the encoders' weights are in ``best/encoders.safetensors``)."""
    state = head_state_dict(state_dir)
    if state and all(k.startswith(("encoder.", "classifier.")) for k in state):  # FrameClassifier's keys only
        raise CheckpointError(
            f"{state_dir}: a state of an `expr finetune` run (a tuned frame encoder, no fusion head); export the run "
            f"with `expr export RUN_DIR --out DIR`"
        )
    if any(k.startswith("head.") for k in state):
        state = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
    state = {k: v.float() for k, v in state.items()}
    return save_head(state, out, {"source": str(Path(state_dir).resolve())})
