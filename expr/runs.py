"""Run directories: their layout, and loading what a finished run left.

    RUN_DIR/
      config.yaml            the resolved config (every command that reads the run starts here)
      metrics.jsonl          one row per epoch
      final.json             best result, process layout, per-rank parameter checksums
      best/                  model.safetensors (the best epoch's head), head.json, val_frame_probs.npz
      states/                resume states (accelerate), latest.json names the newest
      eval/SPLIT/            ``expr evaluate`` reports

An exported folder (``expr export``) holds config.json + model.safetensors + README.md; :func:`load_head` reads both.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from expr.atomic import atomic_path, write_text
from expr.checkpoint import save_head
from expr.config import Config, load_yaml
from expr.models.fusion import FusionHead

EXPORT_FORMAT = 1


class RunError(RuntimeError):
    """A run directory or exported head that cannot be read; the message names it."""


def new_run_dir() -> str:
    """A fresh ``runs/<date>-<time>[-n]`` (the default ``train.output_dir``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / stamp
    n = 1
    while path.exists():
        path = Path("runs") / f"{stamp}-{n}"
        n += 1
    return str(path)


def write_best(run_dir: Path, state: dict[str, torch.Tensor], info: dict[str, Any], rows, probs, labels) -> None:
    """``best/``: the head (head-only safetensors: no optimizer, no backbones), ``head.json`` (``info``) and the
    epoch's validation frame probabilities (post-processing can be tuned without retraining), each atomically."""
    best = Path(run_dir) / "best"
    save_head(state, best / "model.safetensors")
    write_text(best / "head.json", json.dumps(info, indent=2))
    with atomic_path(best / "val_frame_probs.npz") as tmp:
        np.savez(tmp, rows=rows, probs=probs.astype(np.float16), labels=labels)


def build_head(cfg: Config, weights: Path) -> torch.nn.Module:
    """The head of ``cfg`` with the safetensors ``weights`` (eval mode, CPU)."""
    model = FusionHead(cfg.model, cfg.num_classes)
    model.load_state_dict(load_file(str(weights)))
    return model.eval()


def load_run(run_dir: str | Path) -> tuple[Config, torch.nn.Module]:
    """The run's config and its best head (eval mode, CPU)."""
    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / "config.yaml", run_dir / "best" / "model.safetensors"
    if not cfg_path.is_file():
        raise RunError(f"{run_dir}: not a run directory ({cfg_path.name} is missing)")
    if not weights.is_file():
        raise RunError(f"{run_dir}: no trained head yet ({weights} is missing; it is written after an epoch)")
    cfg = Config.from_dict(load_yaml(cfg_path), str(cfg_path))
    return cfg, build_head(cfg, weights)


def load_head(path: str | Path, device: str = "cpu"):
    """(FusionHead in eval mode, info dict) from an exported folder (``config.json``) or a run directory."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        info = json.loads((path / "config.json").read_text())
        if info.get("expr_export_format") != EXPORT_FORMAT:
            raise RunError(f"{path}: not an expr export (config.json has no expr_export_format {EXPORT_FORMAT})")
        cfg = Config.from_dict(info["config"], str(path / "config.json"))
        weights = path / "model.safetensors"
    elif (path / "config.yaml").is_file():
        cfg, model = load_run(path)
        return model.to(device), run_info(path, cfg)
    else:
        raise RunError(f"{path}: neither an exported model (config.json + model.safetensors) nor a run directory")
    info["cfg"] = cfg
    return build_head(cfg, weights).to(device), info


def run_info(run_dir: Path, cfg) -> dict[str, Any]:
    """What a user of the head needs to know, from a run directory."""
    head = run_dir / "best" / "head.json"
    best = json.loads(head.read_text()) if head.is_file() else {}
    store = best.get("store", {})
    return {
        "expr_export_format": EXPORT_FORMAT,
        "classes": list(cfg.data.classes),
        "prompt_template": cfg.loss.prompt_template,
        "window": cfg.data.window,
        "eval_stride": cfg.data.resolved_eval_stride(),
        "smoothing": {"method": cfg.eval.smoothing, "width": cfg.eval.smoothing_width},
        "backbones": store.get("backbones")
        or {
            "clip": cfg.backbones.clip,
            "clip_pretrained": cfg.backbones.clip_pretrained,
            "wav2vec2": cfg.backbones.wav2vec2,
        },
        "features": {"visual_dim": cfg.model.visual_dim, "audio_dim": cfg.model.audio_dim, "audio_rate": 50.0},
        "validation": {"macro_f1": best.get("val/macro_f1"), "epoch": best.get("epoch")},
        "trained_on": {"store": store.get("path"), "source": store.get("source")},
        "config": cfg.to_dict(),
        "cfg": cfg,
    }
