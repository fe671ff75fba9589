"""From window probabilities to frame labels, as the challenge scores them. Pure numpy.

One path, used by training's validation, ``expr evaluate``, ``expr submit``, ``expr predict`` and the smoothing
study:

1. :func:`frame_probabilities` places each window's class probabilities on the frames its training target stands
   for (:func:`aggregate_frames`), then gives each frame without a face the probabilities of the nearest frame with
   one (:func:`fill_missing_faces`);
2. a :class:`Decision` adds the run's (or ensemble's) per-class calibration offsets to the log-probabilities
   (:mod:`expr.scoring.calibration`, when ``expr calibrate`` fitted them) and applies the temporal post-processing
   (``eval.smoothing``) per video (:func:`smooth_rows`);
3. the label of a frame is the argmax; every frame whose label is not -1 is scored (:func:`frame_report`).

A window trained with ``data.label_frame`` ``center`` or ``last`` learned the label of one frame (its target,
:func:`expr.data.windows.label_position`). Its prediction is therefore placed at that frame, and every other frame
takes the linear interpolation between the two nearest window targets of its video. Windows reach past a video's
ends (:func:`expr.data.windows.window_starts`), so its first and last frames are targets of their own windows. With
evaluation windows every ``eval_stride`` frames, a classifier that predicts each window's target perfectly labels
every frame correctly except within ``eval_stride / 2`` frames of a label change.
A ``majority`` window learned the majority label of all its frames, so its prediction is spread evenly over them and
a frame takes the mean over the windows covering it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from expr.config import SMOOTHING, VA_SMOOTHING
from expr.data.store import video_of_rows
from expr.data.windows import label_position
from expr.scoring.calibration import apply_offsets
from expr.scoring.metrics import classification_report

METHODS = tuple(dict.fromkeys(SMOOTHING + VA_SMOOTHING))  # every temporal smoothing (EXPR and VA)


def aggregate_frames(
    num_frames: np.ndarray,
    frame_offset: np.ndarray,
    total_frames: int,
    video: np.ndarray,
    start: np.ndarray,
    window: int,
    probs: np.ndarray,
    rule: str = "center",
) -> tuple[np.ndarray, np.ndarray]:
    """Window probabilities placed on frames (see the module docstring).

    ``num_frames`` / ``frame_offset`` describe the videos (indexed by ``video``), ``total_frames`` the length of the
    frame array; window w starts at frame ``start[w]`` of video ``video[w]`` and has ``window`` frames (clipped at the
    video's end); ``rule`` is the ``data.label_frame`` it was trained with. Returns ([total_frames, C] probabilities,
    [total_frames] True where a frame got a prediction: every frame of a video with at least one window)."""
    probs = np.asarray(probs, np.float64)
    out = np.zeros((total_frames, probs.shape[1] if probs.ndim == 2 else 0), np.float64)
    covered = np.zeros(total_frames, bool)
    video, start = np.asarray(video, np.int64), np.asarray(start, np.int64)
    if len(video) == 0:
        return out, covered
    if rule == "majority":
        frame = start[:, None] + np.arange(window)[None, :]  # [W, T]
        inside = (frame >= 0) & (frame < num_frames[video][:, None])
        rows = (frame_offset[video][:, None] + frame)[inside]
        which = np.broadcast_to(np.arange(len(video))[:, None], frame.shape)[inside]
        counts = np.zeros(total_frames, np.int64)
        np.add.at(out, rows, probs[which])
        np.add.at(counts, rows, 1)
        covered = counts > 0
        out[covered] /= counts[covered, None]
        return out, covered
    target = label_position(start, window, num_frames[video], rule)
    order = np.lexsort((target, video))
    video, target, probs = video[order], target[order], probs[order]
    bounds = np.flatnonzero(np.diff(video)) + 1
    for group in np.split(np.arange(len(video)), bounds):
        v = int(video[group[0]])
        at, inverse = np.unique(target[group], return_inverse=True)  # windows sharing a target are averaged
        means = np.zeros((len(at), probs.shape[1]))
        np.add.at(means, inverse, probs[group])
        means /= np.bincount(inverse)[:, None]
        a, n = int(frame_offset[v]), int(num_frames[v])
        out[a : a + n] = between_targets(at, means, np.arange(n))
        covered[a : a + n] = True
    return out, covered


def between_targets(at: np.ndarray, means: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """The outputs of ``frames`` from those of the window targets ``at`` (sorted frames, ``means`` [len(at), C]):
    linearly interpolated between the two nearest targets, a frame past the last (or before the first) target takes
    its outputs. ``expr predict --stream`` calls it on each pair of targets as the later one's window is known."""
    j = np.clip(np.searchsorted(at, frames, side="right") - 1, 0, len(at) - 1)  # the target at or before
    k = np.minimum(j + 1, len(at) - 1)  # the next one
    gap = (at[k] - at[j]).astype(np.float64)
    w = np.where(gap > 0, np.clip((frames - at[j]) / np.maximum(gap, 1.0), 0.0, 1.0), 0.0)
    return (1.0 - w)[:, None] * means[j] + w[:, None] * means[k]


def fill_missing_faces(probs: np.ndarray, face: np.ndarray) -> np.ndarray:
    """One video's [T, C] rows: a frame without a face takes the row of the nearest frame with one (the earlier on
    a tie): its window predictions come from the neighbours anyway, and this keeps runs of missing crops from
    drifting. A video without any face keeps its rows (predicted from audio alone)."""
    face = np.asarray(face, bool)
    if face.all() or not face.any():
        return probs
    idx = np.flatnonzero(face)
    pos = np.searchsorted(idx, np.arange(len(face)))
    before = idx[np.clip(pos - 1, 0, len(idx) - 1)]
    after = idx[np.clip(pos, 0, len(idx) - 1)]
    t = np.arange(len(face))
    nearest = np.where(np.abs(t - before) <= np.abs(after - t), before, after)
    return probs[np.where(face, t, nearest)]


