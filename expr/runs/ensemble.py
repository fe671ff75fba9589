"""Ensembles (``expr ensemble``, :mod:`expr.cli.ensemble`): several runs (or exported heads) as one model. Each member's
frame probabilities come from ``expr evaluate``'s own path (its window length, feature sets, mode and encoders; written
under ``DIR/members/``); the ensemble's are the weighted mean of the members' raw probabilities, then its own
decision (calibration, smoothing), scored and reported like a run (``DIR/eval/SPLIT/``) with a table of every
member and of the steps from the best run to the submission (``members.md``).

How to run it, and what it writes: :mod:`expr.cli.ensemble`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from expr.atomic import write_text
from expr.data.store import video_of_rows
from expr.runs.calibrate import calibrate as calibrate_folder
from expr.runs.evaluate import Frames, decision_metrics, evaluate
from expr.runs.layout import CALIBRATION, ENSEMBLE, RunError, ensemble_members, legacy_overrides
from expr.runs.report import save_frame_probs, write_report
from expr.runs.run import Run
from expr.scoring.decision import Decision
from expr.scoring.metrics import classification_report


class EnsembleError(RunError):
    """Members that cannot form one ensemble; the message names the member."""


def greedy_weights(probs: list[np.ndarray], labels: np.ndarray, classes, rounds: int = 20) -> np.ndarray:
    """Greedy forward selection with replacement by frame macro-F1 on ``labels`` (Caruana et al. 2004): each round
    adds the member whose addition scores best; the weights are the selection counts / total at the best point of
    the path (ties: the earlier point, i.e. fewer selections). The first round picks the best member alone, so the
    result never scores below it on ``labels``."""

    def score(p: np.ndarray) -> float:
        return classification_report(labels, p.argmax(1), classes)["macro_f1"]

    counts = np.zeros(len(probs))
    total = np.zeros_like(probs[0], dtype=np.float64)
    best_score, best_counts = -np.inf, counts
    for _ in range(rounds):
        gains = [score((total + p) / (counts.sum() + 1)) for p in probs]
        pick = int(np.argmax(gains))  # ties: the earlier member
        counts = counts.copy()
        counts[pick] += 1
        total += probs[pick]
        if gains[pick] > best_score:
            best_score, best_counts = gains[pick], counts
    return best_counts / best_counts.sum()


@dataclass
class Member:
    run: str
    report: dict[str, Any]
    rows: np.ndarray
    probs: np.ndarray  # raw frame probabilities (before the run's calibration and smoothing)
    labels: np.ndarray
    geometry: tuple[np.ndarray, np.ndarray]  # the store's num_frames, frame_offset
    subject: np.ndarray  # each row's raw video (calibration groups)

    def final_f1(self) -> float:
        """Macro-F1 after the run's own decision (calibration, smoothing), as it would submit."""
        r = self.report
        return float((r["smoothed_metrics"] or r["calibrated_metrics"] or r["metrics"])["macro_f1"])


def study_runs(study: str | Path) -> list[str]:
    """The run directories of a study's best setting (highest mean macro-F1 over its seeds and folds), from the
    ``results.csv`` that ``expr sweep`` writes."""
    return study_selection(study)["runs"]


