"""Writing a store: :func:`write_store` streams videos into a new store, :func:`add_sets` adds feature sets to one
that exists; the header is written last (:func:`~expr.data.store.verify.write_header`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from expr.atomic import atomic_path
from expr.data.store.columns import _ArrowFile, _RawColumn, write_set_column
from expr.data.store.format import (
    FORMAT_VERSION,
    MTL_LABELS,
    SPLITS,
    TASK_LABELS,
    VIDEO_COLUMNS,
    StoreError,
    VideoRecord,
)
from expr.data.store.verify import write_header


def write_store(path: str | Path, videos, meta) -> Path:
    """Write ``videos`` (any iterable of :class:`VideoRecord`, consumed once) as a store at ``path``, atomically (a
    temporary folder renamed at the end). Streaming: one video at a time is in memory, so a store larger than RAM
    (Aff-Wild2's ~9 GB of features) can be written. ``meta`` may be a callable, called after the last video (the
    header is written last and can summarise what was written). Feature columns are written as one arrow record
    batch each (from flat temporary files), so reading them back is a zero-copy memory map."""
    with atomic_path(path) as tmp:
        tmp.mkdir()
        _write_store_into(tmp, videos, meta, Path(path))
    return Path(path)


def _write_store_into(tmp: Path, videos, meta, path: Path) -> None:
    """The body of :func:`write_store`, into the temporary folder ``tmp`` (``path``: the store's name in messages)."""
    import datasets
    import pyarrow as pa

    datasets.disable_progress_bars()
    files = {"jpeg": _ArrowFile(tmp / "media" / "frames"), "wave": _ArrowFile(tmp / "media" / "audio")}
    sets = _SetWriter(tmp, path)
    small: dict[str, list[np.ndarray]] = {"video": [], "face": [], "label": [], **{t: [] for t in TASK_LABELS}}
    rows: dict[str, list] = {k: [] for k in VIDEO_COLUMNS}
    task_splits: dict[str, list[str]] = {t: [] for t in TASK_LABELS}
    mtl: dict[str, list[np.ndarray]] = {t: [] for t in MTL_LABELS}
    mtl_splits: list[str] = []
    annotated = set()
    media = None
    frame_offset = 0
    for v in videos:
        if v.split not in SPLITS:
            raise StoreError(f"video '{v.name}': split '{v.split}' is not one of {SPLITS}")
        n = len(v.face)
        if len(v.labels) != n or any(len(x) != n for x in v.visual_sets().values()):
            raise StoreError(f"video '{v.name}': visual, face and labels lengths differ")
        has_media = v.jpeg is not None and v.wave is not None
        if media is None:
            media = has_media
        elif has_media != media:
            raise StoreError(f"{path}: some videos have face crops and audio for online mode, others not ({v.name})")
        sets.add(v, len(rows["name"]))
        values = (v.name, v.split, float(v.fps), n, frame_offset, float(v.audio_start))
        for key, value in zip(VIDEO_COLUMNS, values, strict=True):
            rows[key].append(value)
        small["video"].append(np.full(n, len(rows["name"]) - 1, np.int32))
        small["face"].append(np.asarray(v.face, bool))
        small["label"].append(np.asarray(v.labels, np.int16))
        _add_tasks(v, n, small, task_splits, annotated)
        _add_mtl(v, n, mtl, mtl_splits)
        if media:
            if len(v.jpeg) != n:
                raise StoreError(f"video '{v.name}': {len(v.jpeg)} face crops for {n} frames")
            files["jpeg"].write(pa.table({"jpeg": pa.array(v.jpeg, pa.binary())}))
            files["wave"].write(pa.table({"wave": pa.array([np.asarray(v.wave, np.float16).tobytes()], pa.binary())}))
        frame_offset += n
    if not rows["name"]:
        raise StoreError(f"{path}: no videos to write")
    meta = dict(meta() if callable(meta) else meta)

    def cat(key: str, dtype) -> np.ndarray:
        return np.concatenate(small[key]) if small[key] else np.zeros(0, dtype)

    columns = {
        "video": pa.array(cat("video", np.int32)),
        "face": pa.array(cat("face", bool)),
        "label": pa.array(cat("label", np.int16)),
    }
    for task in sorted(annotated):  # only the tasks some video is annotated for
        width = TASK_LABELS[task][0]
        columns[task] = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(small[task]).ravel()), width)
        rows[f"split_{task}"] = task_splits[task]
    if any(mtl_splits):  # the multi-task challenge's labels and split, when some video has them
        columns.update(_mtl_columns(mtl))
        rows["split_mtl"] = mtl_splits
    frames = pa.table(columns)
    out = _ArrowFile(tmp / "frames")
    out.write(frames)
    out.save(None)
    provenance = meta.pop("sets", {})
    header_sets = sets.finish(provenance, len(rows["name"]))
    if media:
        files["jpeg"].save(None)
        files["wave"].save(None)
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp / "videos"), num_shards=1)
    header = {
        "format_version": FORMAT_VERSION,
        **meta,
        "sets": header_sets,
        "default_visual": [sets.visual_names[0]],
        "default_audio": sets.audio_names[0] if sets.audio_names else None,
    }
    write_header(tmp, header)


