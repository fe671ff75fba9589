"""The frame-level feature store: what ``expr prepare`` and the demo generator write, and training reads.

A store is a directory of Hugging Face ``datasets`` saved with ``save_to_disk`` plus a JSON header:

- ``frames/``: one row per video frame, in video order: ``video`` (int32 index into ``videos``), ``visual``
  (fp16 [visual_dim] frozen-CLIP embedding; zeros where no face), ``face`` (bool: a face crop exists), ``label``
  (int16 class index, ``-1`` = ignore, e.g. unannotated frames and test videos).
- ``audio/``: one row per audio feature frame, in video order: ``video``, ``audio`` (fp16 [audio_dim] Wav2Vec2
  hidden state).
- ``videos/``: one row per video: ``name``, ``split`` (``train`` / ``validation`` / ``test``), ``fps`` (the
  video's real frame rate), ``num_frames``, ``frame_offset`` (first row in ``frames``), ``num_audio``,
  ``audio_offset`` (first row in ``audio``), ``audio_rate`` (audio feature frames per second, 50 for Wav2Vec2),
  ``audio_start`` (time in seconds of audio frame 0 relative to video frame 0).
- ``store.json``: format version, feature widths, class names, backbones used and where the data came from.

Frame i of a video starts at time i / fps; audio frame j at ``audio_start + j / audio_rate``. So any window of
frames maps to its span of audio frames (:meth:`FrameStore.audio_span`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from expr.atomic import atomic_path

FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")
SIDES = ("_left", "_right")  # person tracks of one video: <video>_left, <video>_right


class StoreError(ValueError):
    """A feature store that cannot be read; the message names the path."""


@dataclass
class VideoRecord:
    """One video's frames and audio, as the store writer receives them."""

    name: str
    split: str
    fps: float
    visual: np.ndarray  # [T, visual_dim] float (stored fp16)
    face: np.ndarray  # [T] bool
    labels: np.ndarray  # [T] int, -1 = ignore
    audio: np.ndarray | None  # [Ta, audio_dim] or None when the video has no audio track
    audio_rate: float = 50.0
    audio_start: float = 0.0
    jpeg: list[bytes] | None = None  # [T] face crop files' bytes (b"" without a face), for online mode
    wave: np.ndarray | None = None  # [S] fp16 16 kHz mono samples (empty without audio), for online mode


VIDEO_COLUMNS = (
    "name",
    "split",
    "fps",
    "num_frames",
    "frame_offset",
    "num_audio",
    "audio_offset",
    "audio_rate",
    "audio_start",
)


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
    visual_raw, audio_raw = _RawColumn(tmp / ".visual.f16"), _RawColumn(tmp / ".audio.f16")
    small: dict[str, list[np.ndarray]] = {"video": [], "face": [], "label": [], "audio_video": []}
    rows: dict[str, list] = {k: [] for k in VIDEO_COLUMNS}
    visual_dim = audio_dim = None
    media = None
    frame_offset = audio_offset = 0
    for v in videos:
        if v.split not in SPLITS:
            raise StoreError(f"video '{v.name}': split '{v.split}' is not one of {SPLITS}")
        n = len(v.visual)
        if not (len(v.face) == len(v.labels) == n):
            raise StoreError(f"video '{v.name}': visual, face and labels lengths differ")
        if visual_dim is None:
            visual_dim = v.visual.shape[1]
        elif v.visual.shape[1] != visual_dim:
            raise StoreError(f"video '{v.name}': {v.visual.shape[1]}-d visual features, the others are {visual_dim}-d")
        has_media = v.jpeg is not None and v.wave is not None
        if media is None:
            media = has_media
        elif has_media != media:
            raise StoreError(f"{path}: some videos have face crops and audio for online mode, others not ({v.name})")
        na = 0 if v.audio is None else len(v.audio)
        values = (v.name, v.split, float(v.fps), n, frame_offset, na, audio_offset, v.audio_rate, v.audio_start)
        for key, value in zip(VIDEO_COLUMNS, values, strict=True):
            rows[key].append(float(value) if key in ("audio_rate", "audio_start") else value)
        small["video"].append(np.full(n, len(rows["name"]) - 1, np.int32))
        small["face"].append(np.asarray(v.face, bool))
        small["label"].append(np.asarray(v.labels, np.int16))
        visual_raw.append(v.visual)
        if na:
            if audio_dim is None:
                audio_dim = v.audio.shape[1]
            elif v.audio.shape[1] != audio_dim:
                raise StoreError(f"video '{v.name}': {v.audio.shape[1]}-d audio features, the others are {audio_dim}-d")
            small["audio_video"].append(np.full(na, len(rows["name"]) - 1, np.int32))
            audio_raw.append(v.audio)
        if media:
            if len(v.jpeg) != n:
                raise StoreError(f"video '{v.name}': {len(v.jpeg)} face crops for {n} frames")
            files["jpeg"].write(pa.table({"jpeg": pa.array(v.jpeg, pa.binary())}))
            files["wave"].write(pa.table({"wave": pa.array([np.asarray(v.wave, np.float16).tobytes()], pa.binary())}))
        frame_offset += n
        audio_offset += na
    if not rows["name"]:
        raise StoreError(f"{path}: no videos to write")
    meta = meta() if callable(meta) else meta
    audio_dim = audio_dim or int(meta.get("audio_dim", 768))

    def cat(key: str, dtype) -> np.ndarray:
        return np.concatenate(small[key]) if small[key] else np.zeros(0, dtype)

    frames = pa.table(
        {
            "video": pa.array(cat("video", np.int32)),
            "visual": visual_raw.column(visual_dim),
            "face": pa.array(cat("face", bool)),
            "label": pa.array(cat("label", np.int16)),
        }
    )
    audio = pa.table({"video": pa.array(cat("audio_video", np.int32)), "audio": audio_raw.column(audio_dim)})
    for name, table in (("frames", frames), ("audio", audio)):
        out = _ArrowFile(tmp / name)
        out.write(table)  # one record batch: the feature column is one contiguous buffer in the file
        out.save(None)
    del frames, audio
    visual_raw.path.unlink()
    audio_raw.path.unlink()
    if media:
        files["jpeg"].save(None)
        files["wave"].save(None)
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp / "videos"), num_shards=1)
    header = {"format_version": FORMAT_VERSION, "visual_dim": int(visual_dim), "audio_dim": int(audio_dim), **meta}
    (tmp / "store.json").write_text(json.dumps(header, indent=2))


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