def study_selection(study: str | Path) -> dict[str, Any]:
    """A study's best setting: ``runs`` (its run directories, every fold), ``setting`` (its values) and
    ``compared`` (how many settings it was chosen among, by their mean score over the same folds)."""
    table = Path(study) / "results.csv"
    if not table.is_file():
        raise EnsembleError(f"{table} not found: --study takes the --out folder of an `expr sweep` (it writes it)")
    with open(table, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("state") == "complete" and r.get("run_dir")]
    if not rows:
        raise EnsembleError(f"{table}: no complete trial with a run directory")
    # what is not a setting: each trial's outcome and identity, and the repeats (seeds, folds) of one setting
    fixed = {"trial", "state", "value", "objective", "macro_f1", "best_epoch", "run_dir", "train.seed", "data.fold",
             "steps"}  # fmt: skip
    keys = [k for k in rows[0] if k not in fixed and not k.startswith(("f1/", "task/"))]
    settings: dict[tuple, list[dict[str, str]]] = {}
    for r in rows:
        settings.setdefault(tuple(r[k] for k in keys), []).append(r)
    score = "value" if "value" in rows[0] else "macro_f1"  # the study's objective (older tables: macro-F1)
    chosen, best = max(settings.items(), key=lambda item: np.mean([float(r[score]) for r in item[1]]))
    if len(best) < 2:
        raise EnsembleError(
            f"{table}: the best setting has one run (a search study, or one seed and no folds): list the runs to "
            f"combine instead (expr ensemble RUN RUN ...)"
        )
    runs = []
    for r in sorted(best, key=lambda r: int(r["trial"])):
        run = Path(r["run_dir"])  # as the worker wrote it: relative to where the sweep ran, or absolute
        found = next((c for c in (run, Path(study) / "trials" / f"{int(r['trial']):04d}") if c.is_dir()), None)
        if found is None:
            raise EnsembleError(f"{table}: trial {r['trial']}'s run {run} is not there (moved or deleted?)")
        runs.append(str(found))
    return {"runs": runs, "setting": dict(zip(keys, chosen, strict=True)), "compared": len(settings)}


def evaluate_member(run: str, cache, split: str, device, out_dir: Path) -> tuple[dict[str, Any], Frames]:
    """A member's report (written under ``out_dir``) and its scored frames: :func:`expr.runs.evaluate.evaluate`."""
    if ensemble_members(run) is not None:
        raise EnsembleError(f"{run} is an ensemble folder itself: list its members instead")
    report, frames = evaluate(Run.open(run, legacy_overrides(None, cache)), split, device, out_dir)
    if frames is None:
        raise EnsembleError(f"{run}: the run trained no expression classifier (train.tasks); ensembles combine those")
    return report, frames


def evaluate_members(runs, out: Path, split: str, cache, device) -> list[Member]:
    members = []
    for i, run in enumerate(runs):
        where = out / "members" / f"{i:02d}-{Path(run).name}"
        report, f = evaluate_member(run, cache, split, device, where)
        members.append(Member(str(run), report, f.rows, np.asarray(f.probs, np.float64), f.labels, f.geometry,
                              f.subject))  # fmt: skip
    first = members[0]
    classes = list(first.report["metrics"]["per_class_f1"])  # the run's classes, in order
    for m in members[1:]:
        theirs = list(m.report["metrics"]["per_class_f1"])
        if theirs != classes:
            raise EnsembleError(f"{m.run}: classes {theirs} differ from {first.run}'s {classes}")
        if m.report["store"] != first.report["store"]:
            raise EnsembleError(
                f"{m.run}: evaluated on {m.report['store']}, not {first.report['store']} like {first.run}; members "
                f"must be evaluated on the same store (--cache)"
            )
    return members


def same_split(members: list[Member], split: str, weights: str, classes) -> tuple[np.ndarray, ...]:
    """Members scored on the same frames: (rows, weighted probabilities, labels, subjects, weights)."""
    first = members[0]
    for m in members[1:]:
        if not np.array_equal(m.rows, first.rows):
            raise EnsembleError(f"{m.run}: its frames of split '{split}' are not {first.run}'s")
    probs = [m.probs for m in members]
    w = greedy_weights(probs, first.labels, classes) if weights == "fit" else np.full(len(probs), 1 / len(probs))
    return first.rows, sum(wi * p for wi, p in zip(w, probs, strict=True)), first.labels, first.subject, w


