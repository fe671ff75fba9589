"""What training writes into a run directory beside its states: a fresh directory's name, and ``best/`` (the best
head, its ``head.json`` and the epoch's validation outputs). Reading a finished run is :mod:`expr.runs`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from expr.atomic import atomic_path, write_text
from expr.training.checkpoint import save_head

TUNED_ENCODERS = "encoders.safetensors"
"""Beside the head of an online run whose encoders trained (``best/``, and its export): their trained weights only
(LoRA adapters or unfrozen blocks, under :class:`~expr.models.online.OnlineEncoders`' keys)."""


def new_run_dir() -> str:
    """A fresh ``runs/<date>-<time>[-n]`` (the default ``train.output_dir``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / stamp
    n = 1
    while path.exists():
        path = Path("runs") / f"{stamp}-{n}"
        n += 1
    return str(path)


def write_best(run_dir: Path, state: dict[str, torch.Tensor], info: dict[str, Any], rows, probs, labels,
               va=None) -> None:  # fmt: skip
    """``best/``: the head (head-only safetensors: no optimizer, no backbones), ``head.json`` (``info``) and the
    epoch's validation frame probabilities (post-processing can be tuned without retraining), each atomically;
    ``va``: (frame rows, [N, 2] valence-arousal, [N, 2] targets) of the VA validation videos, saved as
    ``val_frame_va.npz``."""
    best = Path(run_dir) / "best"
    save_head(state, best / "model.safetensors")
    write_text(best / "head.json", json.dumps(info, indent=2))
    with atomic_path(best / "val_frame_probs.npz") as tmp:
        np.savez(tmp, rows=rows, probs=probs.astype(np.float32), labels=labels)  # fp16 flips near-ties
    if va is not None:
        with atomic_path(best / "val_frame_va.npz") as tmp:
            np.savez(tmp, rows=va[0], va=np.asarray(va[1], np.float32), targets=np.asarray(va[2], np.float32))
