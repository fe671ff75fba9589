"""What a run of ``expr prepare`` adds to a store: the feature sets it will have, the videos that still need them,
checked against the store and the parts an interrupted run left; and the encoders of those sets."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expr.data.item import Item
from expr.data.store import FrameStore
from expr.extract.common import PARTS, PrepareError
from expr.extract.parts import _part_path
from expr.features.backbones import Backbones
from expr.features.spec import EncoderSpec, parse_spec


@dataclass
class Plan:
    """What a run of prepare adds to the store at ``out``: every set the store will have (name -> modality and
    spec), the sets new to it, and which sets each video still needs."""

    sets: dict[str, tuple[str, EncoderSpec]]
    new_sets: list[str]
    todo: list[tuple[Item, list[str]]]
    existing: Any

    def identity(self) -> dict[str, Any]:
        return {n: {"modality": m, **spec.identity()} for n, (m, spec) in self.sets.items()}


def plan_work(out: Path, items: Sequence[Item], backbones: Backbones, classes, media: bool) -> Plan:
    """Check the request against the store at ``out`` (if any) and list the work: a requested set that exists with
    another provenance is an error (never overwritten), a set the store has is reused, and videos new to the store
    need every set of the store (their specs come from its provenance)."""
    existing = FrameStore(out) if (out / "store.json").is_file() else None
    sets = dict(backbones.specs())
    if existing is not None:
        have = {s["modality"] for s in existing.feature_sets.values()}
        sets = {n: (m, s) for n, (m, s) in sets.items() if not (n in backbones.implicit and m in have)}
        if list(existing.classes) != list(classes):
            raise PrepareError(f"{out} was prepared with classes {existing.classes}, not {list(classes)}")
        _check_media(out / "store.json", bool(existing.meta.get("media", False)), media)
        for name, info in existing.feature_sets.items():
            recorded = info.get("spec")
            if name in sets and recorded != str(sets[name][1]):
                raise PrepareError(
                    f"{out} has a feature set '{name}' made by {recorded or 'an unrecorded encoder'}; this run asks "
                    f"for {sets[name][1]}. A set is never overwritten: give the new one another name "
                    f"(--{sets[name][0]} OTHER={sets[name][1]}), or use another --out"
                )
            if name not in sets:
                sets[name] = (info["modality"], parse_spec(recorded) if recorded else None)
    in_store = set(existing.names) if existing is not None else set()
    if existing is not None:
        _check_mtl_labels(out, existing, items)
    new_sets = [n for n in sets if existing is None or n not in existing.feature_sets]
    todo = []
    for item in items:
        needed = new_sets if item.name in in_store else list(sets)
        if item.name not in in_store and any(sets[n][1] is None for n in needed):
            missing = [n for n in needed if sets[n][1] is None]
            raise PrepareError(
                f"{out}: adding video {item.name} needs the feature sets {', '.join(missing)}, whose encoders the "
                f"store does not record; prepare the videos into a new --out"
            )
        if needed and not _part_path(out, item.name).is_file():
            todo.append((item, needed))
    return Plan(sets, new_sets, todo, existing)


def _check_mtl_labels(out: Path, existing: FrameStore, items: Sequence[Item]) -> None:
    """A video already in the store keeps the labels it was written with: one whose multi-task split the tree now
    gives differently (e.g. an MTL_Challenge folder added since) is refused, not silently left without them."""
    stored = dict(zip(existing.names, existing.mtl_splits if existing.mtl_splits is not None else [""] * len(
        existing.names), strict=True))  # fmt: skip
    changed = []
    for item in items:
        now = (item.task_splits or {}).get("mtl", "")
        if item.name in stored and str(stored[item.name]) != now:
            changed.append((item.name, str(stored[item.name]), now))
    if changed:
        name, was, now = changed[0]
        raise PrepareError(
            f"{out}: {len(changed)} of its videos are in the multi-task annotation differently than when they were "
            f"written (first: {name}, multi-task split '{was or 'none'}' in the store, '{now or 'none'}' in the tree): "
            f"a store's labels are written with its videos; prepare the tree into a new --out"
        )


def _check_parts(out: Path, plan: Plan, classes, media: bool) -> None:
    """Parts left by an interrupted run must come from the same request."""
    path = out / PARTS / "plan.json"
    has_parts = any(p for p in (out / PARTS).glob("*.npz") if not p.name.startswith("."))
    if not (path.is_file() and has_parts):
        return
    recorded = json.loads(path.read_text())
    theirs = {n: s.get("spec") for n, s in recorded["sets"].items()}
    ours = {n: str(spec) if spec is not None else None for n, (_, spec) in plan.sets.items()}
    if theirs != ours:
        raise PrepareError(
            f"{path}: an interrupted run left videos extracted with other feature sets ({theirs}); this run asks for "
            f"{ours}. Run the same command to continue it, or use another --out"
        )
    if list(recorded["classes"]) != list(classes):
        raise PrepareError(f"{path} was prepared with classes {list(recorded['classes'])}, not {list(classes)}")
    _check_media(path, bool(recorded.get("media", False)), media)


def _check_media(where: Path, recorded: bool, media: bool) -> None:
    if recorded != media:
        raise PrepareError(
            f"{where} was prepared {'with' if recorded else 'without'} --media (face crops and audio for online "
            f"training); run it {'with' if recorded else 'without'} --media again to continue, or use another --out"
        )


class _Encoders:
    """The encoders of a plan by set name: the run's own, or (for sets of the store) built from their recorded
    specs, with the run's device and batch settings."""

    def __init__(self, backbones: Backbones, plan: Plan):
        extra_visual = {n: s for n, (m, s) in plan.sets.items() if m == "visual" and n not in backbones.visual_sets}
        extra_audio = {n: s for n, (m, s) in plan.sets.items() if m == "audio" and n not in backbones.audio_sets}
        backbones.visual_sets = {**backbones.visual_sets, **extra_visual}
        backbones.audio_sets = {**backbones.audio_sets, **extra_audio}
        self.backbones, self.plan = backbones, plan

    def load(self, names) -> None:
        self.backbones.load_all(names)

    def pick(self, names) -> tuple[dict[str, Any], dict[str, Any]]:
        b = self.backbones
        return (
            {n: b.visual(n) for n in names if n in b.visual_sets},
            {n: b.audio(n) for n in names if n in b.audio_sets},
        )