def out_of_fold(members: list[Member]) -> tuple[np.ndarray, ...]:
    """Members of a k-fold study, each scored on its own validation fold: (rows, out-of-fold probabilities: each
    fold's frames by the mean of the members that validated on it, labels, subjects, fold of each row, weights:
    equal)."""
    ks = {m.report["folds"]["k"] for m in members}
    if len(ks) > 1:
        raise EnsembleError(f"the members come from different k-fold splits (k = {sorted(ks)})")
    k = ks.pop()
    by_fold: dict[int, list[Member]] = {}
    for m in members:
        by_fold.setdefault(m.report["folds"]["fold"], []).append(m)
    missing = sorted(set(range(k)) - set(by_fold))
    if missing:
        raise EnsembleError(
            f"no member validated on fold(s) {missing} of {k}: an out-of-fold ensemble needs every fold's run (a "
            f"study still running, or a failed trial?)"
        )
    parts = []
    for fold, group in sorted(by_fold.items()):
        for m in group[1:]:
            if not np.array_equal(m.rows, group[0].rows):
                raise EnsembleError(f"{m.run}: its validation fold {fold} is not {group[0].run}'s (another store?)")
        probs = sum(m.probs for m in group) / len(group)
        parts.append((group[0].rows, probs, group[0].labels, group[0].subject, np.full(len(group[0].rows), fold)))
    rows, probs, labels, subject, folds = (np.concatenate(x) for x in zip(*parts, strict=True))
    order = np.argsort(rows, kind="stable")
    weights = np.full(len(members), 1 / len(members))
    return rows[order], probs[order], labels[order], subject[order], folds[order], weights


def ensemble_smoothing(members: list[Member], smoothing: str | None, width: int | None) -> tuple[str, int]:
    """The ensemble's (method, width): ``smoothing`` / ``width`` where given, else the members' (when they agree)."""

    def normal(method: str, size: int) -> tuple[str, int]:
        return ("none", 0) if method == "none" or size <= 1 else (method, int(size))

    own = {normal(m.report["smoothing"]["method"], m.report["smoothing"]["width"]) for m in members}
    agreed = next(iter(own)) if len(own) == 1 else None
    method = smoothing if smoothing is not None else agreed[0] if agreed else None
    size = width if width is not None else agreed[1] if agreed else None
    if method is None or size is None:
        raise EnsembleError(f"the members smooth differently ({sorted(own)}): give the ensemble's --smoothing and "
                            f"--width")  # fmt: skip
    if method != "none" and size <= 1:
        raise EnsembleError(f"--smoothing {method} needs a --width of 2 or more frames")
    if method == "none" and width is not None and width > 1:
        raise EnsembleError(f"--width {width} smooths nothing without --smoothing mean or mode")
    return normal(method, size)


