"""The frame-level feature store: what ``expr prepare`` and the demo generator write, and training reads.

A store is a directory of Hugging Face ``datasets`` saved with ``save_to_disk`` plus a JSON header:

- ``frames/``: one row per video frame, in video order: ``video`` (int32 index into ``videos``), ``face`` (bool: a
  face crop exists), ``label`` (int16 class index, ``-1`` = ignore, e.g. unannotated frames and test videos).
- ``videos/``: one row per video: ``name``, ``split`` (``train`` / ``validation`` / ``test``), ``fps`` (the
  video's real frame rate), ``num_frames``, ``frame_offset`` (first row in ``frames``), ``audio_start`` (time in
  seconds of the audio's first sample relative to video frame 0).
- ``sets/<NAME>/``: one named feature set, one column ``feature`` (fp16 [dim]). A visual set has one row per
  frame (aligned with ``frames``; zeros where no face); an audio set one row per audio feature frame, video after
  video (``counts`` in the header: rows per video; 0 without an audio track).
- ``store.json``: format version, class names, where the data came from, and ``sets``: for each set its modality,
  width, audio rate and provenance (encoder family, model, weights, options, random or real weights); the default
  sets (``default_visual``, ``default_audio``: the first ones written) and the byte size of every data file.

Frame i of a video starts at time i / fps; audio frame j at ``audio_start + j / rate``. So any window of frames maps
to its span of audio frames (:meth:`FrameStore.audio_span`). Training picks sets by name (``data.visual``: one or
several, concatenated per frame; ``data.audio``: one). Stores of format 1 (one ``visual`` column in ``frames`` and
an ``audio/`` folder: the sets ``clip`` and ``wav2vec2``) are still read.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from expr.atomic import atomic_path, write_text

logger = logging.getLogger("expr.store")

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_VISUAL, DEFAULT_AUDIO = "clip", "wav2vec2"  # the set names of a record's plain arrays, and of format 1
SPLITS = ("train", "validation", "test")
SIDES = ("_left", "_right")  # person tracks of one video: <video>_left, <video>_right


class StoreError(ValueError):
    """A feature store that cannot be read; the message names the path."""


@dataclass
class VideoRecord:
    """One video's frames and audio, as the store writer receives them. ``visual`` and ``audio`` map feature set
    names to arrays; a plain array is the set ``clip`` (visual) or ``wav2vec2`` (audio)."""

    name: str
    split: str
    fps: float
    visual: dict[str, np.ndarray] | np.ndarray  # set -> [T, dim] float (stored fp16)
    face: np.ndarray  # [T] bool
    labels: np.ndarray  # [T] int, -1 = ignore
    audio: dict[str, np.ndarray] | np.ndarray | None  # set -> [Ta, dim]; None or {} when the video has no audio
    audio_rate: float = 50.0  # audio feature frames per second (of every audio set)
    audio_start: float = 0.0
    jpeg: list[bytes] | None = None  # [T] face crop files' bytes (b"" without a face), for online mode
    wave: np.ndarray | None = None  # [S] fp16 16 kHz mono samples (empty without audio), for online mode
    va: np.ndarray | None = None  # [T, 2] valence, arousal (NaN = unannotated); None: not annotated for VA
    au: np.ndarray | None = None  # [T, 12] action units 0/1 (-1 = unannotated); None: not annotated for AU
    task_splits: dict[str, str] | None = None  # the split of each task annotating it ("va": "train", ...)

    def visual_sets(self) -> dict[str, np.ndarray]:
        return self.visual if isinstance(self.visual, dict) else {DEFAULT_VISUAL: self.visual}

    def audio_sets(self) -> dict[str, np.ndarray]:
        """Set name -> [Ta, dim]; empty when the video has no audio track."""
        if self.audio is None:
            return {}
        sets = self.audio if isinstance(self.audio, dict) else {DEFAULT_AUDIO: self.audio}
        return {} if any(a is None or len(a) == 0 for a in sets.values()) else sets

    @property
    def has_audio(self) -> bool:
        return bool(self.audio_sets())


VIDEO_COLUMNS = ("name", "split", "fps", "num_frames", "frame_offset", "audio_start")
TASK_LABELS = {"va": (2, np.float32, np.nan), "au": (12, np.int8, -1)}
"""Aff-Wild2's other tasks' frame labels a store may hold beside the expression label: (width, dtype, unannotated)."""


class _ArrowFile:
    """A ``datasets`` folder whose one data file is written as an arrow stream, one record batch per call: no table is
    ever held whole in memory, and nothing is copied at the end. The folder's metadata (``state.json``,
    ``dataset_info.json``) and the stream's schema come from ``save_to_disk`` of an empty table of the same columns,
    so ``datasets.load_from_disk`` reads the result like any saved dataset."""

    DATA = "data-00000-of-00001.arrow"

    def __init__(self, folder: Path):
        self.folder, self.writer, self.schema = folder, None, None

    def write(self, table) -> None:
        import datasets
        import pyarrow as pa

        if self.writer is None:
            datasets.Dataset(table.slice(0, 0)).save_to_disk(str(self.folder), num_shards=1)
            with pa.memory_map(str(self.folder / self.DATA)) as source:
                self.schema = pa.ipc.open_stream(source).schema
            self.writer = pa.ipc.new_stream(str(self.folder / f".{self.DATA}.tmp"), self.schema)
        self.writer.write_table(pa.Table.from_arrays(table.columns, schema=self.schema))

    def save(self, empty) -> None:
        """Finish the folder (``empty``: the columns to save when nothing was written)."""
        import os

        if self.writer is None:
            self.write(empty)
        self.writer.close()
        os.replace(self.folder / f".{self.DATA}.tmp", self.folder / self.DATA)


def _fixed(array: np.ndarray, dim: int):
    import pyarrow as pa

    flat = np.ascontiguousarray(array, np.float16).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)


MAX_ARROW_VALUES = 2**31 - 1  # the most values Arrow IPC writes in one array


class _RawColumn:
    """Feature rows appended to a flat fp16 file, one video at a time; at the end a FixedSizeList column backed by
    the memory-mapped file, one arrow array per ``MAX_ARROW_VALUES`` values (which :class:`FrameStore` maps without
    copying) while the writer holds one video in memory."""

    def __init__(self, path: Path):
        self.path, self.rows = path, 0
        self.file = open(path, "wb")  # noqa: SIM115 - closed in column()

    def append(self, array: np.ndarray) -> None:
        if not array.size:
            return
        self.file.write(memoryview(np.ascontiguousarray(array, np.float16)).cast("B"))
        self.rows += len(array)

    def column(self, dim: int):
        import pyarrow as pa

        self.file.close()
        if not self.rows:
            return _fixed(np.zeros((0, dim)), dim)
        flat = np.memmap(self.path, np.float16, "r")
        # Arrow IPC writes arrays of at most 2^31 - 1 values: Aff-Wild2's audio column (~3.4e9 values) takes two.
        step = MAX_ARROW_VALUES // dim * dim
        chunks = []
        for start in range(0, len(flat), step):
            part = flat[start : start + step]
            values = pa.Array.from_buffers(pa.float16(), len(part), [None, pa.py_buffer(part)])
            chunks.append(pa.FixedSizeListArray.from_arrays(values, dim))
        return pa.chunked_array(chunks)


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
        for task, (width, dtype, missing) in TASK_LABELS.items():
            values = getattr(v, task)
            if values is not None:
                annotated.add(task)
                if np.shape(values) != (n, width):
                    raise StoreError(f"video '{v.name}': {task} labels of shape {np.shape(values)}, not ({n}, {width})")
            small[task].append(np.full((n, width), missing, dtype) if values is None else np.asarray(values, dtype))
            task_splits[task].append((v.task_splits or {}).get(task, ""))
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


def write_set_column(folder: Path, column) -> None:
    """One feature set's folder: a ``datasets`` folder with the column ``feature`` as one record batch."""
    import pyarrow as pa

    out = _ArrowFile(folder)
    out.write(pa.table({"feature": column}))  # one record batch: the column is one contiguous buffer in the file
    out.save(None)