def _add_tasks(v: VideoRecord, n: int, small: dict[str, list[np.ndarray]], splits: dict[str, list[str]],
               annotated: set[str]) -> None:  # fmt: skip
    """Collect video ``v``'s VA / AU labels (unannotated without them) and their splits ("" without them)."""
    for task, (width, dtype, missing) in TASK_LABELS.items():
        values = getattr(v, task)
        if values is not None:
            annotated.add(task)
            if np.shape(values) != (n, width):
                raise StoreError(f"video '{v.name}': {task} labels of shape {np.shape(values)}, not ({n}, {width})")
        small[task].append(np.full((n, width), missing, dtype) if values is None else np.asarray(values, dtype))
        splits[task].append((v.task_splits or {}).get(task, ""))


def _add_mtl(v: VideoRecord, n: int, mtl: dict[str, list[np.ndarray]], splits: list[str]) -> None:
    """Collect video ``v``'s multi-task labels (unannotated without them) and split ("" without them)."""
    split = (v.task_splits or {}).get("mtl", "") if v.mtl is not None else ""
    if v.mtl is not None and split not in SPLITS:
        raise StoreError(f"video '{v.name}': multi-task split '{split}' is not one of {SPLITS}")
    splits.append(split)
    for task, (width, dtype, missing) in MTL_LABELS.items():
        shape = (n,) if width == 1 else (n, width)
        values = (v.mtl or {}).get(task)
        if values is not None and np.shape(values) != shape:
            raise StoreError(f"video '{v.name}': multi-task {task} labels of shape {np.shape(values)}, not {shape}")
        mtl[task].append(np.full(shape, missing, dtype) if values is None else np.asarray(values, dtype))


def _mtl_columns(mtl: dict[str, list[np.ndarray]]) -> dict[str, Any]:
    """The frame columns ``mtl_<task>`` of the collected multi-task labels."""
    import pyarrow as pa

    columns = {}
    for task, (width, _, _) in MTL_LABELS.items():
        flat = pa.array(np.concatenate(mtl[task]).ravel())
        columns[f"mtl_{task}"] = flat if width == 1 else pa.FixedSizeListArray.from_arrays(flat, width)
    return columns


