"""Run directories: their layout, and loading what a finished run left.

    RUN_DIR/
      config.yaml            the resolved config (every command that reads the run starts here)
      metrics.jsonl          one row per epoch
      final.json             best result, process layout, per-rank parameter checksums
      best/                  model.safetensors (the best epoch's head), head.json, val_frame_probs.npz
      states/                resume states (accelerate), latest.json names the newest
      eval/SPLIT/            ``expr evaluate`` reports (and frame_probs.npz: raw frame probabilities)
      calibration.json       per-class decision offsets (``expr calibrate``), applied by evaluate, submit, predict

An exported folder (``expr export``) holds config.json + model.safetensors + README.md; :func:`load_head` reads both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from expr.config import Config, ConfigError, apply_dict, field_docs, load_yaml, validate
from expr.models.fusion import FusionHead
from expr.scoring.decision import Decision
from expr.training.rundir import TUNED_ENCODERS  # noqa: F401  (read beside a run's head)

EXPORT_FORMAT = 1
# What a command reading a finished run (evaluate, submit, predict) may change in the run's config: where its data is
# and how window predictions become frame labels, and which frames are detected and encoded (predict.*, the speed
# choices of live prediction). Every other key shaped the trained head or its training.
RUN_OVERRIDES = (
    "data.cache",
    "data.eval_stride",
    "data.in_memory",
    "data.num_workers",
    "eval.smoothing",
    "eval.smoothing_width",
    "eval.va_smoothing",
    "eval.va_smoothing_width",
    "eval.calibrate",
    "eval.flip",
    "predict.fps",
    "predict.detect_every",
    "predict.detect_scale",
    "predict.audio_chunk",
    "predict.audio_context",
    "predict.stream_batch",
    "predict.precision",
)


class RunError(RuntimeError):
    """A run directory or exported head that cannot be read; the message names it."""


def build_head(cfg: Config, weights: Path) -> torch.nn.Module:
    """The head of ``cfg`` with the safetensors ``weights`` (eval mode, CPU)."""
    model = FusionHead(cfg.model, cfg.num_classes, cfg.train.tasks, cfg.loss.task_balance == "uncertainty")
    try:
        state = load_file(str(weights))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a cut or garbled file
        raise RunError(f"{weights}: damaged head weights ({type(e).__name__}: {str(e)[:160]}); export them again "
                       f"from a kept state (`expr export-head RUN_DIR/states/stepN --out {weights}`) or train "
                       f"again") from None  # fmt: skip
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise RunError(
            f"{weights}: these weights do not fit the head its config.yaml describes ({str(e)[:200]})"
        ) from None
    return model.eval()


def apply_run_overrides(cfg: Config, overrides: dict[str, Any] | None, source: str = "command line") -> Config:
    """``cfg`` (a finished run's) with ``overrides`` of :data:`RUN_OVERRIDES` keys applied and checked. A key that
    cannot take effect after training is an error naming it, never silently ignored."""
    overrides = dict(overrides or {})
    apply_dict(Config(), overrides, source)  # an unknown key (a typo) gets the config's own message and suggestions
    fixed = sorted(set(overrides) - set(RUN_OVERRIDES))
    if fixed:
        raise ConfigError(
            f"config key '{fixed[0]}' cannot change after training (it shaped the trained head or its training); "
            f"a command reading a run takes {', '.join('--' + k for k in RUN_OVERRIDES)}"
        )
    apply_dict(cfg, overrides, source)
    validate(cfg)
    return cfg


def run_options_help() -> str:
    """The ``--help`` lines of :data:`RUN_OVERRIDES`: option, type, docstring."""
    import textwrap

    docs = field_docs()
    lines = ["config overrides (the run's own values by default):"]
    for key in RUN_OVERRIDES:
        lines.append(f"  --{key} VALUE")
        lines += textwrap.wrap(docs.get(key, ""), 100, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def legacy_overrides(overrides, cache=None, stride=None, smoothing=None, width=None) -> dict[str, Any]:
    """``overrides`` plus the short options of ``expr evaluate`` / ``expr submit`` (``--cache``, ``--stride``,
    ``--smoothing``, ``--width``) as the config keys they set."""
    out = dict(overrides or {})
    short = {
        "data.cache": cache,
        "data.eval_stride": stride,
        "eval.smoothing": smoothing,
        "eval.smoothing_width": width,
    }
    out.update({k: v for k, v in short.items() if v is not None})
    return out


def load_run(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> tuple[Config, torch.nn.Module]:
    """The run's config (with ``overrides``, see :func:`apply_run_overrides`) and its best head (eval mode, CPU)."""
    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / "config.yaml", run_dir / "best" / "model.safetensors"
    if not cfg_path.is_file():
        raise RunError(f"{run_dir}: not a run directory ({cfg_path.name} is missing)")
    if (run_dir / "best" / "tuning.json").is_file():
        raise RunError(
            f"{run_dir} is an `expr finetune` run (a tuned frame encoder, no temporal head): add its features to a "
            f"store with `expr prepare ... --visual NAME=finetuned:{run_dir}` and train a head on them (`expr train "
            f"--data.visual NAME`)"
        )
    if not weights.is_file():
        raise RunError(f"{run_dir}: no trained head yet ({weights} is missing; it is written after an epoch)")
    cfg = Config.from_dict(load_yaml(cfg_path), str(cfg_path))
    return apply_run_overrides(cfg, overrides), build_head(cfg, weights)


def load_head(path: str | Path, device: str = "cpu", overrides: dict[str, Any] | None = None):
    """(FusionHead in eval mode, info dict) from an exported folder (``config.json``) or a run directory;
    ``info["cfg"]`` carries ``overrides`` (see :func:`apply_run_overrides`)."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        info = json.loads((path / "config.json").read_text())
        if info.get("expr_export_format") != EXPORT_FORMAT:
            raise RunError(f"{path}: not an expr export (config.json has no expr_export_format {EXPORT_FORMAT})")
        cfg = apply_run_overrides(Config.from_dict(info["config"], str(path / "config.json")), overrides)
        weights = path / "model.safetensors"
    elif (path / "config.yaml").is_file():
        cfg, model = load_run(path, overrides)
        return model.to(device), run_info(path, cfg)
    elif (path / ENSEMBLE).is_file():
        raise RunError(
            f"{path} is an ensemble folder: `expr ensemble` scores it (its report is under {path}/eval/SPLIT); "
            f"`expr submit`, `expr predict` and `expr calibrate` take it like a run"
        )
    else:
        raise RunError(f"{path}: neither an exported model (config.json + model.safetensors) nor a run directory")
    info["cfg"] = cfg
    return build_head(cfg, weights).to(device), info


def run_encoders(path: str | Path, cfg: Config, store, device):
    """The encoders an online-trained head runs on (``None`` for a cached-mode head), with the PIL preprocessing:
    the store's frozen CLIP and Wav2Vec2, tuned with the run's trained weights when its encoders trained
    (``finetune.method`` / ``finetune.audio_method``). ``path``: a run directory or an export."""
    if cfg.data.mode != "online":
        return None
    from expr.features.tuning import Tuning, tuned_keys
    from expr.models.online import store_encoders

    tuning = (Tuning.image(cfg.finetune), Tuning.audio(cfg.finetune))
    if not any(t.trains for t in tuning):
        return store_encoders(store, device)
    path = Path(path)
    weights = next((w for w in (path / "best" / TUNED_ENCODERS, path / TUNED_ENCODERS) if w.is_file()), None)
    if weights is None:
        raise RunError(f"{path}: its encoders trained, but their weights ({TUNED_ENCODERS}) are missing")
    encoders, transform = store_encoders(store, "cpu", tuning)
    state = load_file(str(weights))
    if set(state) != tuned_keys(encoders):
        raise RunError(f"{weights}: the weights do not fit the encoders tuned as the run's config says")
    encoders.load_state_dict(state, strict=False)
    return encoders.requires_grad_(False).to(device), transform


ENSEMBLE = "ensemble.json"
"""The file that makes a folder an ensemble of runs (``expr ensemble``): ``members`` [{run, weight}], ``classes``,
``smoothing`` {method, width} (the ensemble's own, applied to the weighted mean of its members' probabilities)."""
CALIBRATION = "calibration.json"
"""Beside a run's config (or in an ensemble or export folder): the decision calibration ``expr calibrate`` fitted,
``classes`` and ``offsets`` (one per class, added to the log-probabilities before smoothing)."""


def is_model_dir(path: str | Path) -> bool:
    """A run directory or an exported folder."""
    path = Path(path)
    return (path / "config.yaml").is_file() or (path / "config.json").is_file()


def ensemble_members(path: str | Path) -> list[tuple[str, float]] | None:
    """(run, weight) of every member when ``path`` is an ensemble folder, else None."""
    info = Path(path) / ENSEMBLE
    if not info.is_file():
        return None
    members = json.loads(info.read_text())["members"]
    missing = [m["run"] for m in members if not is_model_dir(m["run"])]
    if missing:
        raise RunError(f"{info}: member {missing[0]} is not a run directory or export (moved or deleted?)")
    return [(m["run"], float(m["weight"])) for m in members]


def load_offsets(path: str | Path, classes) -> tuple[float, ...] | None:
    """The calibration offsets recorded in folder ``path`` (None when it has none); classes must match."""
    file = Path(path) / CALIBRATION
    if not file.is_file():
        return None
    info = json.loads(file.read_text())
    if classes is not None and list(info.get("classes", [])) != list(classes):
        raise RunError(f"{file}: calibrated for classes {info.get('classes')}, not {list(classes)}")
    offsets = tuple(float(v) for v in info.get("offsets", []))
    if len(offsets) != len(info.get("classes", offsets)):
        raise RunError(f"{file}: {len(offsets)} offsets for {len(info['classes'])} classes; run `expr calibrate` again")
    return offsets


def run_decision(path: str | Path, cfg: Config) -> Decision:
    """How a run's (or export's) frame probabilities become labels: its calibration offsets (unless
    ``eval.calibrate`` is false) and ``eval.smoothing``."""
    offsets = load_offsets(path, cfg.data.classes) if cfg.eval.calibrate else None
    return Decision(offsets, cfg.eval.smoothing, cfg.eval.smoothing_width)


def ensemble_decision(path: str | Path, overrides: dict[str, Any] | None = None) -> Decision:
    """An ensemble folder's decision: its calibration and smoothing, with ``eval.smoothing``,
    ``eval.smoothing_width`` and ``eval.calibrate`` of ``overrides`` (parsed and checked as for a run)."""
    file = Path(path) / ENSEMBLE
    info = json.loads(file.read_text())
    if "smoothing" not in info:
        raise RunError(f"{file} predates ensembles that smooth their members' mean: run `expr ensemble` again")
    cfg = Config()
    cfg.eval.smoothing, cfg.eval.smoothing_width = info["smoothing"]["method"], int(info["smoothing"]["width"])
    cfg = apply_run_overrides(cfg, {k: v for k, v in (overrides or {}).items() if k.startswith("eval.")})
    offsets = load_offsets(path, info.get("classes")) if cfg.eval.calibrate else None
    return Decision(offsets, cfg.eval.smoothing, cfg.eval.smoothing_width)


def member_overrides(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """A member's overrides within an ensemble: the ensemble decides (calibration, smoothing), so its members give
    raw probabilities."""
    return {**(overrides or {}), "eval.smoothing": "none", "eval.smoothing_width": 0, "eval.calibrate": False}


def chosen_sets(store_meta: dict[str, Any], cfg) -> dict[str, dict[str, dict]]:
    """The feature sets a head was trained on (``data.visual`` / ``data.audio``, or the store's defaults), with the
    provenance its store recorded: ``{"visual": {name: info}, "audio": {name: info}}``."""
    sets = store_meta.get("sets") or {}
    default = store_meta.get("default_visual") or ["clip"]
    visual = cfg.data.visual.split(",") if cfg.data.visual else [default] if isinstance(default, str) else default
    audio = cfg.data.audio or store_meta.get("default_audio") or "wav2vec2"
    return {"visual": {n.strip(): sets.get(n.strip(), {}) for n in visual}, "audio": {audio: sets.get(audio, {})}}


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
        "feature_sets": chosen_sets(store, cfg),
        "validation": {"macro_f1": best.get("val/macro_f1"), "epoch": best.get("epoch")},
        "trained_on": {"store": store.get("path"), "source": store.get("source")},
        "config": cfg.to_dict(),
        "cfg": cfg,
    }


def kept_validation(run_dir: str | Path, task: str = "expr") -> dict[str, np.ndarray] | None:
    """What training kept of a run's best epoch's validation frames (``best/val_frame_probs.npz``; for ``task="va"``
    ``best/val_frame_va.npz``): ``rows``, ``outputs`` (EXPR probabilities or VA values) and ``labels`` (EXPR labels
    or VA targets); None when the run kept none. Read without loading the head (post-processing studies)."""
    path = Path(run_dir) / "best" / ("val_frame_va.npz" if task == "va" else "val_frame_probs.npz")
    if not path.is_file():
        return None
    saved = np.load(path)
    if task == "va":
        return {"rows": saved["rows"], "outputs": saved["va"], "labels": saved["targets"]}
    return {"rows": saved["rows"], "outputs": saved["probs"], "labels": saved["labels"]}
