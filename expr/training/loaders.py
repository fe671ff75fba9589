"""The data of a training run: its store (checked against the config), the training and validation windows, their
datasets (cached features, or face crops and audio for the frozen encoders in online mode) and loaders."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from expr.config import PRESETS, BackboneConfig, Config, ConfigError
from expr.data.online import OnlineWindowDataset, collate_online
from expr.data.source import open_store
from expr.data.store import video_of_rows
from expr.data.windows import EpochSampler, WindowDataset, collate_batch, load_or_build_windows
from expr.features.tuning import Tuning
from expr.models.online import store_encoders

logger = logging.getLogger("expr.training.loaders")


@dataclass
class RunData:
    store: Any
    train_set: torch.utils.data.Dataset
    val_set: torch.utils.data.Dataset
    sampler: EpochSampler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    encoders: Any = None  # online mode: the frozen encoders that turn crops and audio into features


def check_store(store, cfg: Config) -> None:
    """The store must have the config's classes and both training splits; the head's input widths follow the
    store's chosen feature sets (``model.visual_dim`` / ``audio_dim`` are set from them)."""
    path = store.path
    if list(store.classes) != list(cfg.data.classes):
        raise ConfigError(
            f"config key 'data.classes' {list(cfg.data.classes)} does not match the classes of "
            f"the feature store {path}: {store.classes}"
        )
    cfg.data.visual, cfg.data.audio = ",".join(store.visual_sets), store.audio_set  # recorded in the run's config
    for key in ("visual_dim", "audio_dim"):
        if getattr(cfg.model, key) != getattr(store, key):
            logger.info("model.%s: %d (the store's %s features)", key, getattr(store, key), key.split("_")[0])
            setattr(cfg.model, key, int(getattr(store, key)))
    recorded = store.meta.get("backbones", {})
    if "clip_pretrained" in recorded:  # a prepared store: its features (and prompts) come from the recorded encoders
        for key in ("clip", "clip_pretrained", "wav2vec2"):
            # Values a preset or the defaults give were not chosen by the user: only a chosen one can conflict.
            given = {getattr(BackboneConfig(), key)} | {
                p[f"backbones.{key}"] for p in PRESETS.values() if f"backbones.{key}" in p
            }
            ours, theirs = getattr(cfg.backbones, key), recorded.get(key)
            if theirs is not None and ours not in given and ours != theirs:
                raise ConfigError(
                    f"config key 'backbones.{key}' is {ours!r}, but the feature store {path} was made with "
                    f"{theirs!r}, and its features and prompt embeddings come from that: drop the override, or "
                    f"prepare a store with the other backbone (expr prepare --clip / --wav2vec2)"
                )
    missing = [t for t in cfg.train.tasks if t != "expr" and t not in store.tasks]
    if missing:
        raise ConfigError(
            f"config key 'train.tasks' asks for {', '.join(missing)}, but the feature store {path} has labels for "
            f"{', '.join(store.tasks)} only: prepare it from an Aff-Wild2 tree with the VA_Estimation_Challenge / "
            f"AU_Detection_Challenge annotations (the demo data has all three)"
        )
    for task in cfg.train.tasks:
        for split in ("train", "validation"):
            if not len(store.videos_in(split, task)):
                what = "" if task == "expr" else f" for the task {task}"
                raise ConfigError(f"the feature store {path} has no '{split}' videos{what} (data.cache)")
        if not len(store.training_videos(task, cfg.train.tasks, cfg.train.task_overlap)):
            raise ConfigError(
                f"every training video of the task {task} is validation or test for another trained task: with "
                f"train.task_overlap=exclude nothing is left to train it (train.task_overlap=allow trains on them)"
            )


