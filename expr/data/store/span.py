"""Where a window of frames lies in a store: the video of each frame row, and the span of audio units (feature
frames, or samples) that overlaps the window's time."""

from __future__ import annotations

import numpy as np


def video_of_rows(frame_offset: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The video of each frame row of a store whose videos start at ``frame_offset`` (ascending)."""
    return np.searchsorted(frame_offset, rows, side="right") - 1


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
