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

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from expr.atomic import atomic_path, write_text
from expr.config import ConfigError


class CheckpointError(ValueError):
    """A state folder that holds no head weights; the message names the folder."""


def save_state(acc, state_dir: Path, name: str, progress: dict[str, Any], keep_last: int) -> None:
    """Save every rank's accelerate state and the main process's ``progress`` (JSON) as ``state_dir/name``, point
    ``latest.json`` at it and keep the newest ``keep_last`` states. Called by all processes."""
    final, tmp = state_dir / name, state_dir / f".{name}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
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


def latest_state(state_dir: Path, run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """(the newest state folder, its progress) of a run, for ``--resume``."""
    latest = state_dir / "latest.json"
    if not latest.is_file():
        raise ConfigError(f"--resume {run_dir}: no saved state found ({latest} is missing)")
    state = state_dir / json.loads(latest.read_text())["state"]
    return state, json.loads((state / "progress.json").read_text())


def head_state_dict(state_dir: str | Path) -> dict[str, torch.Tensor]:
    """The head's fp32 weights from a resume state folder (plain or DeepSpeed ZeRO stage 1-3)."""
    state_dir = Path(state_dir)
    plain = state_dir / "model.safetensors"
    if plain.is_file():
        from safetensors.torch import load_file

        return load_file(str(plain))
    latest = state_dir / "latest"
    if latest.is_file():  # a DeepSpeed checkpoint: gather the ZeRO partitions of all ranks on the CPU
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
    """Write the head of ``state_dir`` to ``out`` as fp32 safetensors."""
    state = {k: v.float() for k, v in head_state_dict(state_dir).items()}
    return save_head(state, out, {"source": str(Path(state_dir).resolve())})
