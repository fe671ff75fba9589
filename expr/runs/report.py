"""What an evaluation writes: ``report.json``, ``report.md`` (tables a person reads), the confusion matrix, VA and AU
figures, and ``frame_probs.npz`` (raw frame probabilities, for calibration and ensembles)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from expr.atomic import atomic_path, write_text
from expr.plots import pyplot, save_figure


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
    if "p_mtl" in report:
        p = report["p_mtl"]
        row = f"| {p['score']:.4f} | {p['ccc']:.4f} | {p['macro_f1']:.4f} | {p['au_f1']:.4f} |"
        lines += ["", "## P_MTL (the multi-task challenge's score)", "", "| P_MTL | CCC | macro-F1 | AU F1 |",
                  "|---|---|---|---|", row, "",
                  "The sum of the valence-arousal CCC, the expressions' frame-level macro-F1 and the mean F1 of the 12 "
                  "units at 0.5, each on this split's frames the multi-task annotation labels for it (the tables above "
                  "and below)."]  # fmt: skip
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
