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

from dataclasses import dataclass
from typing import Any

import numpy as np

from expr.tasks import OTHER_TASKS, TASKS

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
    task_splits: dict[str, str] | None = None  # the split of each task annotating it ("va": "train", "mtl": ...)
    mtl: dict[str, np.ndarray] | None = None  # the multi-task challenge's labels ("expr" [T], "va", "au" as above)

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
TASK_LABELS = {name: (t.width, t.dtype, t.missing) for name, t in OTHER_TASKS.items()}
"""Aff-Wild2's other tasks' frame labels a store may hold beside the expression label: (width, dtype, unannotated)."""


MTL_LABELS = {
    name: (1, np.int16, t.missing) if t.kind == "classes" else (t.width, t.dtype, t.missing)
    for name, t in TASKS.items()
}
"""The multi-task challenge's frame labels a store may hold, each task in the frame column ``mtl_<task>`` (its
split in the video column ``split_mtl``), beside the uni-task ones: (width, dtype, unannotated)."""


DATA_FOLDERS = ("frames", "videos", "sets", "media")


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


def video_name(annotation_name: str) -> str:
    """The raw video an annotation belongs to: ``<video>_left`` and ``<video>_right`` share ``<video>``."""
    for side in SIDES:
        if annotation_name.endswith(side):
            return annotation_name[: -len(side)]
    return annotation_name
