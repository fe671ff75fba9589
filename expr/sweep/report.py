"""A study's results: ``results.csv`` (one row per trial), ``report.md`` (mean +- std per setting over its repeats,
per-class F1, the paper's Table 1 beside the window study) and plots."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from expr.atomic import atomic_path, write_text
from expr.plots import pyplot, save_figure
from expr.sweep.posthoc import selection_paragraph
from expr.sweep.spec import Study

logger = logging.getLogger("expr.sweep")


def results_table(handle, study: Study) -> list[dict[str, Any]]:
    """One row per finished trial (complete or pruned)."""
    from optuna.trial import TrialState

    rows = []
    for t in handle.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        values = dict(t.params)
        objective = t.user_attrs.get("objective", "val/macro_f1")
        row = {"trial": t.number, "state": t.state.name.lower(), "value": t.value, "objective": objective}
        row["macro_f1"] = t.value if objective == "val/macro_f1" else t.user_attrs.get("macro_f1")
        row.update(values)
        for cls, f1 in (t.user_attrs.get("per_class_f1") or {}).items():
            row[f"f1/{cls}"] = f1
        for key, column in TASK_COLUMNS.items():  # each task's own metric (a multi-task study), where trained
            if key in (t.user_attrs.get("task_scores") or {}):
                row[column] = t.user_attrs["task_scores"][key]
        if t.user_attrs.get("task_scores"):
            row["steps"] = t.user_attrs.get("steps")
        row["best_epoch"] = t.user_attrs.get("best_epoch")
        row["run_dir"] = t.user_attrs.get("run_dir")
        rows.append(row)
    return rows


OBJECTIVES = {"val/macro_f1": "macro-F1", "val/ccc": "CCC", "val/au_f1": "AU F1", "val/score": "sum of task scores",
              "val/p_mtl": "P_MTL"}  # fmt: skip
"""How a report names each objective a study may optimise (a run's ``train.select``)."""
TASK_COLUMNS = {"val/macro_f1": "task/macro_f1", "val/ccc": "task/ccc", "val/au_f1": "task/au_f1",
                "val/p_mtl": "task/p_mtl"}  # fmt: skip
"""Each task's score (and P_MTL) at a trial's best epoch, as ``results.csv`` names its column."""


def objective_of(rows: list[dict[str, Any]]) -> str:
    """The metric a study's trials optimised (their runs' selection metric)."""
    return next((r["objective"] for r in rows), "val/macro_f1")


def setting_of(row: dict[str, Any], study: Study) -> tuple:
    return tuple((k, row.get(k)) for k in study.params)


def summarise(rows: list[dict[str, Any]], study: Study) -> list[dict[str, Any]]:
    """Per setting: mean and std of the objective (macro-F1 unless the runs select by another task's score) and
    per-class F1 over its repeats (seeds x folds)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["state"] == "complete":
            groups.setdefault(setting_of(r, study), []).append(r)
    out = []
    for setting, members in groups.items():
        f1 = np.array([m["value"] for m in members], float)
        classes = [k for k in members[0] if k.startswith("f1/")]
        per_class = {}
        for c in classes:
            vals = [m[c] for m in members if m.get(c) is not None]
            per_class[c[3:]] = float(np.mean(vals)) if vals else None
        tasks = {}
        for column in TASK_COLUMNS.values():  # None: the setting does not train the task (or P_MTL's three)
            vals = [m[column] for m in members if m.get(column) is not None]
            tasks[column] = (
                (float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0) if vals else None
            )
        out.append(
            {
                "setting": dict(setting),
                "n": len(members),
                "mean": float(f1.mean()),
                "std": float(f1.std(ddof=1)) if len(f1) > 1 else 0.0,
                "per_class": per_class,
                "tasks": tasks,
                "steps_per_epoch": _steps_per_epoch(members[0]),
            }
        )
    if study.type == "grid" or study.type == "posthoc":
        order = {tuple(map(repr, p)): i for i, p in enumerate(_grid_order(study))}
        out.sort(key=lambda s: order.get(tuple(repr(v) for v in s["setting"].values()), math.inf))
    else:
        out.sort(key=lambda s: -s["mean"])
    return out


def _steps_per_epoch(row: dict[str, Any]) -> int | None:
    """Optimizer steps per epoch of a trial's run (every epoch has as many): its steps to the best epoch over it."""
    steps, epoch = row.get("steps"), row.get("best_epoch")
    return int(steps) // int(epoch) if steps not in (None, "") and epoch not in (None, "", 0) else None


def multi_task(summary) -> bool:
    """Whether some setting of a study trains valence-arousal or the units (its report gets the per-task table)."""
    return any(s["tasks"].get(c) for s in summary for c in ("task/ccc", "task/au_f1"))


def _grid_order(study: Study) -> list[tuple]:
    import itertools

    return list(itertools.product(*study.params.values()))


def write_report(handle, study: Study, out: Path, paper: dict | None = None) -> Path:
    """``results.csv``, ``report.md`` (Table 1's shape) and plots (a bar chart; importance and parallel-coordinate
    plots for search studies)."""
    rows = results_table(handle, study)
    summary = summarise(rows, study)
    out.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    write_text(out / "report.md", report_markdown(study, summary, rows, handle, paper))
    if summary and multi_task(summary):
        task_chart(study, summary, out / f"{study.name}.png")
    elif summary:
        bar_chart(study, summary, out / f"{study.name}.png", objective_of(rows))
    if study.type == "search" and sum(r["state"] == "complete" for r in rows) >= 2:
        optuna_plots(handle, out)
    return out / "report.md"


PAPER_TABLE1 = {10: 0.3265, 15: 0.3324, 30: 0.3670, 60: 0.3599}


def report_markdown(study: Study, summary, rows, handle, paper: dict | None) -> str:
    from optuna.trial import TrialState

    counts = {s.name.lower(): len(handle.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    keys = list(study.params)
    classes = list(summary[0]["per_class"]) if summary else []
    paper_col = study.name == "window" and keys == ["data.window"]
    name = OBJECTIVES.get(objective_of(rows), objective_of(rows))
    head = "| " + " | ".join(keys) + f" | {name} | n |" + (" paper |" if paper_col else "")
    head += "".join(f" {c} |" for c in classes)
    sep = "|---" * (len(keys) + 2 + int(paper_col) + len(classes)) + "|"
    lines = [f"# Study `{study.name}`", "", study.description.strip(), ""]
    if multi_task(summary):
        lines += task_table(summary, keys, rows)
    lines += [head, sep]
    for s in summary:
        vals = " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in s["setting"].values())
        f1 = f"{s['mean']:.4f} ± {s['std']:.4f}" if s["n"] > 1 else f"{s['mean']:.4f}"
        line = f"| {vals} | {f1} | {s['n']} |"
        if paper_col:
            p = PAPER_TABLE1.get(s["setting"]["data.window"])
            line += f" {p:.4f} |" if p else " |"
        line += "".join(f" {v:.3f} |" if v is not None else " - |" for v in s["per_class"].values())
        lines.append(line)
    lines += [
        "",
        f"{name}: the frame-level validation {name} of each trial's best epoch (the study's objective, "
        f"`{objective_of(rows)}`); mean ± sample std over the repeats (seeds x folds, n). Per-class columns: mean "
        f"EXPR F1 over the repeats.",
        "",
        "Trials: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v),
        "",
        f"![{study.name}]({study.name}.png)",
    ]
    if study.type == "search":
        lines += ["", "![importance](importance.png)", "", "![parallel coordinates](parallel_coordinate.png)"]
    runs = {r.get("run_dir") for r in rows if r["state"] == "complete" and r.get("run_dir")}
    if study.type == "posthoc" and len(runs) == 1:
        lines += ["", selection_paragraph(study, runs.pop())]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return "—"
    mean, std = value
    return f"{mean:.4f} ± {std:.4f}" if std else f"{mean:.4f}"


def task_table(summary, keys: list[str], rows) -> list[str]:
    """The per-task table of a multi-task study: each setting's score on every task it trains, and P_MTL."""
    lines = ["| " + " | ".join(keys) + " | macro-F1 (expressions) | CCC (valence-arousal) | AU F1 (units) | P_MTL | "
             "steps / epoch | n |", "|---" * (len(keys) + 6) + "|"]  # fmt: skip
    for s in summary:
        vals = " | ".join(str(v) for v in s["setting"].values())
        cells = " | ".join(_cell(s["tasks"].get(c)) for c in TASK_COLUMNS.values())
        lines.append(f"| {vals} | {cells} | {s['steps_per_epoch']} | {s['n']} |")
    return lines + ["", f"Each task on its own metric at the epoch the study's objective (`{objective_of(rows)}`) "
                    "chose (mean ± sample std over the repeats); — where the setting does not train the task (P_MTL: "
                    "all three). Steps / epoch: the budget (a window trains when any trained task has a target at "
                    "its label frame, so adding a task may add windows). The table below is the objective with the "
                    "expressions' per-class F1.", ""]  # fmt: skip


def task_chart(study: Study, summary, path: Path) -> None:
    """Grouped bars: each setting's score on each task (and P_MTL on its own panel)."""
    plt = pyplot()
    labels = [", ".join(str(v) for v in s["setting"].values()) for s in summary]
    names = {"task/macro_f1": "macro-F1", "task/ccc": "CCC", "task/au_f1": "AU F1"}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(4 + 1.4 * len(summary), 4), dpi=110,
                                  gridspec_kw={"width_ratios": [3, 1.4]})  # fmt: skip
    width = 0.8 / len(names)
    for j, (column, name) in enumerate(names.items()):
        have = [(i, s["tasks"][column]) for i, s in enumerate(summary) if s["tasks"].get(column)]
        xs = [i + (j - 1) * width for i, _ in have]
        means, stds = [v[0] for _, v in have], [v[1] for _, v in have]
        ax.bar(xs, means, width, yerr=stds if any(stds) else None, capsize=3, label=name,
               color=("#4C72B0", "#DD8452", "#55A868")[j])  # fmt: skip
        for x, m in zip(xs, means, strict=True):
            ax.text(x, m, f"{m:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(summary)), labels, rotation=20, ha="right")
    ax.set_ylabel("validation score (frames)")
    ax.set_title(f"study {study.name}: each task on its own metric")
    ax.legend(fontsize=8)
    p_mtl = [(i, s["tasks"]["task/p_mtl"]) for i, s in enumerate(summary) if s["tasks"].get("task/p_mtl")]
    ax2.bar([labels[i] for i, _ in p_mtl], [v[0] for _, v in p_mtl], color="#8172B3")
    for k, (_, v) in enumerate(p_mtl):
        ax2.text(k, v[0], f"{v[0]:.3f}", ha="center", va="bottom", fontsize=8)
    ax2.set_ylim(0, 3)
    ax2.set_title("P_MTL (max 3)")
    save_figure(fig, path)


def bar_chart(study: Study, summary, path: Path, objective: str = "val/macro_f1") -> None:

    plt = pyplot()
    shown = summary[:20]
    labels = [", ".join(f"{k.split('.')[-1]}={v}" for k, v in s["setting"].items()) for s in shown]
    means = [s["mean"] for s in shown]
    stds = [s["std"] for s in shown]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(shown) + 2), 4), dpi=110)
    ax.bar(range(len(shown)), means, yerr=stds, capsize=4, color="#4C72B0")
    for i, m in enumerate(means):
        ax.text(i, m, f"{m:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(
        range(len(shown)), labels, rotation=30 if len(shown) > 4 else 0, ha="right" if len(shown) > 4 else "center"
    )
    ax.set_ylabel(f"validation {OBJECTIVES.get(objective, objective)} (frames)")
    ax.set_title(f"study {study.name}" + (" (mean ± std over repeats)" if any(s["n"] > 1 for s in shown) else ""))
    low = min(m - s for m, s in zip(means, stds, strict=True))
    top = max(m + s for m, s in zip(means, stds, strict=True))
    ax.set_ylim(low - 0.05 if low < 0 else max(0.0, low - 0.05), top + 0.05)  # CCC may be negative, a sum over 1
    save_figure(fig, path)


def optuna_plots(handle, out: Path) -> None:
    import optuna.visualization.matplotlib as vis

    for name, fn in (("importance", vis.plot_param_importances), ("parallel_coordinate", vis.plot_parallel_coordinate)):
        try:
            ax = fn(handle)
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            fig.set_size_inches(9, 5)
            save_figure(fig, out / f"{name}.png", dpi=110)
        except Exception as e:  # noqa: BLE001 - a plot that cannot be drawn (e.g. one distinct value) is skipped
            logger.warning("no %s plot: %s", name, e)
