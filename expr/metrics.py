"""Classification metrics as the ABAW EXPR challenge computes them. Pure numpy; no accelerate.

Macro-F1 follows the challenge's scoring code, which calls scikit-learn's ``f1_score(average="macro")``
without a fixed label list: a class absent from both the targets and the predictions is left out of the
average (its per-class F1 is reported as NaN, ``null`` in JSON). A class present in only one of them counts
with F1 = 0. With all 8 classes present, this is the plain mean of the 8 per-class F1 scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

METRIC_PATH = str(Path(__file__).with_name("expr_f1"))
"""Folder of the ``evaluate`` metric module: ``evaluate.load(expr.metrics.METRIC_PATH)`` works offline."""


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
    """F1 per class from a confusion matrix; NaN for a class absent from both targets and predictions."""
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    denom = support + predicted
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2.0 * tp / denom, np.nan)
    return f1


def classification_report(
    targets: np.ndarray, predictions: np.ndarray, class_names: list[str] | tuple[str, ...]
) -> dict:
    """Macro-F1, per-class F1, accuracy and the confusion matrix of integer predictions."""
    num_classes = len(class_names)
    cm = confusion_matrix(targets, predictions, num_classes)
    f1 = per_class_f1(cm)
    total = cm.sum()
    present = ~np.isnan(f1)
    return {
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "accuracy": float(np.trace(cm) / total) if total else 0.0,
        "per_class_f1": {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, f1, strict=True)},
        "confusion_matrix": cm.tolist(),
        "count": int(total),
    }