def build_run_data(cfg: Config, acc) -> RunData:
    """Everything :class:`expr.training.trainer.Trainer` reads, for this process of ``acc``. Window indexes are built
    once, by the main process first."""
    d = cfg.data
    with acc.main_process_first():
        store = open_store(cfg)
        if not d.cache and acc.is_main_process:
            logger.info("data.cache is not set: using the built-in demo data at %s (synthetic; see README)", store.path)
        check_store(store, cfg)
        tasks = cfg.train.tasks
        overlap = cfg.train.task_overlap
        train_windows = load_or_build_windows(
            store, "train", d.window, d.stride, d.label_frame, random_offset=d.random_offset, tasks=tasks,
            overlap=overlap,
        )  # fmt: skip
        eval_stride = d.resolved_eval_stride()
        val_windows = load_or_build_windows(
            store, "validation", d.window, eval_stride, d.label_frame, True, tasks=tasks
        )
    if len(train_windows) == 0:
        raise ConfigError(f"no labelled training windows in {store.path} (split 'train', data.window={d.window})")
    if "expr" in tasks and not (np.asarray(val_windows["label"]) >= 0).any():
        raise ConfigError(f"no labelled validation windows in {store.path} (split 'validation')")
    encoders, collate = None, collate_batch
    if d.mode == "online" and (store.visual_sets != ["clip"] or store.audio_set != "wav2vec2"):
        raise ConfigError(
            f"data.mode=online runs the store's CLIP and Wav2Vec2 (the sets clip and wav2vec2) inside training; the "
            f"sets {', '.join(store.visual_sets)} / {store.audio_set} train in cached mode (data.mode=cached)"
        )
    tuning = (Tuning.image(cfg.finetune), Tuning.audio(cfg.finetune))
    if d.mode != "online" and any(t.trains for t in tuning):
        raise ConfigError(
            "config keys 'finetune.method' / 'finetune.audio_method' train an encoder inside `expr train`, which "
            "needs data.mode=online (a store prepared with --media); for the two-stage recipe run `expr finetune`"
        )
    if d.mode == "online":
        # The encoders that made the store's features (and its text embeddings): frozen, or tuned with the head.
        encoders, image_transform = store_encoders(store, acc.device, tuning)
        train_set = OnlineWindowDataset(store, train_windows, image_transform, d.augment, cfg.train.seed, d.label_frame,
                                        "train", tasks, overlap)  # fmt: skip
        val_set = OnlineWindowDataset(store, val_windows, image_transform, False, 0, d.label_frame, "validation", tasks)
        collate = collate_online
    else:
        train_set = WindowDataset(store, train_windows, d.label_frame, cfg.train.seed, "train", tasks, overlap)
        val_set = WindowDataset(store, val_windows, d.label_frame, 0, "validation", tasks)
    # Indices carry the epoch, so every loader (persistent workers included) draws the epoch's window offsets and
    # augmentation from (seed, epoch, window) alone.
    sampler = EpochSampler(len(train_set), cfg.train.seed, with_epoch=True)
    workers = d.resolved_num_workers(int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes)))
    # Loaders draw worker seeds from their own generator, not the global RNG: creating one (e.g. the skipping loader
    # of a resumed epoch) must not shift the dropout randomness restored from a checkpoint.
    loader = dict(
        collate_fn=collate,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.train.batch_size, sampler=sampler, **loader)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=cfg.train.batch_size * 2, shuffle=False, **loader)
    return RunData(store, train_set, val_set, sampler, train_loader, val_loader, encoders)


def split_record(store, train_set, val_set) -> dict[str, dict[str, list[str]]]:
    """``RUN/videos.json``: per trained task, the videos whose frames entered training (those holding a target of
    the task) and the videos it validated on, by their names in the store."""
    names = np.asarray(store.names)
    out = {}
    for task in train_set.targets.tasks:
        trained = np.unique(video_of_rows(store.frame_offset, train_set.targets.frames_with_target(task)))
        out[task] = {"train": names[trained].tolist(), "validation": names[val_set.targets.members[task]].tolist()}
    return out
