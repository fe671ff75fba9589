"""The finished parts into the store: new feature sets added beside the others, or the store written again (one
video at a time) with the new videos; then moved into place, and the closing summary."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from expr.data.store import add_sets, problem_lines, write_header, write_store
from expr.extract.common import PARTS, SPLIT_ORDER, PrepareError, logger
from expr.extract.parts import _part_features, _record_from_store, _store_media, load_part
from expr.extract.plan import Plan, _Encoders


def assemble(out: Path, staging: Path, plan: Plan, encoders: _Encoders, classes, prompt_template, source, media):
    """Put the finished parts into the store: new sets of the store's videos are added beside the others; new
    videos mean writing the store again (streamed one video at a time: a full Aff-Wild2 store is larger than
    memory), in (split, name) order."""
    existing = plan.existing
    in_store = set(existing.names) if existing is not None else set()
    parts = _finished_parts(out)
    new_videos = [n for n in parts if n not in in_store]
    missing = [n for n in (existing.names if existing is not None and plan.new_sets else []) if n not in parts]
    if missing:
        raise PrepareError(
            f"{out}: new feature sets ({', '.join(plan.new_sets)}) need every video of the store; {len(missing)} are "
            f"not in this run's list ({', '.join(missing[:5])}): run it over the same videos"
        )
    reports = dict(existing.meta.get("report", {}).get("videos", {})) if existing is not None else {}
    backbones = encoders.backbones
    if existing is not None and not new_videos:
        return _add_new_sets(out, plan, backbones, parts)
    sources: list[tuple[str, str, Any]] = []
    if existing is not None:
        sources += [(str(existing.splits[v]), name, v) for v, name in enumerate(existing.names)]
    for name in new_videos:
        record, report = load_part(parts[name])
        sources.append((record.split, name, parts[name]))
        reports[name] = report
    sources.sort(key=lambda s: (SPLIT_ORDER.get(s[0], 3), s[1]))
    stats = _Summary(reports)
    media_of_store = _store_media(existing)

    def records():
        for _, name, where in sources:
            if isinstance(where, Path):
                record = load_part(where)[0]
            else:
                added = load_part(parts[name])[0] if name in parts and plan.new_sets else None
                added = added if isinstance(added, dict) else None  # a full part left by a killed run: stale
                record = _record_from_store(existing, media_of_store, where, added)
            stats.add(record)
            yield record

    def meta() -> dict[str, Any]:
        sets = {}
        for name, (modality, spec) in plan.sets.items():
            recorded = existing.feature_sets.get(name, {}) if existing is not None else {}
            sets[name] = {"modality": modality, **(spec.identity() if spec is not None else {}), **recorded}
            if name not in recorded and modality == "audio":
                sets[name]["dim"] = backbones.audio(name).dim
        return {
            "source": source or {},
            "classes": list(classes),
            "prompt_template": prompt_template,
            "backbones": existing.meta.get("backbones", {}) if existing is not None else backbones.identity(),
            "sets": sets,
            "text_set": backbones.text_set(),
            "media": media,
            "report": {"summary": stats.result(), "videos": reports},
        }

    write_store(staging, records(), meta)
    _write_text(staging, backbones, classes, prompt_template)
    _swap_in(staging, out)
    return stats.result()


def _finished_parts(out: Path) -> dict[str, Path]:
    """Each finished part by its video's name (a temporary file of a killed write is not one)."""
    parts = {}
    for path in sorted((out / PARTS).glob("*.npz")):
        if not path.name.startswith("."):
            with np.load(path, allow_pickle=False) as z:
                parts[json.loads(str(z["meta"]))["name"]] = path
    return parts