def frame_probabilities(
    num_frames: np.ndarray,
    frame_offset: np.ndarray,
    face: np.ndarray,
    videos: Sequence[int],
    video: np.ndarray,
    start: np.ndarray,
    window: int,
    probs: np.ndarray,
    rule: str = "center",
) -> tuple[np.ndarray, np.ndarray]:
    """Step 1 of the path for whole ``videos`` of a store (``num_frames``, ``frame_offset``, per-frame ``face``):
    (frame rows of ``videos`` in their order, [rows, C] probabilities) from the windows' ``probs`` (windows of other
    videos are ignored)."""
    videos = np.asarray(videos, np.int64)
    counts = np.asarray(num_frames, np.int64)[videos]
    local = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)  # each video's first row in the output
    slot = np.full(len(num_frames), -1, np.int64)
    slot[videos] = np.arange(len(videos))
    mine = slot[np.asarray(video, np.int64)] >= 0
    out, _ = aggregate_frames(
        counts, local, int(counts.sum()), slot[video][mine], np.asarray(start)[mine], window, probs[mine], rule
    )
    rows = [np.arange(frame_offset[v], frame_offset[v] + n) for v, n in zip(videos, counts, strict=True)]
    for a, n, r in zip(local, counts, rows, strict=True):
        out[a : a + n] = fill_missing_faces(out[a : a + n], face[r])
    return (np.concatenate(rows) if rows else np.zeros(0, np.int64)), out


def smooth(probs: np.ndarray, method: str = "none", width: int = 0) -> np.ndarray:
    """Temporal post-processing of one video's [T, C] frame probabilities; returns [T, C].

    ``mean``: centred moving average of the probabilities over ``width`` frames (edges average what exists).
    ``mode``: centred mode filter of the per-frame argmax over ``width`` frames (sliding-window voting), returned as
    one-hot rows (ties go to the lower class index). ``median`` (for values such as valence and arousal): centred
    moving median of each column (edges: of what exists). ``none`` or ``width`` <= 1: unchanged."""
    if method not in METHODS:
        raise ValueError(f"unknown smoothing '{method}'; choose one of {', '.join(METHODS)}")
    if method == "none" or width <= 1 or len(probs) == 0:
        return probs
    T, C = probs.shape
    half = width // 2
    lo = np.maximum(np.arange(T) - half, 0)
    hi = np.minimum(np.arange(T) - half + width, T)
    if method == "mean":
        cum = np.concatenate([np.zeros((1, C)), np.cumsum(probs, axis=0)])
        return (cum[hi] - cum[lo]) / (hi - lo)[:, None]
    if method == "median":
        padded = np.pad(np.asarray(probs, np.float64), ((half, width - 1 - half), (0, 0)), constant_values=np.nan)
        return np.nanmedian(np.lib.stride_tricks.sliding_window_view(padded, width, axis=0), axis=-1)  # [T, C]
    votes = np.zeros((T + 1, C), np.int64)
    votes[1:][np.arange(T), probs.argmax(1)] = 1
    votes = np.cumsum(votes, axis=0)
    winner = (votes[hi] - votes[lo]).argmax(1)
    return np.eye(C)[winner]


def smooth_rows(
    rows: np.ndarray, probs: np.ndarray, num_frames: np.ndarray, frame_offset: np.ndarray, method: str, width: int
) -> np.ndarray:
    """Step 2 of the path: :func:`smooth` per video for the probabilities of frame ``rows`` (whole videos of a store
    whose videos have ``num_frames`` / ``frame_offset``, in any order); returns [len(rows), C] in the same order."""
    if method not in METHODS:
        raise ValueError(f"unknown smoothing '{method}'; choose one of {', '.join(METHODS)}")
    if method == "none" or width <= 1 or len(rows) == 0:
        return probs
    owner = video_of_rows(frame_offset, rows)
    order = np.lexsort((rows, owner))  # by video, then time
    out = np.array(probs, np.float64, copy=True)
    for at in np.split(order, np.flatnonzero(np.diff(owner[order])) + 1):
        out[at] = smooth(out[at], method, width)
    return out


@dataclass(frozen=True)
class Decision:
    """Step 2 of the path: what a run or an ensemble does to frame probabilities before the argmax. ``offsets``
    (one per class, or None) shift the log-probabilities (decision calibration), then ``smoothing`` / ``width``
    smooth each video in time."""

    offsets: tuple[float, ...] | None = None
    smoothing: str = "none"
    width: int = 0

    def video(self, probs: np.ndarray) -> np.ndarray:
        """One video's [T, C] frame probabilities, in time order."""
        return smooth(apply_offsets(probs, self.offsets), self.smoothing, self.width)

    def rows(self, rows: np.ndarray, probs: np.ndarray, num_frames: np.ndarray, frame_offset: np.ndarray):
        """The probabilities of whole videos' frame ``rows`` of a store (``num_frames``, ``frame_offset``)."""
        calibrated = apply_offsets(probs, self.offsets)
        return smooth_rows(rows, calibrated, num_frames, frame_offset, self.smoothing, self.width)

    def unsmoothed(self) -> Decision:
        return Decision(self.offsets)


def frame_report(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Step 3: the classification report of the argmax of [N, C] ``probs`` over the frames whose ``labels`` [N] are
    not -1."""
    keep = np.asarray(labels) >= 0
    return classification_report(np.asarray(labels)[keep], np.asarray(probs)[keep].argmax(1), list(classes))
