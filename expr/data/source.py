"""The feature store a config reads: ``data.cache``, or the built-in demo data when none is set, on the multi-task
challenge's split when ``data.split_source`` is ``mtl``, re-split into folds when ``data.folds`` is set."""

from __future__ import annotations

from expr.config import Config
from expr.data.demo import ensure_demo_store
from expr.data.store import FrameStore, StoreError


def open_store(cfg: Config, cache: str | None = None):
    """The feature store of ``cfg`` (``cache`` overrides ``data.cache``; the demo data when neither is set) with the
    feature sets ``data.visual`` / ``data.audio``, on the multi-task split (``data.split_source mtl``), re-split for
    cross-validation when ``data.folds`` is set, its image features as encoded at ``predict.fps``."""
    path = cache or cfg.data.cache or ensure_demo_store(cfg.data.demo_videos, seed=0)
    store = FrameStore(path, cfg.data.in_memory, cfg.data.visual, cfg.data.audio)
    if cfg.data.split_source == "mtl":
        store.use_mtl_split()
    if cfg.data.folds:
        store.use_folds(cfg.data.folds, cfg.data.fold)
    if cfg.predict.fps:
        store.encode_at(cfg.predict.fps)
    check_tuned_sets(store, cfg)
    return store


def check_tuned_sets(store: FrameStore, cfg: Config) -> None:
    """A feature set from an encoder that ``expr finetune`` tuned on some videos' labels must not validate on them:
    with ``data.folds`` a validation fold may hold stage I's training videos (the store's original split did not).
    Raises :class:`StoreError` naming the set and how many of this split's validation videos it trained on."""
    validation = {store.names[v] for v in store.videos_in("validation")}
    for name in store.visual_sets:
        trained = (store.feature_sets[name].get("trained_on") or {}).get("videos") or []
        seen = validation.intersection(trained)
        if seen:
            where = f"fold {cfg.data.fold} of {cfg.data.folds}" if cfg.data.folds else "the store's split"
            raise StoreError(
                f"feature set '{name}' of {store.path} comes from an encoder that `expr finetune` trained on "
                f"{len(seen)} of the validation videos of {where}: its features have seen their labels. Tune per "
                f"fold (expr finetune --data.folds K --data.fold k, one set per fold) or validate on the split it was "
                f"tuned for"
            )
