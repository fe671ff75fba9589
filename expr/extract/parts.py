"""Work kept per video: each finished video is one part, ``OUT/.parts/<name>.npz``, written atomically; a video of
an existing store is read back as a record to write it again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from expr.atomic import atomic_path
from expr.data.item import Item
from expr.data.online import MediaStore
from expr.data.store import MTL_LABELS, VideoRecord
from expr.extract.common import PARTS, Report


def _part_path(out: Path, name: str) -> Path:
    return out / PARTS / f"{name}.npz"


def save_part(out: Path, item: Item, arrays: dict[str, np.ndarray], report: Report) -> Path:
    """Write one finished video atomically (temporary file, then rename)."""
    path = _part_path(out, item.name)
    meta = {"name": item.name, "split": item.split, "task_splits": item.task_splits, "report": report.__dict__}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        f.flush()
        os.fsync(f.fileno())
    return path


def _sets_of(z, prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: z[k] for k in z.files if k.startswith(prefix)}


def load_part(path: Path):
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if "face" not in z:  # only new feature sets of a video already in the store
            return {"visual": _sets_of(z, "visual."), "audio": _sets_of(z, "audio.")}, meta["report"]
        audio = _sets_of(z, "audio.")
        record = VideoRecord(
            name=meta["name"],
            split=meta["split"],
            fps=float(z["fps"]),
            visual=_sets_of(z, "visual."),
            face=z["face"],
            labels=z["labels"],
            audio=audio if all(len(a) for a in audio.values()) else None,
            audio_rate=float(z["audio_rate"]),
            audio_start=float(z["audio_start"]),
            va=z["task.va"] if "task.va" in z else None,
            au=z["task.au"] if "task.au" in z else None,
            task_splits=meta.get("task_splits"),
            mtl={t: z[f"task.mtl_{t}"] for t in MTL_LABELS} if "task.mtl_expr" in z else None,
        )
        if "jpeg" in z:
            blob, off = z["jpeg"].tobytes(), z["jpeg_offsets"]
            record.jpeg = [blob[off[i] : off[i + 1]] for i in range(len(off) - 1)]
            record.wave = z["wave"]
    return record, meta["report"]


def _part_features(parts: dict[str, Path], videos: list[str], modality: str, name: str):
    """Set ``name``'s features of each of ``videos`` from their parts, one at a time."""
    for video in videos:
        yield load_part(parts[video])[0][modality][name]


def _store_media(store):
    if store is None or not (store.path / "media" / "frames").is_dir():
        return None
    return MediaStore(store.path / "media")


def _record_from_store(store, media, v: int, added: dict[str, dict[str, np.ndarray]] | None = None):
    """Video ``v`` of an existing store as a record, every feature set of it (views into the loaded store) plus the
    sets ``added`` for it, to write it again."""
    f0, n = store.frame_offset[v], store.num_frames[v]
    mtl = store.mtl_splits is not None and bool(store.mtl_splits[v])
    sets = store.feature_sets
    visual = {name: store.video_features(name, v) for name, s in sets.items() if s["modality"] == "visual"}
    audio = {name: store.video_features(name, v) for name, s in sets.items() if s["modality"] == "audio"}
    visual.update((added or {}).get("visual", {}))
    audio.update((added or {}).get("audio", {}))
    return VideoRecord(
        name=store.names[v],
        split=str(store.splits[v]),
        fps=float(store.fps[v]),
        visual=visual,
        face=store.face[f0 : f0 + n],
        labels=store.labels[f0 : f0 + n],
        audio=audio if store.num_audio[v] else None,
        audio_rate=float(store.audio_rate[v]),
        audio_start=float(store.audio_start[v]),
        jpeg=[bytes(media.jpeg(int(r))) for r in range(f0, f0 + n)] if media else None,
        wave=media.wave(v).copy() if media else None,
        **{t: store.task_labels[t][f0 : f0 + n] if store.task_splits[t][v] else None for t in store.task_labels},
        task_splits={t: str(splits[v]) for t, splits in store.task_splits.items() if splits[v]}
        | ({"mtl": str(store.mtl_splits[v])} if mtl else {}),
        mtl={t: labels[f0 : f0 + n] for t, labels in store.mtl.items()} if mtl else None,
    )


def _recorded_media(out: Path) -> bool:
    """Whether the store at ``out`` (or the parts an interrupted run left there) keeps face crops and audio."""
    for record in (out / "store.json", out / PARTS / "plan.json"):
        if record.is_file():
            return bool(json.loads(record.read_text()).get("media", False))
    return False
