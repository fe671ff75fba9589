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
