"""Evaluating a run (``expr evaluate``, :mod:`expr.cli.evaluate`): frame-level evaluation of a trained head on a
prepared split, with a report a person reads (JSON, Markdown table, confusion-matrix PNG) written into the run
directory.

How to run it, and what it writes: :mod:`expr.cli.evaluate`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from expr.config import resolve_device, scores_p_mtl
from expr.data.source import open_store
from expr.data.store import video_of_rows
from expr.runs.layout import (
    CALIBRATION,
    RunError,
    ensemble_members,
    legacy_overrides,
)
from expr.runs.report import plot_au, plot_va, save_frame_probs, write_report
from expr.runs.run import Run
from expr.scoring.calibration import cross_fit, subject_ids, video_groups
from expr.scoring.decision import Decision, frame_report, smooth_rows
from expr.scoring.metrics import au_report, tune_au_thresholds, va_report
from expr.tasks import AU_NAMES


class EvaluateError(RunError):
    """A run or cache that cannot be evaluated; the message names it."""


def trained_across_tasks(run_dir, cfg) -> bool:
    """Whether a run let one task train on another's validation or test videos: ``train.task_overlap allow``, or a
    run from before the option existed (its config has no such key; they all did)."""
    config = Path(run_dir) / "config.yaml"
    legacy = config.is_file() and "task_overlap" not in config.read_text()
    return cfg.train.task_overlap == "allow" or legacy


def report_folder(split: str, fps: float) -> str:
    """The folder under ``RUN/eval`` of a split's report: ``<split>``, or ``<split>-fps<N>`` beside it for a report
    at ``predict.fps`` N."""
    return split + (f"-fps{fps:g}" if fps else "")


def evaluate_run(
    run_dir: str | Path,
    cache: str | None = None,
    split: str = "validation",
    stride: int | None = None,
    smoothing: str | None = None,
    width: int | None = None,
    device: str = "auto",
    out_dir: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the run's best head on ``split``; write report.json, report.md and confusion_matrix.png. ``overrides``
    change the run's config where it can change after training (:data:`expr.runs.layout.RUN_OVERRIDES`); ``cache``,
    ``stride``, ``smoothing`` and ``width`` are the same as data.cache, data.eval_stride, eval.smoothing and
    eval.smoothing_width."""
    if ensemble_members(run_dir) is not None:
        raise RunError(
            f"{run_dir} is an ensemble folder: `expr ensemble` scores it (its report is under {run_dir}/eval/SPLIT); "
            f"`expr submit`, `expr predict` and `expr calibrate` take it like a run"
        )
    run = Run.open(run_dir, legacy_overrides(overrides, cache, stride, smoothing, width))
    return evaluate(run, split, device, out_dir)[0]


def evaluate(run: Run, split: str = "validation", device: str = "auto", out_dir=None):
    """(the report of :func:`evaluate_run`, the scored expression frames as :class:`Frames` or None) of an opened
    run. Under ``accelerate launch`` each process predicts whole videos and the main one scores them all (the
    others return ({}, None))."""
    cfg, tasks = run.cfg, run.cfg.train.tasks
    decision = run.decision  # its errors before the work
    store = split_store(run, split)
    in_split = {t: store.videos_in(split, t) for t in tasks}
    videos = np.unique(np.concatenate(list(in_split.values())))  # those of the split of any task the run has
    got = gathered_outputs(run, store, split, videos, resolve_device(device))
    if got is None:
        return {}, None
    rows, outputs = got
    task_reports, scored = other_task_reports(cfg, store, rows, outputs, in_split)
    expr_rows = np.isin(video_of_rows(store.frame_offset, rows), in_split.get("expr", []))
    frames = Frames.of_store(store, rows[expr_rows], outputs["expr"][expr_rows])
    if "expr" in tasks and not (frames.labels >= 0).any():
        raise EvaluateError(f"split '{split}' of {store.path} has no labelled frames (for test videos use expr submit)")
    if not any(r["frames"] for r in task_reports.values()) and "expr" not in tasks:
        raise EvaluateError(f"split '{split}' of {store.path} has no frames annotated for {', '.join(tasks)}")
    report = {
        "run": str(Path(run.path).resolve()),
        "store": str(store.path.resolve()),
        "split": split,
        "folds": {"k": cfg.data.folds, "fold": cfg.data.fold} if cfg.data.folds else None,
        "window": cfg.data.window,
        "stride": cfg.data.resolved_eval_stride(),
        "videos": int(len(videos)),
        "frames": int(len(frames.rows)),
        "labelled_frames": int((frames.labels >= 0).sum()),
        "flip": bool(cfg.eval.flip and cfg.data.mode == "online"),
        "predict_fps": cfg.predict.fps,  # image encodings per second (0: every frame)
        "tasks": list(tasks),
        **(frames.metrics(decision, cfg.data.classes) if "expr" in tasks else {}),
        **task_reports,
    }
    if scores_p_mtl(cfg):  # the multi-task challenge's score: the sum of the three rows below, on the same frames
        terms = {"ccc": task_reports["va"]["ccc"], "macro_f1": report["metrics"]["macro_f1"],
                 "au_f1": task_reports["au"]["au_f1"]}  # fmt: skip
        report["p_mtl"] = {"score": float(sum(terms.values())), **terms}
    if "expr" in tasks:
        report.update(in_sample_calibration(run.path, report, frames, decision, cfg.data.classes))
    out = Path(out_dir) if out_dir else Path(run.path) / "eval" / report_folder(split, cfg.predict.fps)
    write_report(out, report, list(cfg.data.classes))
    if "va" in scored:
        plot_va(*scored["va"][1:], out / "va_density.png", f"{split}: CCC {task_reports['va']['ccc']:.4f}")
    if "au" in scored:
        plot_au(task_reports["au"], out / "au_f1.png", f"{split}: AU F1 {task_reports['au']['au_f1']:.4f}")
    if "expr" in tasks:
        frames.save(out)
    return report, frames if "expr" in tasks else None


