"""Checks of a whole config: sane bounds, cross-field rules, the metric that selects a run's best epoch, and what a
resume may change."""

from __future__ import annotations

from typing import TYPE_CHECKING

from expr.config.sections import ConfigError
from expr.tasks import MTL_TASKS, P_MTL, TASK_SCORES, TASKS

if TYPE_CHECKING:
    from expr.config.tree import Config


def selection_metric(cfg: Config) -> str:
    """The validation metric that picks a run's best epoch (``train.select``; ``auto``: the only task's score, or
    ``val/score`` when several tasks train)."""
    if cfg.train.select != "auto":
        return cfg.train.select
    if len(cfg.train.tasks) == 1:
        return TASK_SCORES[cfg.train.tasks[0]]
    return P_MTL if scores_p_mtl(cfg) else "val/score"


def scores_p_mtl(cfg: Config) -> bool:
    """Whether validation logs the multi-task challenge's score: the three tasks on its split."""
    return cfg.data.split_source == "mtl" and set(cfg.train.tasks) == set(MTL_TASKS)


# Sane bounds: far beyond any model or run expr is for, far below what would exhaust a machine while building it. A
# run folder's config.yaml (or an export's config.json) is checked against them before anything is built.
MAX_WIDTH, MAX_WINDOW, MAX_BLOCKS, MAX_BATCH, MAX_EPOCHS = 16_384, 10_000, 64, 65_536, 100_000


def _bounds(cfg: Config) -> list[tuple[bool, str, str]]:
    m = cfg.model
    widths = [("model.dim", m.dim), ("model.visual_dim", m.visual_dim), ("model.audio_dim", m.audio_dim),
              ("model.text_dim", m.text_dim)] + [("model.mlp_hidden", w) for w in m.mlp_hidden]  # fmt: skip
    checks = [(1 <= w <= MAX_WIDTH, key, f"must be in 1 .. {MAX_WIDTH:,} (it is {w:,})") for key, w in widths]
    return checks + [
        (cfg.data.window <= MAX_WINDOW, "data.window", f"must be at most {MAX_WINDOW:,} frames"),
        (m.tcn_blocks <= MAX_BLOCKS, "model.tcn_blocks", f"must be at most {MAX_BLOCKS}"),
        (1 <= m.tcn_kernel <= MAX_BLOCKS, "model.tcn_kernel", f"must be in 1 .. {MAX_BLOCKS}"),
        (1 <= m.heads <= MAX_BLOCKS, "model.heads", f"must be in 1 .. {MAX_BLOCKS}"),
        (cfg.train.batch_size <= MAX_BATCH, "train.batch_size", f"must be at most {MAX_BATCH:,}"),
        (cfg.train.epochs <= MAX_EPOCHS, "train.epochs", f"must be at most {MAX_EPOCHS:,}"),
        (cfg.finetune.lora_rank <= MAX_WIDTH, "finetune.lora_rank", f"must be at most {MAX_WIDTH:,}"),
    ]


def _task_checks(cfg: Config) -> list[tuple[bool, str, str]]:
    """The checks of the trained tasks, their weights, the metric that selects the best epoch and the split source."""
    return [
        (
            len(cfg.train.tasks) > 0 and set(cfg.train.tasks) <= set(TASKS),
            "train.tasks",
            f"must name one or more of {', '.join(TASKS)}",
        ),  # fmt: skip
        (len(set(cfg.train.tasks)) == len(cfg.train.tasks), "train.tasks", "names a task twice"),
        (
            cfg.train.select in ("auto", "val/score", *(TASK_SCORES[t] for t in cfg.train.tasks if t in TASK_SCORES))
            or (cfg.train.select == P_MTL and scores_p_mtl(cfg)),
            "train.select",
            f"must be auto, val/score or the score of a trained task ({cfg.train.tasks}); val/p_mtl needs "
            f"data.split_source mtl and train.tasks expr,va,au",
        ),  # fmt: skip
        (
            cfg.data.split_source == "tasks" or cfg.data.folds == 0,
            "data.split_source",
            "mtl is the challenge's own split: it cannot be re-split into folds (data.folds 0)",
        ),  # fmt: skip
        (
            len(cfg.loss.task_weights) in (0, len(cfg.train.tasks)),
            "loss.task_weights",
            "needs one weight per task of train.tasks",
        ),  # fmt: skip
        (all(w >= 0 for w in cfg.loss.task_weights), "loss.task_weights", "must be 0 or more"),
        (
            cfg.loss.task_balance == "fixed" or len(cfg.train.tasks) >= 2,
            "loss.task_balance",
            "uncertainty weighs several tasks against each other: train two or more (train.tasks)",
        ),  # fmt: skip
    ]