def _add_new_sets(out: Path, plan: Plan, backbones, parts: dict[str, Path]) -> dict[str, Any]:
    """No new videos: the plan's new sets (if any) are added beside the store's others; returns its summary."""
    existing = plan.existing
    if not plan.new_sets:
        logger.info("%s is up to date", out)
        shutil.rmtree(out / PARTS, ignore_errors=True)  # parts of a run killed after its store was complete
        return existing.meta.get("report", {}).get("summary") or {}
    added = {}
    for name in plan.new_sets:
        modality, spec = plan.sets[name]
        info = {"modality": modality, **spec.identity()}
        info["dim"] = (backbones.visual(name) if modality == "visual" else backbones.audio(name)).dim
        if modality == "audio":
            info["rate"] = backbones.audio(name).rate
        added[name] = (info, _part_features(parts, existing.names, modality, name))
    add_sets(out, added)
    shutil.rmtree(out / PARTS, ignore_errors=True)
    logger.info("added feature sets %s to %s", ", ".join(plan.new_sets), out)
    return existing.meta.get("report", {}).get("summary") or {}


def _write_text(staging: Path, backbones, classes, prompt_template) -> None:
    """The class prompts' text embeddings (``text.safetensors``), when the store has a text set."""
    from safetensors.torch import save_file

    if backbones.text_set() is not None:
        text = backbones.text(classes, prompt_template)
        save_file(
            {"text": text.contiguous()},
            str(staging / "text.safetensors"),
            metadata={"template": prompt_template, "classes": json.dumps(list(classes)), "set": backbones.text_set()},
        )
        write_header(staging, json.loads((staging / "store.json").read_text()))  # its size and checksum recorded too


def _swap_in(staging: Path, out: Path) -> None:
    """Move the assembled store's files into ``out`` (keeping ``.parts`` until the store is complete), then drop the
    parts: a kill before the last step leaves the parts, and the next run assembles again."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    (out / "store.json").unlink(missing_ok=True)  # the header goes last: no header, no store
    for child in staging.iterdir():
        if child.name == "store.json":
            continue
        target = out / child.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(child, target)
    shutil.rmtree(out / "windows", ignore_errors=True)  # window indexes of the old store no longer match
    os.replace(staging / "store.json", out / "store.json")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(out / PARTS, ignore_errors=True)


class _Summary:
    """The closing summary, counted while the videos stream into the store."""

    def __init__(self, reports: dict[str, dict]):
        self.reports = reports
        self.videos = dict.fromkeys(SPLIT_ORDER, 0)
        self.frames = self.labelled = self.faces = 0
        self.no_audio: list[str] = []

    def add(self, record) -> None:
        self.videos[record.split] = self.videos.get(record.split, 0) + 1
        self.frames += len(record.labels)
        self.labelled += int((np.asarray(record.labels) >= 0).sum())
        self.faces += int(np.asarray(record.face).sum())
        if not record.has_audio:
            self.no_audio.append(record.name)

    def result(self) -> dict[str, Any]:
        def count(word: str) -> list[str]:
            return sorted(n for n, r in self.reports.items() if any(word in p for p in r.get("problems", [])))

        return {
            "videos": self.videos,
            "frames": self.frames,
            "labelled_frames": self.labelled,
            "face_frames": self.faces,
            "no_audio": sorted(self.no_audio),
            "unreadable_video": count("unreadable video"),
            "corrupt_crops": count("unreadable face crops"),
            "frame_count_mismatch": count("frame count mismatch"),
        }


def _print_summary(out: Path, s: dict[str, Any], plan: Plan | None = None) -> None:
    lines = [f"feature store: {out}"]
    if s:
        videos = ", ".join(f"{k} {v}" for k, v in s["videos"].items() if v)
        counts = f"frames {s['frames']} (labelled {s['labelled_frames']}, with a face {s['face_frames']})"
        lines.append(f"  videos: {videos}; {counts}")
    if plan is not None:
        sets = ", ".join(f"{n} ({m}{', new' if n in plan.new_sets else ''})" for n, (m, _) in plan.sets.items())
        lines.append(f"  feature sets: {sets}")
    lines += problem_lines(s)
    lines.append(f"  details per video: {out / 'store.json'} (report.videos); train with --data.cache {out}")
    print("\n".join(lines))
