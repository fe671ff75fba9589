"""Post-processing studies (``type: posthoc``, the ``smoothing`` study): one setting scored on a finished run's
saved validation frame probabilities, no retraining; and the report's paragraph on the choice, with its in-sample
score named optimistic beside a cross-fitted estimate (:mod:`expr.selection`)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from expr.calibration import subject_ids
from expr.evaluation import frame_report, smooth_rows
from expr.selection import cross_fitted_choice
from expr.sweep.spec import Study, SweepError


def saved_validation(source_run: str | Path | None) -> dict[str, Any]:
    """A run's best epoch's validation frames: ``rows``, ``probs``, ``labels``, ``classes``, the store's
    ``num_frames`` / ``frame_offset`` and ``names``."""
    if not source_run:
        raise SweepError("a posthoc study needs --run RUN_DIR (a finished run with best/val_frame_probs.npz)")
    path = Path(source_run) / "best" / "val_frame_probs.npz"
    if not path.is_file():
        raise SweepError(f"{path} is missing: train the run (or re-train with this version of expr) first")
    saved = np.load(path)
    info = json.loads((Path(source_run) / "best" / "head.json").read_text())
    num_frames, frame_offset, names = _video_layout(info["store"]["path"])
    return {"rows": saved["rows"], "probs": saved["probs"].astype(np.float64), "labels": saved["labels"],
            "classes": info["classes"], "num_frames": num_frames, "frame_offset": frame_offset,
            "names": names}  # fmt: skip


def smoothed(saved: dict[str, Any], method: str, width: int) -> np.ndarray:
    return smooth_rows(saved["rows"], saved["probs"], saved["num_frames"], saved["frame_offset"], method, width)


def posthoc_trial(values: dict[str, Any], source_run: str | None):
    """Score one post-processing setting on a run's saved validation frame probabilities (no retraining)."""
    saved = saved_validation(source_run)
    method, width = values.get("eval.smoothing", "mean"), int(values.get("eval.smoothing_width", 0))
    report = frame_report(saved["labels"], smoothed(saved, method, width), saved["classes"])
    attrs = {"run_dir": str(source_run), "objective": "val/macro_f1", "per_class_f1": report["per_class_f1"]}
    return report["macro_f1"], attrs, False


def selection_paragraph(study: Study, source_run: str) -> str:
    """Markdown: the setting chosen on all the validation videos (in-sample, optimistic) and the cross-fitted
    estimate of choosing (on one half of the videos, scored on the other, both ways)."""
    import itertools

    saved = saved_validation(source_run)
    keys = list(study.params)
    settings = [dict(zip(keys, v, strict=True)) for v in itertools.product(*study.params.values())]
    outputs = [
        smoothed(saved, s.get("eval.smoothing", "mean"), int(s.get("eval.smoothing_width", 0))) for s in settings
    ]
    labels, classes = saved["labels"], saved["classes"]

    def score(probs: np.ndarray, rows: np.ndarray) -> float:
        return frame_report(labels[rows], probs[rows], classes)["macro_f1"]

    subject = subject_ids(saved["names"], saved["rows"], saved["frame_offset"])
    choice = cross_fitted_choice(outputs, score, subject)

    def name(i: int) -> str:
        return ", ".join(f"{k} {v}" for k, v in settings[i].items())

    best = choice["in_sample"]
    lines = [f"**Choosing the setting.** In-sample (optimistic: chosen and scored on the same validation videos): "
             f"{name(best['setting'])}, macro-F1 {best['score']:.4f}."]  # fmt: skip
    cross = choice["cross_fitted"]
    if cross is None:
        lines.append("No cross-fitted estimate: the validation frames come from one raw video.")
    else:
        picks = " and ".join(name(i) for i in cross["settings"])
        lines.append(
            f"Cross-fitted (the validation videos in two halves, the setting chosen on one half scored on the other, "
            f"both ways): macro-F1 {cross['score']:.4f} (chosen: {picks}). Report the cross-fitted figure as what "
            f"choosing a smoothing on validation gains; the in-sample one is its upper bound."
        )
    return " ".join(lines)


@functools.lru_cache(maxsize=4)
def _video_layout(store_path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(num_frames, frame_offset, names) per video of a store, from its small ``videos`` table only (no features)."""
    import datasets

    videos = datasets.load_from_disk(str(Path(store_path) / "videos"))
    return (np.asarray(videos["num_frames"], np.int64), np.asarray(videos["frame_offset"], np.int64),
            list(videos["name"]))  # fmt: skip
