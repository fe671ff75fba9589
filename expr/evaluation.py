"""Frame-level evaluation as the challenge scores it, and temporal post-processing. Pure numpy.

The model predicts one class distribution per window. A frame's distribution is the mean over all windows that
cover it (with ``data.eval_stride`` < ``data.window`` a frame is covered by several overlapping windows); every
frame whose label is not ``-1`` is scored. Post-processing (``smooth``) then works on each video's sequence of frame
distributions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from expr.metrics import classification_report

SMOOTHING = ("none", "mean", "mode")


def aggregate_frames(
    num_frames: np.ndarray,
    frame_offset: np.ndarray,
    total_frames: int,
    video: np.ndarray,
    start: np.ndarray,
    window: int,
    probs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Average window probabilities onto frames.

    ``num_frames`` / ``frame_offset`` describe the videos (indexed by ``video``), ``total_frames`` the length of the
    frame array; window w covers frames ``start[w] .. start[w] + window - 1`` of video ``video[w]`` (clipped at the
    video's end). Returns ([total_frames, C] mean probabilities, [total_frames] windows covering each frame)."""
    probs = np.asarray(probs, np.float64)
    sums = np.zeros((total_frames, probs.shape[1]), np.float64)
    counts = np.zeros(total_frames, np.int64)
    if len(video) == 0:
        return sums, counts
    frame = start[:, None] + np.arange(window)[None, :]  # [W, T]
    inside = frame < num_frames[video][:, None]
    rows = (frame_offset[video][:, None] + frame)[inside]
    which = np.broadcast_to(np.arange(len(video))[:, None], frame.shape)[inside]
    np.add.at(sums, rows, probs[which])
    np.add.at(counts, rows, 1)
    covered = counts > 0
    sums[covered] /= counts[covered, None]
    return sums, counts


def smooth(probs: np.ndarray, method: str = "none", width: int = 0) -> np.ndarray:
    """Temporal post-processing of one video's [T, C] frame probabilities; returns [T, C].

    ``mean``: centred moving average of the probabilities over ``width`` frames (edges average what exists).
    ``mode``: centred mode filter of the per-frame argmax over ``width`` frames (sliding-window voting), returned as
    one-hot rows (ties go to the lower class index). ``none`` or ``width`` <= 1: unchanged."""
    if method not in SMOOTHING:
        raise ValueError(f"unknown smoothing '{method}'; choose one of {', '.join(SMOOTHING)}")
    if method == "none" or width <= 1 or len(probs) == 0:
        return probs
    T, C = probs.shape
    half = width // 2
    lo = np.maximum(np.arange(T) - half, 0)
    hi = np.minimum(np.arange(T) - half + width, T)
    if method == "mean":
        cum = np.concatenate([np.zeros((1, C)), np.cumsum(probs, axis=0)])
        return (cum[hi] - cum[lo]) / (hi - lo)[:, None]
    votes = np.zeros((T + 1, C), np.int64)
    votes[1:][np.arange(T), probs.argmax(1)] = 1
    votes = np.cumsum(votes, axis=0)
    winner = (votes[hi] - votes[lo]).argmax(1)
    return np.eye(C)[winner]


def smooth_videos(
    probs: np.ndarray, num_frames: np.ndarray, frame_offset: np.ndarray, videos: Sequence[int], method: str, width: int
) -> np.ndarray:
    """:func:`smooth` applied to each of ``videos`` inside a frame-probability array (other rows unchanged)."""
    if method == "none" or width <= 1:
        return probs
    out = probs.copy()
    for v in videos:
        a, b = int(frame_offset[v]), int(frame_offset[v] + num_frames[v])
        out[a:b] = smooth(probs[a:b], method, width)
    return out


def smooth_rows(
    rows: np.ndarray, probs: np.ndarray, num_frames: np.ndarray, frame_offset: np.ndarray, method: str, width: int
) -> np.ndarray:
    """:func:`smooth` per video for the probabilities of frame ``rows`` (whole videos of a store whose videos have
    ``num_frames`` / ``frame_offset``); returns [len(rows), C] in the same order."""
    if method == "none" or width <= 1:
        return probs
    full = np.zeros((int(num_frames.sum()), probs.shape[1]), np.float64)
    full[rows] = probs
    videos = np.unique(np.searchsorted(frame_offset, rows, side="right") - 1)
    return smooth_videos(full, num_frames, frame_offset, videos, method, width)[rows]


def frame_report(labels: np.ndarray, probs: np.ndarray, rows: np.ndarray, classes: Sequence[str]) -> dict:
    """The classification report over the labelled frames among ``rows``."""
    rows = rows[labels[rows] >= 0]
    return classification_report(labels[rows], probs[rows].argmax(1), list(classes))