def ensemble(
    runs: list[str | Path], out: str | Path, split: str = "validation", weights: str = "equal",
    cache: str | None = None, device: str = "auto", smoothing: str | None = None, width: int | None = None,
    calibrate: bool = False, groups: int = 5, selection: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Evaluate every member on ``split``, combine, write ``out/ensemble.json`` and ``out/eval/SPLIT/`` (and
    ``out/calibration.json`` with ``calibrate``); returns the ensemble's report."""
    if len(runs) < 2:
        raise EnsembleError("an ensemble needs two or more runs")
    if weights not in ("equal", "fit"):
        raise EnsembleError(f"--weights {weights}: choose equal or fit")
    out = Path(out)
    members = evaluate_members(runs, out, split, cache, device)
    classes = list(members[0].report["metrics"]["per_class_f1"])
    folds = {json.dumps(m.report.get("folds"), sort_keys=True) for m in members}
    extra = {}
    if len(folds) == 1:  # one split (or several seeds of one fold): the same frames
        rows, probs, labels, subject, w = same_split(members, split, weights, classes)
    elif all(m.report.get("folds") for m in members):
        if weights == "fit":
            raise EnsembleError("the models of a k-fold study validate on different videos: --weights equal only")
        rows, probs, labels, subject, extra["groups"], w = out_of_fold(members)
    else:
        raise EnsembleError("some members come from a k-fold study and some do not: they do not share a split")
    method, size = ensemble_smoothing(members, smoothing, width)
    decision = Decision(None, method, size)
    num_frames, frame_offset = members[0].geometry
    report = {
        "run": f"ensemble of {len(runs)}",
        "store": members[0].report["store"],
        "split": split if not extra else f"{split} (out of fold)",
        "window": "per member",
        "stride": "per member",
        "videos": len(np.unique(video_of_rows(frame_offset, rows))),
        "frames": int(len(rows)),
        "labelled_frames": int((labels >= 0).sum()),
        **decision_metrics(labels, rows, probs, num_frames, frame_offset, decision, classes),
        "members": [
            {
                "run": m.run,
                "weight": float(wi),
                "macro_f1": float(m.report["metrics"]["macro_f1"]),
                "final_macro_f1": m.final_f1(),
                "fold": (m.report.get("folds") or {}).get("fold"),
            }
            for m, wi in zip(members, w, strict=True)
        ],  # fmt: skip
        "weights": weights,
        # a --study ensemble: the setting and how many it was chosen among, on these same folds' scores
        "selected": {k: v for k, v in (selection or {}).items() if k != "runs"} or None,
    }
    where = out / "eval" / split
    write_report(where, report, classes)
    save_frame_probs(where, rows, probs, labels, num_frames, frame_offset, subject=subject, **extra)
    info = {"members": [{"run": str(Path(r["run"]).resolve()), "weight": r["weight"]} for r in report["members"]],
            "weights": weights, "fitted_on": split if weights == "fit" else None, "classes": classes,
            "smoothing": report["smoothing"], "out_of_fold": bool(extra)}  # fmt: skip
    write_text(out / ENSEMBLE, json.dumps(info, indent=2))
    if calibrate:
        report = calibrate_folder(out, split, groups=groups)
    elif (out / CALIBRATION).is_file():  # an earlier calibration of another ensemble in this folder
        (out / CALIBRATION).unlink()
    write_text(where / "members.md", steps_table(report))
    return report


def steps_table(report: dict[str, Any]) -> str:
    """Markdown: every member, then the steps from one run to the submission, each with and without the next."""
    folds = any(m["fold"] is not None for m in report["members"])
    lines = ["| member | fold | weight | macro-F1 | with its own decision |", "|---|---|---|---|---|"]
    lines += [f"| {m['run']} | {'' if m['fold'] is None else m['fold']} | {m['weight']:.3f} | {m['macro_f1']:.4f} | "
              f"{m['final_macro_f1']:.4f} |" for m in report["members"]]  # fmt: skip
    lines += ["", "| step | macro-F1 |", "|---|---|"]
    if folds:
        mean = np.mean([m["macro_f1"] for m in report["members"]])
        lines.append(f"| one fold's model on its own validation fold (mean) | {mean:.4f} |")
        lines.append(f"| out of fold: every video by the models that did not train on it | "
                     f"{report['metrics']['macro_f1']:.4f} |")  # fmt: skip
    else:
        best = max(report["members"], key=lambda m: m["macro_f1"])
        lines.append(f"| best single run ({Path(best['run']).name}) | {best['macro_f1']:.4f} |")
        lines.append(f"| ensemble ({report['weights']} weights) | {report['metrics']['macro_f1']:.4f} |")
    if report.get("calibrated_metrics"):
        lines.append(f"| + calibration (fitted on this split) | {report['calibrated_metrics']['macro_f1']:.4f} |")
    if report.get("cross_fitted_metrics"):
        lines.append(f"| + calibration, cross-fitted ({report['cross_fitted_groups']}) | "
                     f"{report['cross_fitted_metrics']['macro_f1']:.4f} |")  # fmt: skip
    if report.get("smoothed_metrics"):
        s = report["smoothing"]
        lines.append(
            f"| + {s['method']} smoothing, width {s['width']} | {report['smoothed_metrics']['macro_f1']:.4f} |"
        )
    lines.append("")
    if report["weights"] == "fit":
        lines.append("The weights were fitted on this split: the ensemble's score here is optimistic.")
    selected = report.get("selected")
    if folds and selected and selected["compared"] > 1:
        setting = ", ".join(f"{k} {v}" for k, v in selected["setting"].items())
        lines.append(f"Optimistic: the study's setting ({setting}) was chosen among {selected['compared']} settings by "
                     f"its mean score over these same folds, so its out-of-fold score above is the best of "
                     f"{selected['compared']} tries on the very videos it reports on; score it on other videos (a test "
                     f"set, or a nested split) for an unbiased figure.")  # fmt: skip
    if folds:
        lines.append("For the test set every fold's model votes (equal weights); the out-of-fold score measures one "
                     "fold's model per video (an estimate for the full ensemble, whose averaged probabilities are "
                     "flatter than those the calibration was fitted on).")  # fmt: skip
    return "\n".join(lines) + "\n"


__all__ = ["ensemble", "greedy_weights", "study_runs", "EnsembleError"]
