"""Classification metrics as the ABAW EXPR challenge defines its score. Pure numpy; no accelerate.

The EXPR score is the average F1 over all classes of ``data.classes`` (8 for ABAW): scikit-learn's
``f1_score(labels=range(C), average="macro", zero_division=0)``. A class absent from the targets therefore counts
with F1 = 0 (whatever is predicted), which is what a fold or subset missing a rare class really scores; the report
names such classes and gives the mean over the classes present in the targets beside the headline number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

METRIC_PATH = str(Path(__file__).with_name("expr_f1"))
"""Folder of the ``evaluate`` metric module: ``evaluate.load(expr.scoring.metrics.METRIC_PATH)`` works offline."""


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] counts, rows = true class, columns = predicted class. Targets < 0 (ignored frames) are skipped."""
    targets = np.asarray(targets, dtype=np.int64).ravel()
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    if targets.shape != predictions.shape:
        raise ValueError(f"targets {targets.shape} and predictions {predictions.shape} differ in shape")
    keep = targets >= 0
    targets, predictions = targets[keep], predictions[keep]
    if targets.size and (targets.max() >= num_classes or predictions.min() < 0 or predictions.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return np.bincount(targets * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    """F1 per class from a confusion matrix: 2 TP / (support + predicted), 0 where both are 0."""
    tp = np.diag(cm).astype(np.float64)
    denom = (cm.sum(axis=1) + cm.sum(axis=0)).astype(np.float64)
    return np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def classification_report(
    targets: np.ndarray, predictions: np.ndarray, class_names: list[str] | tuple[str, ...]
) -> dict:
    """Macro-F1 over all classes, per-class F1, accuracy and the confusion matrix of integer predictions.

    ``absent_classes`` lists the classes with no target; ``macro_f1_present`` is the mean F1 over the others (equal
    to ``macro_f1`` when none is absent)."""
    num_classes = len(class_names)
    cm = confusion_matrix(targets, predictions, num_classes)
    f1 = per_class_f1(cm)
    total = cm.sum()
    present = cm.sum(axis=1) > 0
    return {
        "macro_f1": float(f1.mean()) if num_classes else 0.0,
        "macro_f1_present": float(f1[present].mean()) if present.any() else 0.0,
        "absent_classes": [name for name, p in zip(class_names, present, strict=True) if not p],
        "accuracy": float(np.trace(cm) / total) if total else 0.0,
        "per_class_f1": {name: float(v) for name, v in zip(class_names, f1, strict=True)},
        "confusion_matrix": cm.tolist(),
        "count": int(total),
    }


def ccc(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Lin's concordance correlation coefficient, as the ABAW VA challenge scores each dimension:
    2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2), population (co)variances. NaN targets are skipped."""
    x, y = np.asarray(predictions, np.float64).ravel(), np.asarray(targets, np.float64).ravel()
    keep = ~np.isnan(y)
    x, y = x[keep], y[keep]
    if len(x) == 0:
        return 0.0
    denom = x.var() + y.var() + (x.mean() - y.mean()) ** 2
    return float(2.0 * np.mean((x - x.mean()) * (y - y.mean())) / denom) if denom > 0 else 0.0


def va_report(predictions: np.ndarray, targets: np.ndarray) -> dict:
    """The VA score of [N, 2] (valence, arousal) predictions: ``ccc`` (the mean, the challenge's score),
    ``ccc_valence``, ``ccc_arousal``, over the frames whose targets are not NaN."""
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    keep = ~np.isnan(targets).any(1)
    valence = ccc(predictions[keep, 0], targets[keep, 0])
    arousal = ccc(predictions[keep, 1], targets[keep, 1])
    return {"ccc": (valence + arousal) / 2, "ccc_valence": valence, "ccc_arousal": arousal, "count": int(keep.sum())}


def au_report(probs: np.ndarray, targets: np.ndarray, names, thresholds=0.5) -> dict:
    """The AU score of [N, K] probabilities against 0/1 targets (rows of -1: unannotated, skipped): ``au_f1`` (the
    mean F1 over the K units, the challenge's score) and ``per_au_f1``, each unit thresholded at ``thresholds``
    (one number, or one per unit)."""
    probs, targets = np.asarray(probs, np.float64), np.asarray(targets)
    keep = (targets >= 0).all(1)
    predicted = probs[keep] >= np.broadcast_to(np.asarray(thresholds, np.float64), probs.shape[1:])
    f1 = np.array([_binary_f1(targets[keep, k], predicted[:, k]) for k in range(probs.shape[1])])
    return {
        "au_f1": float(f1.mean()) if len(f1) else 0.0,
        "per_au_f1": {name: float(v) for name, v in zip(names, f1, strict=True)},
        "count": int(keep.sum()),
    }


def _binary_f1(targets: np.ndarray, predicted: np.ndarray) -> float:
    targets, predicted = np.asarray(targets) == 1, np.asarray(predicted, bool)
    tp = float((targets & predicted).sum())
    denom = float(targets.sum() + predicted.sum())
    return 2.0 * tp / denom if denom > 0 else 0.0


def tune_au_thresholds(probs: np.ndarray, targets: np.ndarray, grid=None) -> np.ndarray:
    """Per-unit thresholds maximising each unit's F1 on labelled rows (ties: the one nearest 0.5); ``grid``
    defaults to 0.05 .. 0.95 in steps of 0.05."""
    grid = np.round(np.arange(0.05, 0.951, 0.05), 6) if grid is None else np.asarray(grid, np.float64)
    probs, targets = np.asarray(probs, np.float64), np.asarray(targets)
    keep = (targets >= 0).all(1)
    out = np.full(probs.shape[1], 0.5)
    for k in range(probs.shape[1]):
        scores = np.array([_binary_f1(targets[keep, k], probs[keep, k] >= t) for t in grid])
        top = np.flatnonzero(scores >= scores.max() - 1e-12)
        out[k] = grid[top[np.argmin(np.abs(grid[top] - 0.5))]]
    return out
