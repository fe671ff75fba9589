"""Post-processing studies (``type: posthoc``: the ``smoothing`` study of expressions, ``va_smoothing`` of valence
and arousal): one setting scored on a finished run's saved validation outputs, no retraining; and the report's
paragraph on the choice, with its in-sample score named optimistic beside a cross-fitted estimate
(:mod:`expr.scoring.selection`)."""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from expr.runs.layout import kept_validation
from expr.scoring.calibration import subject_ids
from expr.scoring.decision import frame_report, smooth_rows
from expr.scoring.metrics import va_report
from expr.scoring.selection import cross_fitted_choice
from expr.sweep.spec import Study, SweepError

VA_KEYS = ("eval.va_smoothing", "eval.va_smoothing_width")


def saved_validation(source_run: str | Path | None, va: bool = False) -> dict[str, Any]:
    """A run's best epoch's validation frames: ``rows``, ``outputs`` (EXPR probabilities, or with ``va`` the [N, 2]
    valence-arousal), ``labels`` (EXPR labels, or [N, 2] VA targets), ``classes``, and the store's ``num_frames``,
    ``frame_offset`` and ``names``."""
    if not source_run:
        raise SweepError("a posthoc study needs --run RUN_DIR (a finished run with best/val_frame_probs.npz)")
    saved = kept_validation(source_run, "va" if va else "expr")
    if saved is None:
        path = Path(source_run) / "best" / ("val_frame_va.npz" if va else "val_frame_probs.npz")
        what = "a run that trained valence-arousal (train.tasks with va)" if va else "the run"
        raise SweepError(f"{path} is missing: train {what} with this version of expr first")
    info = json.loads((Path(source_run) / "best" / "head.json").read_text())
    num_frames, frame_offset, names = _video_layout(info["store"]["path"])
    return {"rows": saved["rows"], "outputs": saved["outputs"].astype(np.float64), "labels": saved["labels"],
            "va": va, "classes": info["classes"], "num_frames": num_frames, "frame_offset": frame_offset,
            "names": names}  # fmt: skip


def smoothed(saved: dict[str, Any], values: dict[str, Any]) -> np.ndarray:
    """The saved outputs smoothed as the setting ``values`` says."""
    keys = VA_KEYS if saved["va"] else ("eval.smoothing", "eval.smoothing_width")
    method, width = values.get(keys[0], "mean"), int(values.get(keys[1], 0))
    return smooth_rows(saved["rows"], saved["outputs"], saved["num_frames"], saved["frame_offset"], method, width)


def score(saved: dict[str, Any], outputs: np.ndarray, rows=slice(None)) -> dict[str, Any]:
    """(the objective, its name, per-class F1 or None) of ``outputs`` on ``rows`` of the saved frames."""
    if saved["va"]:
        return {"value": va_report(outputs[rows], saved["labels"][rows])["ccc"], "objective": "val/ccc"}
    report = frame_report(saved["labels"][rows], outputs[rows], saved["classes"])
    return {"value": report["macro_f1"], "objective": "val/macro_f1", "per_class_f1": report["per_class_f1"]}


def posthoc_trial(values: dict[str, Any], source_run: str | None):
    """Score one post-processing setting on a run's saved validation outputs (no retraining)."""
    saved = saved_validation(source_run, va=any(k in VA_KEYS for k in values))
    result = score(saved, smoothed(saved, values))
    attrs = {"run_dir": str(source_run), "objective": result["objective"]}
    if "per_class_f1" in result:
        attrs["per_class_f1"] = result["per_class_f1"]
    return result["value"], attrs, False


def selection_paragraph(study: Study, source_run: str) -> str:
    """Markdown: the setting chosen on all the validation videos (in-sample, optimistic) and the cross-fitted
    estimate of choosing (on one half of the videos, scored on the other, both ways)."""
    saved = saved_validation(source_run, va=any(k in VA_KEYS for k in study.params))
    keys = list(study.params)
    settings = [dict(zip(keys, v, strict=True)) for v in itertools.product(*study.params.values())]
    outputs = [smoothed(saved, s) for s in settings]
    metric = "CCC" if saved["va"] else "macro-F1"
    subject = subject_ids(saved["names"], saved["rows"], saved["frame_offset"])
    choice = cross_fitted_choice(outputs, lambda out, rows: score(saved, out, rows)["value"], subject)

    def name(i: int) -> str:
        return ", ".join(f"{k} {v}" for k, v in settings[i].items())

    best = choice["in_sample"]
    lines = [f"**Choosing the setting.** In-sample (optimistic: chosen and scored on the same validation videos): "
             f"{name(best['setting'])}, {metric} {best['score']:.4f}."]  # fmt: skip
    cross = choice["cross_fitted"]
    if cross is None:
        lines.append("No cross-fitted estimate: the validation frames come from one raw video.")
    else:
        picks = " and ".join(name(i) for i in cross["settings"])
        lines.append(
            f"Cross-fitted (the validation videos in two halves, the setting chosen on one half scored on the other, "
            f"both ways): {metric} {cross['score']:.4f} (chosen: {picks}). Report the cross-fitted figure as what "
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
