"""Calibrating a run, export or ensemble (``expr calibrate``, :mod:`expr.cli.calibrate`): fit the per-class decision
offsets that raise macro-F1 (:mod:`expr.scoring.calibration`) on a labelled split, write them to ``calibration.json``
beside the run's config (or in the ensemble or export folder), and report the split without them, with them, and
cross-fitted.

From then on ``expr evaluate``, ``expr submit`` and ``expr predict`` apply them (before the smoothing);
``--eval.calibrate false`` ignores them, deleting the file removes them. The cross-fitted row is the one to judge by:
the frames are split into ``--groups`` groups of whole videos (the folds, for an ensemble of a k-fold study), and
each group is scored with offsets fitted on the others. If it does not beat the uncalibrated row, the offsets
follow noise of this split: do not use them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from expr.atomic import write_text
from expr.runs.evaluate import cross_fitted_metrics, decision_metrics, evaluate
from expr.runs.layout import CALIBRATION, ENSEMBLE, RunError, legacy_overrides
from expr.runs.report import write_report
from expr.runs.run import Run
from expr.scoring.calibration import fit_offsets, video_groups
from expr.scoring.decision import Decision

logger = logging.getLogger("expr.runs.calibrate")


def calibrate(
    path: str | Path, split: str = "validation", cache: str | None = None, device: str = "auto", groups: int = 5
) -> dict[str, Any]:
    """Fit, record and report the calibration of a run, export or ensemble folder on ``split``; returns the
    updated report (``path/eval/SPLIT/report.json``)."""
    path = Path(path)
    where = path / "eval" / split
    ensemble = (path / ENSEMBLE).is_file()
    if not ensemble:  # the run's raw frame probabilities, through evaluate's own path
        run = Run.open(path, legacy_overrides({"eval.calibrate": False}, cache))
        report, frames = evaluate(run, split, device, where)
        if not report:
            return {}  # a secondary process under accelerate launch: the main one fits and writes
        if frames is None:
            raise RunError(f"{path}: the run trained no expression classifier (train.tasks): nothing to calibrate")
        data = {"rows": frames.rows, "labels": frames.labels, "probs": frames.probs, "subject": frames.subject,
                "num_frames": frames.num_frames, "frame_offset": frames.frame_offset}  # fmt: skip
    elif cache is not None:
        raise RunError(f"{path} is an ensemble, scored on its members' store: --cache belongs to `expr ensemble`")
    elif not (where / "frame_probs.npz").is_file():
        raise RunError(f"{path}: no frame probabilities of split '{split}'; run `expr ensemble ... --split {split}`")
    else:
        report = json.loads((where / "report.json").read_text())
        data = dict(np.load(where / "frame_probs.npz"))
    if "subject" not in data:
        raise RunError(f"{where / 'frame_probs.npz'} predates calibration; run `expr ensemble` again")
    rows, labels = data["rows"], data["labels"]
    probs = data["probs"].astype(np.float64)
    classes = list(report["metrics"]["per_class_f1"])
    if "groups" in data:  # an ensemble of a k-fold study: its folds
        group, what, k = data["groups"], f"{len(np.unique(data['groups']))} folds", None
    else:  # whole raw videos (both tracks of one together)
        k = min(groups, len(np.unique(data["subject"])))
        group, what = video_groups(data["subject"], k), f"{k} groups of videos"
    offsets = fit_offsets(probs, labels)
    smoothing = report.get("smoothing") or {"method": "none", "width": 0}
    decision = Decision(tuple(float(v) for v in offsets), smoothing["method"], int(smoothing["width"]))
    geometry = (data["num_frames"], data["frame_offset"])
    report.update(decision_metrics(labels, rows, probs, *geometry, decision, classes))
    report.update(cross_fitted_metrics(labels, rows, probs, group, what, decision, *geometry, classes))
    held = report["cross_fitted_metrics"]
    info = {
        "classes": classes,
        "offsets": [float(v) for v in offsets],
        "fitted_on": {"split": split, "store": report["store"], "labelled_frames": int((labels >= 0).sum())},
        "macro_f1": {
            "uncalibrated": report["metrics"]["macro_f1"],
            "calibrated": report["calibrated_metrics"]["macro_f1"],
            "cross_fitted": report["cross_fitted_metrics"]["macro_f1"] if held is not None else None,
            "cross_fitted_on": what,
        },
        "groups": k,  # the groups of videos of the cross-fitted check (None: a k-fold ensemble's folds)
    }
    write_text(path / CALIBRATION, json.dumps(info, indent=2))
    write_report(where, report, classes)
    m = report["metrics"]["macro_f1"]
    if held is not None and report["cross_fitted_metrics"]["macro_f1"] <= m:
        logger.warning(
            "warning: cross-fitted, the calibration scores %.4f, not above %.4f without it: it does not carry to "
            "other videos; delete %s or pass --eval.calibrate false",
            report["cross_fitted_metrics"]["macro_f1"], m, path / CALIBRATION,
        )  # fmt: skip
    return report


__all__ = ["calibrate"]