@dataclass
class Frames:
    """The scored frames of the expression task: store rows, raw probabilities (before the decision), labels, the
    store's video geometry that smoothing needs (``num_frames``, ``frame_offset``) and each row's raw video
    (``subject``, for grouping)."""

    rows: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    num_frames: np.ndarray
    frame_offset: np.ndarray
    subject: np.ndarray

    @classmethod
    def of_store(cls, store, rows: np.ndarray, probs: np.ndarray) -> Frames:
        subject = subject_ids(store.names, rows, store.frame_offset)
        return cls(rows, probs, store.labels[rows], store.num_frames, store.frame_offset, subject)

    @property
    def geometry(self) -> tuple[np.ndarray, np.ndarray]:
        return self.num_frames, self.frame_offset

    def metrics(self, decision: Decision, classes) -> dict[str, Any]:
        return decision_metrics(self.labels, self.rows, self.probs, *self.geometry, decision, classes)

    def save(self, out: Path) -> None:
        save_frame_probs(out, self.rows, self.probs, self.labels, *self.geometry, subject=self.subject)


def split_store(run: Run, split: str):
    """The run's store, checked: it has ``split``, the run's classes, and labels of every task the run trained;
    a warning when the run let one task train on another's held-out videos."""
    store, cfg = open_store(run.cfg), run.cfg
    if split not in set(store.splits.tolist()):
        raise EvaluateError(f"{store.path}: no videos in split '{split}' (it has {sorted(set(store.splits.tolist()))})")
    if list(store.classes) != list(cfg.data.classes):
        raise EvaluateError(f"{store.path}: classes {store.classes} differ from the run's {list(cfg.data.classes)}")
    tasks = cfg.train.tasks
    missing = [t for t in tasks if t != "expr" and t not in store.task_splits]
    if missing:
        raise EvaluateError(f"{store.path} has no {' or '.join(missing)} labels to evaluate the run's {missing[0]} on")
    crossing = store.crossing_videos(tasks)
    if int(os.environ.get("RANK", 0)) == 0 and len(tasks) > 1 and trained_across_tasks(run.path, cfg) and len(crossing):
        print(f"warning: {run.path} was trained with train.task_overlap=allow: {len(crossing)} "
              f"videos that one of its tasks validates or tests on trained another, so its validation scores are "
              f"not held out", file=sys.stderr)  # fmt: skip
    return store


