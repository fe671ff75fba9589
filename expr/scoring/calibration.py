"""Decision calibration for macro-F1: one offset per class added to the log-probabilities before the argmax. Pure
numpy.

Macro-F1 rewards the rare classes as much as the common ones, and a model trained with cross-entropy predicts a rare
class less often than its share of the true labels warrants; shifting each class's log-probability by a constant
moves frames between classes without retraining. The offsets are fitted on frame probabilities of a labelled split
(:func:`fit_offsets`: coordinate ascent over a grid, one class at a time) and applied by the one path from window
probabilities to frame labels (:class:`expr.scoring.decision.Decision`), before the temporal smoothing.

A fit on the split it is scored on is optimistic. :func:`cross_fit` tells by how much: the frames are split into
groups of whole videos (both tracks of a raw video together; or the folds of a k-fold study), the offsets fitted on
all groups but one are scored on that one, and the held-out labels of every group together give the cross-fitted
macro-F1. Only the offsets are cross-fitted: anything else chosen on the same split (the best epoch, fitted ensemble
weights) stays optimistic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from expr.data.store import video_name, video_of_rows
from expr.scoring.metrics import confusion_matrix, per_class_f1

GRID = np.round(np.linspace(-4.0, 4.0, 33), 6)
"""The offsets tried for each class (steps of 0.25 in log-probability)."""
EPS = 1e-6


def log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, np.float64), EPS, None))


def apply_offsets(probs: np.ndarray, offsets: Sequence[float] | None) -> np.ndarray:
    """[N, C] probabilities with ``offsets`` [C] added to their logarithms, renormalised (None: unchanged)."""
    if offsets is None:
        return probs
    z = log_probs(probs) + np.asarray(offsets, np.float64)[None, :]
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    return float(per_class_f1(confusion_matrix(labels, predictions, num_classes)).mean())


def fit_offsets(probs: np.ndarray, labels: np.ndarray, rounds: int = 4, grid: np.ndarray = GRID) -> np.ndarray:
    """Offsets [C] maximising the macro-F1 of ``argmax(log probs + offsets)`` over the frames whose ``labels`` are
    not -1. Coordinate ascent: class by class (the first stays 0: only differences matter), the grid value with the
    best score (ties: the one nearest the current value), until a round changes nothing."""
    keep = np.asarray(labels) >= 0
    z, y = log_probs(probs)[keep], np.asarray(labels, np.int64)[keep]
    num_classes = z.shape[1]
    offsets = np.zeros(num_classes)
    best = macro_f1(y, z.argmax(1), num_classes)
    for _ in range(rounds):
        changed = False
        for c in range(1, num_classes):
            trial = offsets.copy()
            scores = []
            for value in grid:
                trial[c] = value
                scores.append(macro_f1(y, (z + trial).argmax(1), num_classes))
            scores = np.asarray(scores)
            top = np.flatnonzero(scores >= scores.max() - 1e-12)
            choice = float(grid[top[np.argmin(np.abs(grid[top] - offsets[c]))]])
            if scores.max() > best + 1e-12 and choice != offsets[c]:
                offsets[c], best, changed = choice, float(scores.max()), True
        if not changed:
            break
    return offsets


def cross_fit(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each group's frames calibrated with offsets fitted on the other groups: ([N, C] held-out calibrated
    probabilities, the offsets of each group in the order of ``np.unique(groups)``). Needs two or more groups."""
    groups = np.asarray(groups)
    names = np.unique(groups)
    if len(names) < 2:
        raise ValueError("cross-fitting needs two or more groups")
    out = np.empty_like(np.asarray(probs, np.float64))
    fitted = []
    for g in names:
        held = groups == g
        offsets = fit_offsets(probs[~held], np.asarray(labels)[~held])
        out[held] = apply_offsets(probs[held], offsets)
        fitted.append(offsets)
    return out, fitted


def video_groups(subject: np.ndarray, k: int) -> np.ndarray:
    """A group id per frame row: whole subjects (``subject``: an id per row, shared by the frames of a video and by
    the ``_left`` / ``_right`` tracks of one raw video, which must never be split) dealt round-robin into ``k``
    groups in order of first appearance."""
    _, first, inverse = np.unique(np.asarray(subject), return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))  # each subject's position by first appearance
    return (rank % max(k, 1))[inverse]


def subject_ids(names, rows: np.ndarray, frame_offset: np.ndarray) -> np.ndarray:
    """The subject id of every frame row of a store whose videos are ``names`` (``<video>_left`` / ``_right``
    tracks share their video's id)."""
    ids = {n: i for i, n in enumerate(dict.fromkeys(video_name(n) for n in names))}
    per_video = np.array([ids[video_name(n)] for n in names], np.int64)
    return per_video[video_of_rows(frame_offset, rows)]


__all__ = ["GRID", "apply_offsets", "cross_fit", "fit_offsets", "macro_f1", "subject_ids", "video_groups"]
