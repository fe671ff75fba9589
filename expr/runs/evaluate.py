"""``expr evaluate RUN_DIR``: frame-level evaluation of a trained head on a prepared split, with a report a person
reads (JSON, Markdown table, confusion-matrix PNG) written into the run directory.

    expr evaluate runs/2026-11-24_1200 [--cache CACHE] [--split validation] [--stride 5] [--smoothing mean --width 15]

The run's best head (``best/model.safetensors``) and its config are loaded; the cache defaults to the one the run
trained on. Windows of the run's length slide over every video of the split with ``--stride`` frames (default: the
run's ``data.eval_stride``); frame labels come from the path that training's validation, ``expr submit`` and
``expr predict`` share (:mod:`expr.scoring.decision`: window predictions placed at their label frames and interpolated,
frames without a face filled from the nearest face frame, the run's smoothing), so the report gives what a submission
of the split would score. Every frame whose label is not -1 is scored, without and with the temporal smoothing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from expr.atomic import atomic_path, write_text
from expr.config import resolve_device
from expr.data.affwild2 import AU_NAMES
from expr.data.source import open_store
from expr.data.store import video_of_rows
from expr.plots import pyplot, save_figure
from expr.runs.layout import (
    CALIBRATION,
    RunError,
    legacy_overrides,
    load_head,
    run_decision,
    run_encoders,
)
from expr.scoring.calibration import cross_fit, subject_ids, video_groups
from expr.scoring.decision import Decision, frame_report, smooth_rows
from expr.scoring.metrics import au_report, tune_au_thresholds, va_report
from expr.scoring.outputs import predict_outputs


class EvaluateError(RunError):
    """A run or cache that cannot be evaluated; the message names it."""


def trained_across_tasks(run_dir, cfg) -> bool:
    """Whether a run let one task train on another's validation or test videos: ``train.task_overlap allow``, or a
    run from before the option existed (its config has no such key; they all did)."""
    config = Path(run_dir) / "config.yaml"
    legacy = config.is_file() and "task_overlap" not in config.read_text()
    return cfg.train.task_overlap == "allow" or legacy


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

    model, info = load_head(run_dir, overrides=legacy_overrides(overrides, cache, stride, smoothing, width))
    cfg = info["cfg"]
    store = open_store(cfg)
    if split not in set(store.splits.tolist()):
        raise EvaluateError(f"{store.path}: no videos in split '{split}' (it has {sorted(set(store.splits.tolist()))})")
    if list(store.classes) != list(cfg.data.classes):
        raise EvaluateError(f"{store.path}: classes {store.classes} differ from the run's {list(cfg.data.classes)}")
    stride = cfg.data.resolved_eval_stride()
    decision = run_decision(run_dir, cfg)
    device = resolve_device(device)
    # Under `accelerate launch` each process takes whole videos (every world_size-th); the main process gathers
    # their frame probabilities and scores them: the same numbers as one process.
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        from accelerate import PartialState
        from accelerate.utils import gather_object

        state = PartialState(cpu=device == "cpu")
        rank, world = state.process_index, state.num_processes
    tasks = cfg.train.tasks
    missing = [t for t in tasks if t != "expr" and t not in store.task_splits]
    if missing:
        raise EvaluateError(f"{store.path} has no {' or '.join(missing)} labels to evaluate the run's {missing[0]} on")
    crossing = store.crossing_videos(tasks)
    if rank == 0 and len(tasks) > 1 and trained_across_tasks(run_dir, cfg) and len(crossing):
        print(f"warning: {run_dir} was trained with train.task_overlap=allow: {len(crossing)} "
              f"videos that one of its tasks validates or tests on trained another, so its validation scores are "
              f"not held out", file=sys.stderr)  # fmt: skip
    in_split = {t: store.videos_in(split, t) for t in tasks}
    videos = np.unique(np.concatenate(list(in_split.values())))  # those of the split of any task the run has
    rows, outputs = predict_outputs(
        model,
        store,
        split,
        cfg.data.window,
        stride,
        device=device,
        label_rule=cfg.data.label_frame,
        videos=videos[rank::world],
        mode=cfg.data.mode,
        encoders=run_encoders(run_dir, cfg, store, device),
        flip=cfg.eval.flip,
        tasks=tasks,
    )
    if world > 1:
        parts = gather_object([(rows, outputs)])
        if rank != 0:
            return {}
        rows = np.concatenate([r for r, _ in parts])
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        outputs = {t: np.concatenate([o[t] for _, o in parts])[order] for t in outputs}
    scored = {t: task_report(t, store, rows, outputs[t], in_split[t]) for t in tasks if t != "expr"}
    task_reports = {t: r for t, (r, _, _) in scored.items()}
    method, width = cfg.eval.va_smoothing, cfg.eval.va_smoothing_width
    if "va" in scored and method != "none" and width > 1:
        smoothed = smooth_rows(rows, outputs["va"], store.num_frames, store.frame_offset, method, width)
        r = task_report("va", store, rows, smoothed, in_split["va"])[0]
        task_reports["va"]["smoothed"] = {"method": method, "width": width,
                                          **{k: r[k] for k in ("ccc", "ccc_valence", "ccc_arousal")}}  # fmt: skip
    expr_rows = np.isin(video_of_rows(store.frame_offset, rows), in_split.get("expr", []))
    rows, probs = rows[expr_rows], outputs["expr"][expr_rows]
    labels = store.labels[rows]
    if "expr" in tasks and not (labels >= 0).any():
        raise EvaluateError(f"split '{split}' of {store.path} has no labelled frames (for test videos use expr submit)")
    if not any(r["frames"] for r in task_reports.values()) and "expr" not in tasks:
        raise EvaluateError(f"split '{split}' of {store.path} has no frames annotated for {', '.join(tasks)}")
    report = {
        "run": str(Path(run_dir).resolve()),
        "store": str(store.path.resolve()),
        "split": split,
        "folds": {"k": cfg.data.folds, "fold": cfg.data.fold} if cfg.data.folds else None,
        "window": cfg.data.window,
        "stride": stride,
        "videos": int(len(videos)),
        "frames": int(len(rows)),
        "labelled_frames": int((labels >= 0).sum()),
        "flip": bool(cfg.eval.flip and cfg.data.mode == "online"),
        "tasks": list(tasks),
        **(
            decision_metrics(labels, rows, probs, store.num_frames, store.frame_offset, decision, cfg.data.classes)
            if "expr" in tasks
            else {}
        ),  # fmt: skip
        **task_reports,
    }
    subject = subject_ids(store.names, rows, store.frame_offset)
    if "expr" in tasks:
        report.update(in_sample_calibration(run_dir, report, labels, rows, probs, subject, decision, store.num_frames,
                                            store.frame_offset, cfg.data.classes))  # fmt: skip
    out = Path(out_dir) if out_dir else Path(run_dir) / "eval" / split
    write_report(out, report, list(cfg.data.classes))
    if "va" in scored:
        plot_va(*scored["va"][1:], out / "va_density.png", f"{split}: CCC {task_reports['va']['ccc']:.4f}")
    if "au" in scored:
        plot_au(task_reports["au"], out / "au_f1.png", f"{split}: AU F1 {task_reports['au']['au_f1']:.4f}")
    if "expr" in tasks:
        save_frame_probs(out, rows, probs, labels, store.num_frames, store.frame_offset, subject=subject)
    return report


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


def plot_va(values: np.ndarray, targets: np.ndarray, path: Path, title: str) -> None:
    """Predicted against annotated valence and arousal as two density plots (2-D histograms, log colour), the
    diagonal marked."""
    import matplotlib

    plt = pyplot()
    keep = ~np.isnan(targets).any(1)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), dpi=110)
    for k, (ax, name) in enumerate(zip(axes, ("valence", "arousal"), strict=True)):
        ax.hist2d(targets[keep, k], values[keep, k], bins=40, range=[[-1, 1], [-1, 1]], cmap="viridis",
                  norm=matplotlib.colors.LogNorm(), cmin=1)  # fmt: skip
        ax.plot([-1, 1], [-1, 1], color="0.4", lw=1, ls="--")
        ax.set_xlabel(f"annotated {name}")
        ax.set_ylabel(f"predicted {name}")
        ax.set_aspect("equal")
    fig.suptitle(title)
    save_figure(fig, path)


def plot_au(report: dict[str, Any], path: Path, title: str) -> None:
    """F1 per action unit at 0.5 and at the tuned thresholds, as bars."""
    plt = pyplot()
    names = list(report["per_au_f1"])
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    ax.bar(np.arange(len(names)), [report["per_au_f1"][n] for n in names], color="#4C72B0")
    ax.axhline(report["au_f1"], color="black", lw=1, ls="--", label=f"mean {report['au_f1']:.3f}")
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1 (threshold 0.5)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    save_figure(fig, path)


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


def in_sample_calibration(
    run_dir, report: dict[str, Any], labels, rows, probs, subject, decision: Decision, num_frames, frame_offset, classes
) -> dict[str, Any]:
    """When the run's calibration (``expr calibrate``) was fitted on the split and store being scored: its held-out
    rows (:func:`cross_fitted_metrics`, over the same groups of videos as ``expr calibrate``); else nothing."""
    file = Path(run_dir) / CALIBRATION
    if not decision.offsets or not file.is_file():
        return {}
    info = json.loads(file.read_text())
    fitted = info.get("fitted_on", {})
    if fitted.get("split") != report["split"] or str(Path(fitted.get("store", "")).resolve()) != report["store"]:
        return {}
    k = min(int(info.get("groups") or 5), len(np.unique(subject)))
    groups = video_groups(subject, k)
    return cross_fitted_metrics(labels, rows, probs, groups, f"{k} groups of videos", decision, num_frames,
                                frame_offset, classes)  # fmt: skip


def save_frame_probs(out: Path, rows, probs, labels, num_frames, frame_offset, **extra) -> None:
    """``out/frame_probs.npz``: the frame rows, their raw probabilities (float64, before calibration and smoothing),
    labels, the store's video geometry (``num_frames``, ``frame_offset``) that smoothing needs, and ``extra`` arrays
    (``subject``: each row's raw video, for grouping; ``groups``: an out-of-fold ensemble's folds)."""
    with atomic_path(out / "frame_probs.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, rows=rows, probs=np.asarray(probs, np.float64), labels=labels, num_frames=num_frames,
                 frame_offset=frame_offset, **extra)  # fmt: skip


def write_report(out: Path, report: dict[str, Any], classes: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "report.json", json.dumps(report, indent=2))
    write_text(out / "report.md", markdown(report, classes) + task_markdown(report))
    if "metrics" not in report:  # a run without the expression task
        return
    plot_confusion(
        np.array(report["metrics"]["confusion_matrix"]),
        classes,
        out / "confusion_matrix.png",
        f"{report['split']}: frame-level macro-F1 {report['metrics']['macro_f1']:.4f}",
    )


def task_markdown(report: dict[str, Any]) -> str:
    """The VA and AU sections of report.md (empty for an expression-only run)."""
    lines = []
    if "va" in report:
        va = report["va"]
        lines += ["", "## Valence-arousal", "", "| | CCC | valence | arousal | frames |", "|---|---|---|---|---|",
                  f"| frame-level | {va['ccc']:.4f} | {va['ccc_valence']:.4f} | {va['ccc_arousal']:.4f} | "
                  f"{va['frames']} |"]  # fmt: skip
        if va.get("smoothed"):
            s = va["smoothed"]
            lines.append(f"| + {s['method']} smoothing, width {s['width']} | {s['ccc']:.4f} | {s['ccc_valence']:.4f} | "
                         f"{s['ccc_arousal']:.4f} | {va['frames']} |")  # fmt: skip
        lines += ["",
                  "CCC as the challenge scores it (the mean of valence's and arousal's), over the frames annotated "
                  "for VA of this split's VA videos.", "", "![valence-arousal](va_density.png)"]  # fmt: skip
    if "au" in report:
        au = report["au"]
        names = list(au["per_au_f1"])
        lines += ["", "## Action units", "", "| | mean F1 | " + " | ".join(names) + " | frames |",
                  "|---" * (len(names) + 3) + "|",
                  f"| threshold 0.5 | {au['au_f1']:.4f} | " + " | ".join(f"{au['per_au_f1'][n]:.3f}" for n in names)
                  + f" | {au['frames']} |",
                  f"| tuned thresholds | {au['au_f1_tuned']:.4f} | "
                  + " | ".join(f"{au['thresholds'][n]:.2f}" for n in names) + " | |", "",
                  "The challenge's score is the mean F1 over the 12 units at 0.5. The tuned row's thresholds (its "
                  "cells) were fitted per unit on these frames: optimistic here, to be fitted on validation and "
                  "applied to test.", "", "![AU F1](au_f1.png)"]  # fmt: skip
    return "\n".join(lines) + ("\n" if lines else "")


def markdown(report: dict[str, Any], classes: list[str]) -> str:
    if "metrics" not in report:
        return (f"# Evaluation: {report['split']}\n\nRun `{report['run']}`, store `{report['store']}`: "
                f"{report['videos']} videos, windows of {report['window']} frames every {report['stride']}; tasks "
                f"{', '.join(report['tasks'])} (each section counts its own annotated frames).\n")  # fmt: skip

    def f(v):
        return f"{v:.4f}"

    in_sample = report.get("calibration_in_sample")
    rows = [("frame-level", report["metrics"])]
    if report.get("calibrated_metrics"):
        name = "+ calibration (fitted on these frames: in-sample, optimistic)" if in_sample else "+ calibration"
        rows.append((name, report["calibrated_metrics"]))
    if report.get("cross_fitted_metrics"):
        rows.append((f"+ calibration, cross-fitted ({report['cross_fitted_groups']})", report["cross_fitted_metrics"]))
    s = report["smoothing"]
    if report["smoothed_metrics"]:
        on = " (on the in-sample calibration)" if in_sample and report.get("calibrated_metrics") else ""
        rows.append((f"+ {s['method']} smoothing, width {s['width']}{on}", report["smoothed_metrics"]))
    if report.get("cross_fitted_smoothed_metrics"):
        rows.append((f"+ {s['method']} smoothing, width {s['width']}, on the cross-fitted calibration",
                     report["cross_fitted_smoothed_metrics"]))  # fmt: skip
    head = "| | macro-F1 | accuracy | " + " | ".join(classes) + " |"
    sep = "|---" * (len(classes) + 3) + "|"
    lines = [
        f"# Evaluation: {report['split']}",
        "",
        f"Run `{report['run']}`, store `{report['store']}`: {report['videos']} videos, {report['frames']} frames "
        f"({report['labelled_frames']} labelled), windows of {report['window']} frames every {report['stride']}.",
        "",
        head,
        sep,
    ]
    for name, m in rows:
        per = " | ".join(f(m["per_class_f1"][c]) for c in classes)
        lines.append(f"| {name} | {f(m['macro_f1'])} | {f(m['accuracy'])} | {per} |")
    lines += ["", "Per-class cells are F1 scores. Macro-F1 is the mean over all classes, as the challenge scores it."]
    if report.get("calibrated_metrics"):
        lines.append(
            "Rows add their step to the one above. The calibration offsets were fitted on labelled frames (`expr "
            "calibrate`); scored on the split they were fitted on they are optimistic, the cross-fitted row (fitted on "
            "other videos or folds than it scores) is not."
        )
    absent = report["metrics"]["absent_classes"]
    if absent:
        lines.append(
            f"No frame of this split is labelled {', '.join(absent)}: they count 0 in macro-F1; the mean over the "
            f"other classes is {report['metrics']['macro_f1_present']:.4f}."
        )
    lines.append("")
    lines += [
        "Confusion matrix (rows: true class, columns: predicted):",
        "",
        "![confusion matrix](confusion_matrix.png)",
    ]
    return "\n".join(lines) + "\n"


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix with counts, readable at a glance."""

    plt = pyplot()

    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(cm.sum(1, keepdims=True) > 0, cm / cm.sum(1, keepdims=True), 0.0)
    fig, ax = plt.subplots(figsize=(1.0 * len(classes) + 2, 0.9 * len(classes) + 1.5), dpi=110)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=40, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                f"{norm[i, j]:.2f}\n{cm[i, j]}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    save_figure(fig, path)