def gathered_outputs(run: Run, store, split: str, videos: np.ndarray, device: str):
    """(frame rows in order, {task: raw outputs}) of ``videos``. Under ``accelerate launch`` each process takes whole
    videos (every world_size-th); the main process gathers their outputs (the same numbers as one process) and the
    others get None."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        from accelerate import PartialState
        from accelerate.utils import gather_object

        state = PartialState(cpu=device == "cpu")
        rank, world = state.process_index, state.num_processes
    rows, outputs = run.window_outputs(store, split, videos[rank::world], device)
    if world == 1:
        return rows, outputs
    parts = gather_object([(rows, outputs)])
    if rank != 0:
        return None
    rows = np.concatenate([r for r, _ in parts])
    order = np.argsort(rows, kind="stable")
    return rows[order], {t: np.concatenate([o[t] for _, o in parts])[order] for t in outputs}


def other_task_reports(cfg, store, rows, outputs, in_split):
    """({task: its report} and {task: (report, scored values, targets)}) of the VA / AU tasks the run trained, VA
    also smoothed as ``eval.va_smoothing`` says."""
    scored = {t: task_report(t, store, rows, outputs[t], in_split[t]) for t in cfg.train.tasks if t != "expr"}
    task_reports = {t: r for t, (r, _, _) in scored.items()}
    method, width = cfg.eval.va_smoothing, cfg.eval.va_smoothing_width
    if "va" in scored and method != "none" and width > 1:
        smoothed = smooth_rows(rows, outputs["va"], store.num_frames, store.frame_offset, method, width)
        r = task_report("va", store, rows, smoothed, in_split["va"])[0]
        task_reports["va"]["smoothed"] = {"method": method, "width": width,
                                          **{k: r[k] for k in ("ccc", "ccc_valence", "ccc_arousal")}}  # fmt: skip
    return task_reports, scored


def task_report(task: str, store, rows: np.ndarray, values: np.ndarray, videos: np.ndarray):
    """(the VA or AU scores, the scored [N, K] predictions, their targets) of frame ``values`` (rows ``rows``) over
    the annotated frames of the task's ``videos``, as the challenges score them; AU also with
    per-unit thresholds tuned on these frames (optimistic: fitted where they are scored)."""
    mine = np.isin(video_of_rows(store.frame_offset, rows), videos)
    targets, values = store.task_labels[task][rows[mine]], values[mine]
    if task == "va":
        r = va_report(values, targets)
        scores = {"ccc": r["ccc"], "ccc_valence": r["ccc_valence"], "ccc_arousal": r["ccc_arousal"]}
        return {**scores, "frames": r["count"]}, values, targets
    thresholds = tune_au_thresholds(values, targets)
    plain, tuned = au_report(values, targets, AU_NAMES), au_report(values, targets, AU_NAMES, thresholds)
    scores = {"au_f1": plain["au_f1"], "per_au_f1": plain["per_au_f1"], "au_f1_tuned": tuned["au_f1"],
              "thresholds": dict(zip(AU_NAMES, thresholds.tolist(), strict=True))}  # fmt: skip
    return {**scores, "frames": plain["count"]}, values, targets


def decision_metrics(labels, rows, probs, num_frames, frame_offset, decision: Decision, classes) -> dict[str, Any]:
    """The report's metrics of frame probabilities, step by step: ``metrics`` (the argmax), ``calibrated_metrics``
    (with the decision's offsets, None without), ``smoothed_metrics`` (offsets and smoothing: what a submission
    gets; None without smoothing), and the ``smoothing`` and ``calibration`` applied."""
    classes = list(classes)
    smoothing = decision.smoothing != "none" and decision.width > 1
    calibrated = decision.unsmoothed().rows(rows, probs, num_frames, frame_offset) if decision.offsets else None
    final = decision.rows(rows, probs, num_frames, frame_offset) if smoothing else None
    return {
        "smoothing": {"method": decision.smoothing, "width": decision.width},
        "calibration": dict(zip(classes, decision.offsets, strict=True)) if decision.offsets else None,
        "metrics": frame_report(labels, probs, classes),
        "calibrated_metrics": frame_report(labels, calibrated, classes) if calibrated is not None else None,
        "smoothed_metrics": frame_report(labels, final, classes) if final is not None else None,
    }


def cross_fitted_metrics(
    labels, rows, probs, groups, what: str, decision: Decision, num_frames, frame_offset, classes
) -> dict[str, Any]:
    """The report's held-out rows of a calibration fitted on these very frames (so its own row is in-sample):
    ``cross_fitted_metrics`` (each group of videos calibrated with offsets fitted on the others) and, with the
    decision's smoothing, ``cross_fitted_smoothed_metrics`` (those probabilities smoothed: a held-out estimate of
    what a submission gets); ``calibration_in_sample`` True."""
    out: dict[str, Any] = {"calibration_in_sample": True, "cross_fitted_groups": what, "cross_fitted_metrics": None,
                           "cross_fitted_smoothed_metrics": None}  # fmt: skip
    if len(np.unique(groups[np.asarray(labels) >= 0])) < 2:
        return out
    held = cross_fit(probs, labels, groups)[0]
    out["cross_fitted_metrics"] = frame_report(labels, held, classes)
    if decision.smoothing != "none" and decision.width > 1:
        smoothed = Decision(None, decision.smoothing, decision.width).rows(rows, held, num_frames, frame_offset)
        out["cross_fitted_smoothed_metrics"] = frame_report(labels, smoothed, classes)
    return out


def in_sample_calibration(run_dir, report: dict[str, Any], frames: Frames, decision: Decision, classes):
    """When the run's calibration (``expr calibrate``) was fitted on the split and store being scored: its held-out
    rows (:func:`cross_fitted_metrics`, over the same groups of videos as ``expr calibrate``); else nothing."""
    file = Path(run_dir) / CALIBRATION
    if not decision.offsets or not file.is_file():
        return {}
    info = json.loads(file.read_text())
    fitted = info.get("fitted_on", {})
    if fitted.get("split") != report["split"] or str(Path(fitted.get("store", "")).resolve()) != report["store"]:
        return {}
    subject = frames.subject
    k = min(int(info.get("groups") or 5), len(np.unique(subject)))
    groups = video_groups(subject, k)
    return cross_fitted_metrics(frames.labels, frames.rows, frames.probs, groups, f"{k} groups of videos", decision,
                                *frames.geometry, classes)  # fmt: skip