DATA_FOLDERS = ("frames", "videos", "sets", "media")


def sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def data_files(root: Path, previous: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Every data file of a store (relative path -> bytes, SHA-256, modification time), as the header records them;
    a file ``previous`` lists with the same size and modification time keeps its recorded checksum (adding a feature
    set does not read the others again)."""
    out = {}
    read = [p for p in root.rglob("*") if p.suffix in (".arrow", ".json") and p.is_file()]  # tables and their records
    for p in sorted(read + [root / "text.safetensors"] if (root / "text.safetensors").is_file() else read):
        rel = str(p.relative_to(root))
        parts = p.relative_to(root).parts
        if (parts[0] not in DATA_FOLDERS and rel != "text.safetensors") or any(part.startswith(".") for part in parts):
            continue  # window indexes (windows/) are caches, not data; store.json records the others
        stat = p.stat()
        old = (previous or {}).get(rel)
        if isinstance(old, dict) and old.get("bytes") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns:
            out[rel] = old
        else:
            out[rel] = {"bytes": stat.st_size, "sha256": sha256(p), "mtime_ns": stat.st_mtime_ns}
    return out


def write_header(root: Path, header: dict[str, Any]) -> None:
    """``store.json`` with the sizes and checksums of the data files as they are now (sizes are checked when the
    store is opened, checksums by ``expr store info --verify``)."""
    header = {**header, "files": data_files(root, header.get("files"))}
    write_text(root / "store.json", json.dumps(header, indent=2))


def verify_files(root: Path, meta: dict[str, Any]) -> list[str]:
    """The data files that differ from what the header recorded (missing, another size, another SHA-256)."""
    problems = []
    for rel, entry in meta.get("files", {}).items():
        path = root / rel
        size = entry.get("bytes") if isinstance(entry, dict) else entry
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != size:
            problems.append(f"{rel}: {path.stat().st_size} bytes, {size} were written")
        elif isinstance(entry, dict) and sha256(path) != entry.get("sha256"):
            problems.append(f"{rel}: SHA-256 differs from the one recorded when it was written")
    return problems


class RowChunks:
    """Rows of a few memory-mapped [n_i, dim] arrays, indexed as one [sum n_i, dim] array (integer arrays of any shape,
    slices, or one row): the feature columns too long for one arrow array."""

    def __init__(self, chunks: list[np.ndarray]):
        self.chunks = chunks
        self.starts = np.cumsum([0] + [len(c) for c in chunks])
        self.shape = (int(self.starts[-1]), *chunks[0].shape[1:])
        self.dtype = chunks[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self[np.arange(*index.indices(len(self)))]
        rows = np.asarray(index, np.int64)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((*rows.shape, *self.shape[1:]), self.dtype)
        for c, chunk in enumerate(self.chunks):
            mask = which == c
            if mask.any():
                out[mask] = chunk[rows[mask] - self.starts[c]]
        return out


def _in_ram(array) -> np.ndarray:
    """A private in-memory copy of a (memory-mapped) feature array, copied once."""
    return np.concatenate(array.chunks) if isinstance(array, RowChunks) else np.array(array)


def _arrow_type(dtype):
    import pyarrow as pa

    return pa.from_numpy_dtype(np.dtype(dtype))


def _fixed_to_numpy(column, dim: int, dtype=np.float16) -> np.ndarray:
    """A FixedSizeList column (ChunkedArray, memory-mapped) as one [N, dim] array: read-only zero-copy views of the
    memory map when the column has a few long chunks (stores written by :func:`write_store`: one chunk, or
    :class:`RowChunks` of two for Aff-Wild2's audio; every process on a machine then shares one copy in the page
    cache), else (a store of many small record batches) a copy filled chunk by chunk."""
    if column.type.value_type == _arrow_type(dtype) and 0 < column.num_chunks <= 8:
        flats = [chunk.flatten() for chunk in column.chunks]
        if all(f.null_count == 0 for f in flats):
            views = [f.to_numpy(zero_copy_only=True).reshape(-1, dim) for f in flats]
            return views[0] if len(views) == 1 else RowChunks(views)
    out = np.empty((len(column), dim), dtype)
    row = 0
    for chunk in column.chunks:
        values = chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        out[row : row + len(values)] = values
        row += len(values)
    return out


def video_of_rows(frame_offset: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The video of each frame row of a store whose videos start at ``frame_offset`` (ascending)."""
    return np.searchsorted(frame_offset, rows, side="right") - 1


def video_name(annotation_name: str) -> str:
    """The raw video an annotation belongs to: ``<video>_left`` and ``<video>_right`` share ``<video>``."""
    for side in SIDES:
        if annotation_name.endswith(side):
            return annotation_name[: -len(side)]
    return annotation_name


class ConcatColumns:
    """Several feature sets' [N, d_i] arrays of the same rows, indexed as one [N, sum d_i] array (concatenated per
    row at gather time, never copied whole)."""

    def __init__(self, arrays: list):
        self.arrays = arrays
        self.shape = (len(arrays[0]), sum(a.shape[1] for a in arrays))
        self.dtype = arrays[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        return np.concatenate([a[index] for a in self.arrays], axis=-1)


class FrameStore:
    """A store as flat numpy arrays (features memory-mapped, the rest in memory), with per-video offsets, reading
    the feature sets it is asked for: ``visual`` (one name, a comma-separated list or a sequence, concatenated per
    frame) and ``audio`` (one name); None: the store's defaults."""

    def __init__(
        self,
        path: str | Path,
        in_memory: bool = False,
        visual: str | list[str] | tuple[str, ...] | None = None,
        audio: str | None = None,
    ):
        """``in_memory``: copy the feature arrays into RAM (faster first-touch random gathers, one copy per process)
        instead of mapping the store's files (opens in seconds, shared by every process through the page cache)."""
        import datasets

        self.path = Path(path)
        header_path = self.path / "store.json"
        if not header_path.is_file():
            raise StoreError(f"{self.path}: not a feature store (no store.json). Create one with `expr prepare`.")
        self.meta: dict[str, Any] = read_header(header_path)
        version = self.meta.get("format_version")
        if version not in READABLE_VERSIONS:
            raise StoreError(
                f"{self.path}: store format {version} is not one this version of expr reads "
                f"({', '.join(map(str, READABLE_VERSIONS))}); prepare it again with this version of expr"
            )
        check_files(self.path, self.meta)
        try:
            frames = datasets.load_from_disk(str(self.path / "frames")).data.table
            videos = datasets.load_from_disk(str(self.path / "videos")).to_dict()
        except FileNotFoundError as e:
            raise StoreError(f"{self.path}: incomplete feature store ({e})") from None
        except Exception as e:  # noqa: BLE001 - a damaged table or record fails inside datasets / Arrow in many ways
            raise StoreError(
                f"{self.path}: damaged store: its frames or videos table does not load ({type(e).__name__}: "
                f"{str(e)[:200]}); `expr store info {self.path} --verify` names the damaged files"
            ) from None
        self.face = frames.column("face").to_numpy().astype(bool)  # [N]
        self.labels = frames.column("label").to_numpy().astype(np.int64)  # [N]
        self.task_labels: dict[str, np.ndarray] = {}  # "va": [N, 2] float32 (NaN), "au": [N, 12] int8 (-1)
        self.task_splits: dict[str, np.ndarray] = {}  # "va": the VA split of each video ("" = not annotated)
        for task, (width, dtype, _) in TASK_LABELS.items():
            if task in frames.column_names:
                flat = frames.column(task).combine_chunks().flatten().to_numpy(zero_copy_only=False)
                self.task_labels[task] = flat.astype(dtype).reshape(-1, width)
                self.task_splits[task] = np.array(videos[f"split_{task}"])
        self.tasks = ["expr", *sorted(self.task_labels)]  # the tasks this store has labels for
        self.names: list[str] = videos["name"]
        self.splits = np.array(videos["split"])
        self.fps = np.asarray(videos["fps"], np.float64)
        self.num_frames = np.asarray(videos["num_frames"], np.int64)
        self.frame_offset = np.asarray(videos["frame_offset"], np.int64)
        self.audio_start = np.asarray(videos["audio_start"], np.float64)
        if version == 1:
            self.sets, columns = _format1_sets(self.path, self.meta, frames, videos)
        else:
            self.sets, columns = self.meta["sets"], {}
        self._arrays: dict[str, Any] = dict(columns)
        self.visual_sets = self._chosen(visual, "visual")
        audio_names = self._chosen(audio, "audio")
        self.audio_set = audio_names[0] if audio_names else None
        arrays = [self.set_array(n) for n in self.visual_sets]
        self.visual = arrays[0] if len(arrays) == 1 else ConcatColumns(arrays)  # [N, visual_dim] fp16
        self.visual_dim = sum(int(self.sets[n]["dim"]) for n in self.visual_sets)
        if self.audio_set is None:  # a store without any audio set: every video without audio
            self.audio, self.audio_dim = np.zeros((0, 1), np.float16), 1
            counts, rate = np.zeros(len(self.names), np.int64), 50.0
        else:
            info = self.sets[self.audio_set]
            self.audio = self.set_array(self.audio_set)  # [Na, audio_dim] fp16
            self.audio_dim = int(info["dim"])
            counts, rate = np.asarray(info["counts"], np.int64), float(info["rate"])
        self.num_audio = counts
        self.audio_offset = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.audio_rate = np.full(len(self.names), rate)
        self._check_record(arrays)
        if in_memory:
            self.visual = ConcatColumns([_in_ram(a) for a in arrays]) if len(arrays) > 1 else _in_ram(self.visual)
            self.audio = _in_ram(self.audio)
        self.split_tag = ""  # names a re-split (k-fold) in window index keys

    def _check_record(self, visual_arrays: list) -> None:
        """``store.json`` against the data: every chosen set has one row per frame (visual) or per audio step of the
        recorded counts (audio), the videos' frame counts add up, and every label is a class or unlabelled."""
        damaged = f"{self.path}: damaged store:"
        fix = "copy the store again, or re-run expr prepare into a new --out"
        n = len(self.labels)
        if int(self.num_frames.sum()) != n or len(self.frame_offset) != len(self.names):
            raise StoreError(f"{damaged} its videos list {int(self.num_frames.sum())} frames, frames/ holds {n}; {fix}")
        for name, array in zip(self.visual_sets, visual_arrays, strict=True):
            if len(array) != n:
                raise StoreError(f"{damaged} feature set '{name}' has {len(array)} rows of {self.sets[name]['dim']} "
                                 f"values where its {n} frames need {n} (store.json's width or the data is wrong); "
                                 f"{fix}")  # fmt: skip
        if self.audio_set is not None and (
            len(self.num_audio) != len(self.names) or len(self.audio) != int(self.num_audio.sum())
        ):
            raise StoreError(f"{damaged} audio set '{self.audio_set}' has {len(self.audio)} rows, its recorded counts "
                             f"say {int(self.num_audio.sum())} over {len(self.num_audio)} videos; {fix}")  # fmt: skip
        bad = np.flatnonzero((self.labels < -1) | (self.labels >= len(self.classes)))
        if len(bad):
            v = int(video_of_rows(self.frame_offset, bad[:1])[0])
            raise StoreError(f"{damaged} frame {int(bad[0] - self.frame_offset[v])} of video {self.names[v]} has "
                             f"label {int(self.labels[bad[0]])}, not one of its {len(self.classes)} classes or -1 "
                             f"(unlabelled); {len(bad)} such frames; {fix}")  # fmt: skip

    def first_non_finite(self, chunk: int = 1 << 16) -> str | None:
        """Where the first NaN or infinite feature of the chosen sets is (set, video, frame or audio step), or None.
        A scan of every row: for saying why a loss is not finite, not for every opening."""
        sources = [(n, self.set_array(n), "visual") for n in self.visual_sets]
        if self.audio_set is not None:
            sources.append((self.audio_set, self.audio, "audio"))
        for name, array, modality in sources:
            for start in range(0, len(array), chunk):
                rows = np.asarray(array[start : start + chunk], np.float32)
                bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
                if len(bad):
                    row = start + int(bad[0])
                    offsets = self.frame_offset if modality == "visual" else self.audio_offset
                    v = int(np.searchsorted(offsets, row, side="right") - 1)
                    unit = "frame" if modality == "visual" else "audio step"
                    return (f"{self.path}: feature set '{name}' has a non-finite value at row {row} ({unit} "
                            f"{row - int(offsets[v])} of video {self.names[v]})")  # fmt: skip
        return None

    def _chosen(self, names, modality: str) -> list[str]:
        """The set names asked for (validated), or the store's defaults."""
        if names is None:
            default = self.meta.get(f"default_{modality}")
            chosen = [default] if isinstance(default, str) else list(default or [])
            if not chosen:
                chosen = [n for n, s in self.sets.items() if s["modality"] == modality][:1]
        else:
            chosen = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        have = sorted(n for n, s in self.sets.items() if s["modality"] == modality)
        for name in chosen:
            if name not in have:
                raise StoreError(
                    f"{self.path}: no {modality} feature set '{name}' (it has {', '.join(have) or 'none'}); add it "
                    f"with `expr prepare ... --out {self.path} --{modality} {name}=FAMILY:MODEL` or pick one of these"
                )
        if modality == "audio" and len(chosen) > 1:
            raise StoreError(f"data.audio: one audio set, not {len(chosen)} ({', '.join(chosen)})")
        return chosen

    def set_array(self, name: str):
        """The [rows, dim] fp16 array of feature set ``name`` (memory-mapped; opened once)."""
        if name not in self._arrays:
            self._arrays[name] = self._set_array(name)
        return self._arrays[name]

    def video_features(self, name: str, v: int) -> np.ndarray:
        """Set ``name``'s rows of video ``v``: [num_frames, dim] (visual) or [count, dim] (audio)."""
        info = self.sets[name]
        if info["modality"] == "visual":
            first, count = self.frame_offset[v], self.num_frames[v]
        else:
            counts = np.asarray(info["counts"], np.int64)
            first, count = int(counts[:v].sum()), int(counts[v])
        return self.set_array(name)[first : first + count]

    def _set_array(self, name: str):
        import datasets

        try:
            table = datasets.load_from_disk(str(self.path / "sets" / name)).data.table
        except FileNotFoundError as e:
            raise StoreError(f"{self.path}: feature set '{name}' is missing its folder ({e})") from None
        except Exception as e:  # noqa: BLE001 - as above
            raise StoreError(
                f"{self.path}: damaged store: feature set '{name}' does not load ({type(e).__name__}: "
                f"{str(e)[:200]}); `expr store info {self.path} --verify` names the damaged files"
            ) from None
        column, dim = table.column("feature"), int(self.sets[name].get("dim", 0))
        width = getattr(column.type, "list_size", None)
        if width is not None and width != dim:  # before a reshape reads the rows at the wrong width
            raise StoreError(
                f"{self.path}: damaged store: feature set '{name}' holds rows of {width} values, store.json says "
                f"{dim}; copy the store again, or re-run expr prepare into a new --out"
            )
        return _fixed_to_numpy(column, dim)

    @property
    def feature_sets(self) -> dict[str, dict[str, Any]]:
        """Every set of the store: modality, width, rate (audio) and provenance."""
        return self.sets

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def text_embeddings(self, template: str, set_name: str | None = None):
        """The class prompts' CLIP text embeddings stored by ``expr prepare`` (``text.safetensors``), or None when
        the store has none, or they were made with another prompt template or (``set_name``) another set's CLIP."""
        path = self.path / "text.safetensors"
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("template") != template or (set_name and meta.get("set", DEFAULT_VISUAL) != set_name):
                return None
            return f.get_tensor("text")

    def use_folds(self, folds: int, fold: int, seed: int = 0) -> None:
        """Re-split for k-fold cross-validation: train and validation videos pooled, grouped by raw video name (a
        video and its ``_left``/``_right`` tracks are one group), groups dealt to ``folds`` folds in a seeded random
        order; fold ``fold`` becomes ``validation``, the rest ``train``. Test videos stay ``test``."""
        pooled = np.flatnonzero(np.isin(self.splits, ["train", "validation"]))
        groups = sorted({video_name(self.names[v]) for v in pooled})
        if len(groups) < folds:
            raise StoreError(f"{self.path}: {len(groups)} raw videos cannot fill {folds} folds")
        order = np.random.default_rng(seed).permutation(len(groups))
        fold_of = {groups[g]: i % folds for i, g in enumerate(order)}
        splits = self.splits.astype(object)
        for v in pooled:
            splits[v] = "validation" if fold_of[video_name(self.names[v])] == fold else "train"
        self.splits = splits.astype(str)
        self.split_tag = f"k{folds}f{fold}s{seed}"

    def frame_rows(self, videos: np.ndarray) -> np.ndarray:
        """Rows of ``frames`` that belong to ``videos`` (in their order)."""
        parts = [np.arange(self.frame_offset[v], self.frame_offset[v] + self.num_frames[v]) for v in videos]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def videos_in(self, split: str, task: str = "expr") -> np.ndarray:
        """The videos in ``split`` of ``task`` (each Aff-Wild2 task splits the videos its own way; ``expr``'s split,
        which also holds the test videos, is ``splits``); none for a task the store has no labels of."""
        if task == "expr":
            return np.flatnonzero(self.splits == split)
        return np.flatnonzero(self.task_splits[task] == split) if task in self.task_splits else np.zeros(0, np.int64)

    def held_out(self, tasks) -> np.ndarray:
        """The videos that are validation or test for any of ``tasks``."""
        out = [self.videos_in(split, task) for task in tasks for split in ("validation", "test")]
        return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)

    def crossing_videos(self, tasks) -> np.ndarray:
        """The videos that one of ``tasks`` trains on and another validates or tests on."""
        training = np.unique(np.concatenate([self.videos_in("train", task) for task in tasks]))
        return np.intersect1d(training, self.held_out(tasks))

    def training_videos(self, task: str, tasks=("expr",), overlap: str = "exclude") -> np.ndarray:
        """The videos whose frames may train ``task`` in a run of ``tasks``: its training split, less (``overlap``
        ``exclude``) every video another trained task validates or tests on."""
        videos = self.videos_in("train", task)
        return np.setdiff1d(videos, self.held_out(tasks)) if overlap == "exclude" else videos

    def audio_span(self, video: np.ndarray, start: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """First audio frame (relative to the video's audio) and audio frame count of frame windows
        (:func:`audio_overlap` at each video's frame rate, ``audio_start`` and ``audio_rate``)."""
        return audio_overlap(start, length, self.fps[video], self.audio_start[video], self.audio_rate[video])


PROBLEMS = (
    ("no_audio", "without audio (masked)"),
    ("unreadable_video", "with an unreadable video"),
    ("corrupt_crops", "with corrupt face crops (masked)"),
    ("frame_count_mismatch", "whose annotation and video frame counts differ (aligned by index)"),
)


def problem_lines(summary: dict[str, Any]) -> list[str]:
    """One line per kind of problem in a store's report summary: how many videos, and the first names."""
    lines = []
    for key, what in PROBLEMS:
        names = summary.get(key) or []
        if names:
            lines.append(f"  {len(names)} videos {what}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}")
    return lines


def read_header(path: Path) -> dict[str, Any]:
    """A store's ``store.json``, with the keys every reader needs; a broken one is a ``StoreError`` naming it."""
    fix = "restore it from a copy of the store, or re-run expr prepare into a new --out"
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: damaged store record, not JSON ({e}); {fix}") from None
    if not isinstance(meta, dict):
        raise StoreError(f"{path}: damaged store record (a JSON {type(meta).__name__}, not an object); {fix}")
    needed = ["classes"] + (["sets"] if meta.get("format_version", 1) != 1 else [])
    missing = [k for k in needed if k not in meta]
    if missing:
        raise StoreError(f"{path}: damaged store record: no '{missing[0]}' key; {fix}")
    if "files" not in meta:
        logger.warning("%s records no data files: a truncated or replaced file would go unnoticed until it is read "
                       "(`expr store info %s --verify` cannot check it either)", path, path.parent)  # fmt: skip
    return meta


def check_files(root: Path, meta: dict[str, Any]) -> None:
    """Every data file the header lists must exist with its recorded size: a truncated or missing file (a copy cut
    short, a full disk) is named here, before a reader fails deep inside Arrow."""
    for rel, entry in meta.get("files", {}).items():
        path = root / rel
        size = entry.get("bytes") if isinstance(entry, dict) else entry
        if not path.is_file():
            raise StoreError(f"{root}: damaged store: {rel} is missing; copy the store again or re-run expr prepare")
        if path.stat().st_size != size:
            raise StoreError(
                f"{root}: damaged store: {rel} has {path.stat().st_size} bytes, {size} were written; copy the store "
                f"again, or re-run expr prepare into a new --out"
            )


def _format1_sets(path: Path, meta: dict[str, Any], frames, videos) -> tuple[dict, dict]:
    """A format-1 store's features as the sets ``clip`` (the ``visual`` column of ``frames``) and ``wav2vec2``
    (``audio/``)."""
    import datasets

    audio = datasets.load_from_disk(str(path / "audio")).data.table
    b = meta.get("backbones", {})
    sets = {
        DEFAULT_VISUAL: {"modality": "visual", "dim": int(meta["visual_dim"])},
        DEFAULT_AUDIO: {
            "modality": "audio",
            "dim": int(meta["audio_dim"]),
            "rate": float(videos["audio_rate"][0]) if videos["audio_rate"] else 50.0,
            "counts": list(videos["num_audio"]),
        },
    }
    if "clip_pretrained" in b:  # the encoder specs (expr.features.spec) of the recorded backbones
        clip = b["clip"] if b["clip"].startswith("local-dir:") else f"{b['clip']}@{b['clip_pretrained']}"
        w2v = "facebook/wav2vec2-base@random" if b["wav2vec2"] == "random" else b["wav2vec2"]
        sets[DEFAULT_VISUAL]["spec"], sets[DEFAULT_AUDIO]["spec"] = f"open_clip:{clip}", f"hf:{w2v}"
    columns = {
        DEFAULT_VISUAL: _fixed_to_numpy(frames.column("visual"), int(meta["visual_dim"])),
        DEFAULT_AUDIO: _fixed_to_numpy(audio.column("audio"), int(meta["audio_dim"])),
    }
    meta.setdefault("default_visual", [DEFAULT_VISUAL])
    meta.setdefault("default_audio", DEFAULT_AUDIO)
    return sets, columns


def audio_overlap(start, length, fps, audio_start, rate) -> tuple[np.ndarray, np.ndarray]:
    """The audio units (feature frames, or samples) that overlap video frames ``start .. start + length - 1``:
    (first unit, count), at least 1.

    Video frame i lies at [i / fps, (i + 1) / fps) s; audio unit j at ``audio_start + [j, j + 1) / rate`` s, where
    ``audio_start`` is the audio's start relative to video frame 0 (negative: the audio begins earlier). A unit
    counts when it overlaps the window's time span by more than a millionth of a unit (so rounding in the frame
    rate never adds a unit that only touches it). The one mapping from frames to audio, for cached features and
    online samples alike."""
    eps = 1e-6
    t0 = (np.asarray(start, np.float64) / fps - audio_start) * rate  # in units of the audio
    t1 = ((np.asarray(start, np.float64) + length) / fps - audio_start) * rate
    first = np.floor(t0 + eps).astype(np.int64)
    count = np.ceil(t1 - eps).astype(np.int64) - first
    return first, np.maximum(count, 1)