class _SetWriter:
    """The feature sets of the videos being written: one flat fp16 file per set, appended video by video, saved as
    ``sets/<name>/`` at the end. Every video has the same visual sets; every video with audio the same audio sets."""

    def __init__(self, tmp: Path, path: Path):
        self.tmp, self.path = tmp, path
        self.raw: dict[str, _RawColumn] = {}
        self.dims: dict[str, int] = {}
        self.visual_names: list[str] = []
        self.audio_names: list[str] = []
        self.counts: dict[str, list[int]] = {}
        self.rate: float | None = None

    def _append(self, name: str, array: np.ndarray, video: str) -> None:
        if name not in self.raw:
            self.raw[name] = _RawColumn(self.tmp / f".{name}.f16")
            self.dims[name] = int(array.shape[1])
        elif array.shape[1] != self.dims[name]:
            dim = self.dims[name]
            raise StoreError(f"video '{video}': {array.shape[1]}-d '{name}' features, the others are {dim}-d")
        self.raw[name].append(array)

    def add(self, v: VideoRecord, index: int) -> None:
        visual, audio = v.visual_sets(), v.audio_sets()
        names = list(visual)
        if not self.visual_names:
            if not names:
                raise StoreError(f"video '{v.name}': no visual features")
            self.visual_names = names
        elif set(names) != set(self.visual_names):
            raise StoreError(f"video '{v.name}': visual sets {names}, the others have {self.visual_names}")
        for name in self.visual_names:
            self._append(name, visual[name], v.name)
        if audio:
            if not self.audio_names:
                self.audio_names = list(audio)
                self.counts = {name: [0] * index for name in self.audio_names}
                self.rate = float(v.audio_rate)
            elif set(audio) != set(self.audio_names):
                raise StoreError(f"video '{v.name}': audio sets {list(audio)}, the others have {self.audio_names}")
            elif float(v.audio_rate) != self.rate:
                raise StoreError(f"video '{v.name}': audio at {v.audio_rate} frames/s, the others at {self.rate}")
            for name in self.audio_names:
                self._append(name, audio[name], v.name)
        for name in self.audio_names:
            self.counts[name].append(len(audio[name]) if audio else 0)

    def finish(self, provenance: dict[str, dict], num_videos: int) -> dict[str, dict]:
        """Write every set's folder; returns the header's ``sets``. Audio sets that no video had (``provenance``
        names them with their ``dim``) are written empty."""
        for name, info in provenance.items():
            if info.get("modality") == "audio" and name not in self.audio_names:
                self.audio_names.append(name)
                self.counts[name] = [0] * num_videos
                self.dims[name] = int(info["dim"])
                self.raw[name] = _RawColumn(self.tmp / f".{name}.f16")
        out = {}
        for name in self.visual_names + self.audio_names:
            info = {"modality": "visual" if name in self.visual_names else "audio", "dim": self.dims[name]}
            if info["modality"] == "audio":
                info["rate"] = self.rate or float(provenance.get(name, {}).get("rate", 50.0))
                info["counts"] = self.counts[name]
            out[name] = {**info, **{k: v for k, v in provenance.get(name, {}).items() if k not in info}}
            write_set_column(self.tmp / "sets" / name, self.raw[name].column(self.dims[name]))
            self.raw[name].path.unlink()
        return out


def add_sets(path: str | Path, sets: dict[str, tuple[dict[str, Any], Any]]) -> None:
    """Add feature sets to the store at ``path``: name -> (info: modality and provenance, an iterable of each video's
    [rows, dim] array in the store's video order). Each set's folder is written aside and renamed into place, then
    the header names it; the other sets are never touched. A set that exists is an error."""
    import shutil

    path = Path(path)
    header = json.loads((path / "store.json").read_text())
    if header.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"{path}: a format-{header.get('format_version')} store takes no new feature sets; prepare "
                         f"it again into a new --out with this version of expr")  # fmt: skip
    num_frames = datasets_column_sum(path / "videos", "num_frames")
    for name, (info, arrays) in sets.items():
        if name in header["sets"]:
            raise StoreError(f"{path}: feature set '{name}' exists; choose another name")
        tmp = path / "sets" / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        raw, counts, dim = _RawColumn(tmp / ".raw.f16"), [], None
        for array in arrays:
            dim = dim or int(array.shape[1])
            raw.append(array)
            counts.append(len(array))
        dim = dim or int(info["dim"])
        if info["modality"] == "visual" and sum(counts) != num_frames:
            raise StoreError(f"{path}: set '{name}' has {sum(counts)} rows for {num_frames} frames")
        write_set_column(tmp / "data", raw.column(dim))
        raw.path.unlink()
        shutil.rmtree(path / "sets" / name, ignore_errors=True)  # left by a run killed before its header named it
        os.replace(tmp / "data", path / "sets" / name)
        shutil.rmtree(tmp, ignore_errors=True)
        entry = {"modality": info["modality"], "dim": dim}
        if info["modality"] == "audio":
            entry.update(rate=float(info.get("rate", 50.0)), counts=counts)
        header["sets"][name] = {**entry, **{k: v for k, v in info.items() if k not in entry}}
    write_header(path, header)


def datasets_column_sum(folder: Path, column: str) -> int:
    import datasets

    return int(sum(datasets.load_from_disk(str(folder))[column]))