def video_name(annotation_name: str) -> str:
    """The raw video an annotation belongs to: ``<video>_left`` and ``<video>_right`` share ``<video>``."""
    for side in SIDES:
        if annotation_name.endswith(side):
            return annotation_name[: -len(side)]
    return annotation_name


class FrameStore:
    """A store as flat numpy arrays (features memory-mapped, the rest in memory), with per-video offsets."""

    def __init__(self, path: str | Path, in_memory: bool = False):
        """``in_memory``: copy the feature arrays into RAM (faster first-touch random gathers, one copy per process)
        instead of mapping the store's files (opens in seconds, shared by every process through the page cache)."""
        import datasets

        self.path = Path(path)
        header_path = self.path / "store.json"
        if not header_path.is_file():
            raise StoreError(f"{self.path}: not a feature store (no store.json). Create one with `expr prepare`.")
        self.meta: dict[str, Any] = json.loads(header_path.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{self.path}: store format {self.meta.get('format_version')} is not the supported "
                f"format {FORMAT_VERSION}; prepare it again with this version of expr"
            )
        try:
            frames = datasets.load_from_disk(str(self.path / "frames")).data.table
            audio = datasets.load_from_disk(str(self.path / "audio")).data.table
            videos = datasets.load_from_disk(str(self.path / "videos"))
        except FileNotFoundError as e:
            raise StoreError(f"{self.path}: incomplete feature store ({e})") from None
        self.visual = _fixed_to_numpy(frames.column("visual"), self.meta["visual_dim"])  # [N, 512] fp16
        self.face = frames.column("face").to_numpy().astype(bool)  # [N]
        self.labels = frames.column("label").to_numpy().astype(np.int64)  # [N]
        self.audio = _fixed_to_numpy(audio.column("audio"), self.meta["audio_dim"])  # [Na, 768] fp16
        if in_memory:
            self.visual, self.audio = _in_ram(self.visual), _in_ram(self.audio)
        v = videos.to_dict()
        self.names: list[str] = v["name"]
        self.splits = np.array(v["split"])
        self.fps = np.asarray(v["fps"], np.float64)
        self.num_frames = np.asarray(v["num_frames"], np.int64)
        self.frame_offset = np.asarray(v["frame_offset"], np.int64)
        self.num_audio = np.asarray(v["num_audio"], np.int64)
        self.audio_offset = np.asarray(v["audio_offset"], np.int64)
        self.audio_rate = np.asarray(v["audio_rate"], np.float64)
        self.audio_start = np.asarray(v["audio_start"], np.float64)
        self.split_tag = ""  # names a re-split (k-fold) in window index keys

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def text_embeddings(self, template: str):
        """The class prompts' CLIP text embeddings stored by ``expr prepare`` (``text.safetensors``), or None when
        the store has none or they were made with another prompt template."""
        path = self.path / "text.safetensors"
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("template") != template:
                return None
            return f.get_tensor("text")

    def use_folds(self, folds: int, fold: int, seed: int = 0) -> None:
        """Re-split for k-fold cross-validation: train and validation videos pooled, grouped by subject (a video and
        its ``_left``/``_right`` tracks are one group), groups dealt to ``folds`` folds in a seeded random order;
        fold ``fold`` becomes ``validation``, the rest ``train``. Test videos stay ``test``."""
        pooled = np.flatnonzero(np.isin(self.splits, ["train", "validation"]))
        groups = sorted({video_name(self.names[v]) for v in pooled})
        if len(groups) < folds:
            raise StoreError(f"{self.path}: {len(groups)} subjects cannot fill {folds} folds")
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

    def videos_in(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def audio_span(self, video: np.ndarray, start: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """First audio frame (relative to the video's audio) and audio frame count of frame windows
        (:func:`audio_overlap` at each video's frame rate, ``audio_start`` and ``audio_rate``)."""
        return audio_overlap(start, length, self.fps[video], self.audio_start[video], self.audio_rate[video])


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