def validate(cfg: Config) -> None:
    """Sane bounds (``_bounds``, first: the other checks divide by some of them), then cross-field checks that a type
    alone cannot express."""
    for ok, key, msg in _bounds(cfg):
        if not ok:
            raise ConfigError(f"config key '{key}': {msg}")
    checks = [
        (cfg.data.window >= 1, "data.window", "must be at least 1"),
        (cfg.data.stride is None or cfg.data.stride >= 1, "data.stride", "must be at least 1"),
        (cfg.data.eval_stride is None or cfg.data.eval_stride >= 1, "data.eval_stride", "must be at least 1"),
        (
            cfg.data.eval_stride is None or cfg.data.eval_stride <= cfg.data.window,
            "data.eval_stride",
            "must not exceed data.window (every validation frame must lie in a window)",
        ),
        (cfg.eval.smoothing_width >= 0, "eval.smoothing_width", "must be 0 or more"),
        (cfg.eval.va_smoothing_width >= 0, "eval.va_smoothing_width", "must be 0 or more"),
        (
            not cfg.eval.flip or cfg.data.mode == "online",
            "eval.flip",
            "is for online mode (the crops pass the encoders at prediction); cached features take their test-time "
            "views at extraction: an encoder spec's flip=1",
        ),
        (cfg.data.folds == 0 or cfg.data.folds >= 2, "data.folds", "must be 0 (no cross-validation) or at least 2"),
        (cfg.data.folds == 0 or 0 <= cfg.data.fold < cfg.data.folds, "data.fold", "must be in 0 .. data.folds - 1"),
        (
            cfg.data.folds == 0 or cfg.train.tasks == ("expr",),
            "data.folds",
            "re-splits the expression task's videos only: train VA or AU without folds",
        ),  # fmt: skip
        (len(cfg.data.classes) >= 2, "data.classes", "needs at least 2 classes"),
        (cfg.model.tcn_blocks >= 0, "model.tcn_blocks", "must be 0 or more"),
        (cfg.model.dim % cfg.model.heads == 0, "model.heads", f"must divide model.dim ({cfg.model.dim})"),
        (0.0 <= cfg.model.dropout < 1.0, "model.dropout", "must be in [0, 1)"),
        (0.0 <= cfg.model.mlp_dropout < 1.0, "model.mlp_dropout", "must be in [0, 1)"),
        (cfg.loss.contrastive_weight >= 0.0, "loss.contrastive_weight", "must be 0 or more"),
        ("{emotion}" in cfg.loss.prompt_template, "loss.prompt_template", "must contain '{emotion}'"),
        (cfg.train.lr > 0, "train.lr", "must be positive"),
        (cfg.train.epochs >= 1, "train.epochs", "must be at least 1"),
        (cfg.train.batch_size >= 1, "train.batch_size", "must be at least 1"),
        (cfg.train.grad_accum_steps >= 1, "train.grad_accum_steps", "must be at least 1"),
        (0.0 <= cfg.train.warmup_ratio < 1.0, "train.warmup_ratio", "must be in [0, 1)"),
        *_task_checks(cfg),
        (cfg.finetune.last_n >= 1, "finetune.last_n", "must be at least 1"),
        (cfg.finetune.lora_rank >= 1, "finetune.lora_rank", "must be at least 1"),
        (0.0 <= cfg.finetune.lora_dropout < 1.0, "finetune.lora_dropout", "must be in [0, 1)"),
        (0.0 < cfg.finetune.layer_decay <= 1.0, "finetune.layer_decay", "must be in (0, 1]"),
        (cfg.finetune.lr is None or cfg.finetune.lr > 0, "finetune.lr", "must be positive"),
        (cfg.finetune.frames_per_epoch >= 0, "finetune.frames_per_epoch", "must be 0 (all) or more"),
        (cfg.finetune.val_frames >= 0, "finetune.val_frames", "must be 0 (all) or more"),
        (cfg.predict.fps >= 0, "predict.fps", "must be 0 (every frame) or more"),
        (
            not cfg.predict.fps or cfg.data.mode == "cached",
            "predict.fps",
            "is for cached features (expr predict --realtime sets it): online mode encodes each window's crops as it "
            "reads them",
        ),
        (cfg.predict.detect_every >= 1, "predict.detect_every", "must be at least 1"),
        (0.0 < cfg.predict.detect_scale <= 1.0, "predict.detect_scale", "must be in (0, 1]"),
        (cfg.predict.audio_chunk >= 0, "predict.audio_chunk", "must be 0 (the encoder's 30 s chunks) or more"),
        (cfg.predict.audio_context >= 0, "predict.audio_context", "must be 0 or more"),
        (cfg.predict.stream_batch >= 1, "predict.stream_batch", "must be at least 1"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise ConfigError(f"config key '{key}': {msg}")


# What a resume may change: where the data is read from and how the run is run, logged and checkpointed. Everything
# else (the model's shapes, the data, the loss, the schedule, evaluation) is the run being continued.
RESUME_MAY_CHANGE = frozenset({
    "data.cache", "data.in_memory", "data.num_workers", "train.output_dir", "train.log_with", "train.log_every_steps",
    "train.checkpoint_every_steps", "train.keep_last_states", "train.cpu_threads", "train.stop_after_steps",
})  # fmt: skip


def resume_changes(saved: Config, new: Config) -> list[str]:
    """``key: old -> new`` for each setting a resume would change that a resumed run must keep (``RESUME_MAY_CHANGE``
    lists those it may change)."""
    old, now = saved.to_dict(), new.to_dict()
    return [
        f"{section}.{key}: {old[section].get(key)!r} -> {value!r}"
        for section, values in now.items()
        for key, value in values.items()
        if f"{section}.{key}" not in RESUME_MAY_CHANGE and old[section].get(key) != value
    ]
