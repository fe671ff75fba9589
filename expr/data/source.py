"""The feature store a config reads: ``data.cache``, or the built-in demo data when none is set, re-split into folds
when ``data.folds`` is set."""

from __future__ import annotations

from expr.config import Config
from expr.data.demo import ensure_demo_store
from expr.data.store import FrameStore


def open_store(cfg: Config, cache: str | None = None):
    """The feature store of ``cfg`` (``cache`` overrides ``data.cache``; the demo data when neither is set) with the
    feature sets ``data.visual`` / ``data.audio``, re-split for cross-validation when ``data.folds`` is set."""
    path = cache or cfg.data.cache or ensure_demo_store(cfg.data.demo_videos, seed=0)
    store = FrameStore(path, cfg.data.in_memory, cfg.data.visual, cfg.data.audio)
    if cfg.data.folds:
        store.use_folds(cfg.data.folds, cfg.data.fold)
    return store
