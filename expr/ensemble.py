"""``expr ensemble RUN RUN [RUN ...] --out DIR [--split validation] [--weights equal|fit]``: several runs (or
exported heads) as one model on a labelled split. Each member's frame probabilities come from ``expr evaluate``'s
own path (its window length, feature sets, mode and encoders; written under ``DIR/members/``); the ensemble's are
their weighted mean, scored and reported like a run (``DIR/eval/SPLIT/``), with a table of every member beside it.

Weights: ``equal``, or ``fit`` on the split itself by greedy selection with replacement (Caruana et al. 2004): start
from the best member, then repeatedly add the member whose addition raises macro-F1 most; the weights are the
selection counts. The fitted ensemble never scores below its best member on that split, which is also why its
score there is optimistic: fit on validation, judge on other data. Members must agree on classes, split and frames.

``expr submit DIR --example F --out F`` and ``expr predict VIDEO --run DIR`` take the ensemble folder like a run
directory (the members' weighted frame probabilities).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from expr.atomic import write_text
from expr.evaluation import frame_report
from expr.metrics import classification_report
from expr.options import parse_options, positional
from expr.report import evaluate_run, write_report
from expr.runs import ENSEMBLE, RunError


class EnsembleError(RunError):
    """Members that cannot form one ensemble; the message names the member."""


def greedy_weights(probs: list[np.ndarray], labels: np.ndarray, classes, rounds: int = 20) -> np.ndarray:
    """Selection counts / total of greedy forward selection with replacement, by frame macro-F1 on ``labels``."""

    def score(p: np.ndarray) -> float:
        return classification_report(labels, p.argmax(1), classes)["macro_f1"]

    counts = np.zeros(len(probs))
    total = np.zeros_like(probs[0], dtype=np.float64)
    for _ in range(rounds):
        gains = [score((total + p) / (counts.sum() + 1)) for p in probs]
        best = int(np.argmax(gains))  # ties: the earlier member
        counts[best] += 1
        total += probs[best]
    return counts / counts.sum()


def ensemble(
    runs: list[str | Path], out: str | Path, split: str = "validation", weights: str = "equal",
    cache: str | None = None, device: str = "auto",
) -> dict[str, Any]:  # fmt: skip
    """Evaluate every member on ``split``, combine, write ``out/ensemble.json`` and ``out/eval/SPLIT/``; returns the
    ensemble's report."""
    if len(runs) < 2:
        raise EnsembleError("an ensemble needs two or more runs")
    if weights not in ("equal", "fit"):
        raise EnsembleError(f"--weights {weights}: choose equal or fit")
    out = Path(out)
    members = []
    for i, run in enumerate(runs):
        where = out / "members" / f"{i:02d}-{Path(run).name}"
        report = evaluate_run(run, cache=cache, split=split, device=device, out_dir=where)
        data = np.load(where / "frame_probs.npz")
        members.append((str(run), report, data["rows"], data["probs"].astype(np.float32), data["labels"]))
    first = members[0]
    classes = list(first[1]["metrics"]["per_class_f1"])  # the run's classes, in order
    for run, report, rows, _, _ in members[1:]:
        theirs = list(report["metrics"]["per_class_f1"])
        if theirs != classes:
            raise EnsembleError(f"{run}: classes {theirs} differ from {first[0]}'s {classes}")
        if report["store"] != first[1]["store"] or not np.array_equal(rows, first[2]):
            raise EnsembleError(
                f"{run}: its frames of split '{split}' ({report['store']}) are not {first[0]}'s ({first[1]['store']}); "
                f"members must be evaluated on the same store (--cache)"
            )
    labels = first[4]
    probs = [m[3] for m in members]
    w = greedy_weights(probs, labels, classes) if weights == "fit" else np.full(len(probs), 1.0 / len(probs))
    combined = sum(wi * p for wi, p in zip(w, probs, strict=True))
    metrics = frame_report(labels, combined, classes)
    table = [
        {"run": run, "weight": float(wi), "macro_f1": float(report["metrics"]["macro_f1"])}
        for (run, report, *_), wi in zip(members, w, strict=True)
    ]
    best = max(table, key=lambda r: r["macro_f1"])
    report = {
        "run": f"ensemble of {len(runs)}",
        "store": first[1]["store"],
        "split": split,
        "window": "per member",
        "stride": "per member",
        "videos": first[1]["videos"],
        "frames": int(len(first[2])),
        "labelled_frames": int((labels >= 0).sum()),
        "smoothing": {"method": "none", "width": 0},
        "metrics": metrics,
        "smoothed_metrics": None,
        "members": table,
        "weights": weights,
        "best_member": best,
    }
    where = out / "eval" / split
    write_report(where, report, classes)
    np.savez(where / "frame_probs.npz", rows=first[2], probs=combined.astype(np.float16), labels=labels)
    lines = ["| model | weight | macro-F1 |", "|---|---|---|"]
    lines += [f"| {r['run']} | {r['weight']:.3f} | {r['macro_f1']:.4f} |" for r in table]
    lines.append(f"| **ensemble ({weights} weights)** | | **{metrics['macro_f1']:.4f}** |")
    write_text(where / "members.md", "\n".join(lines) + "\n")
    info = {"members": [{"run": str(Path(r["run"]).resolve()), "weight": r["weight"]} for r in table],
            "weights": weights, "fitted_on": split if weights == "fit" else None, "classes": classes}  # fmt: skip
    write_text(out / ENSEMBLE, json.dumps(info, indent=2))
    return report


@dataclass(kw_only=True)
class EnsembleOptions:
    runs: tuple[str, ...] = positional()
    """run directories (two or more)"""
    out: str
    """folder to write (ensemble.json, members/, eval/SPLIT/)"""
    split: str = "validation"
    """the labelled split to combine and score"""
    weights: Literal["equal", "fit"] = "equal"
    """equal weights, or weights fitted on the split (greedy selection; never below the best member there)"""
    cache: str | None = None
    """the feature store (default: each run's own)"""
    device: str = "auto"
    """cuda, cpu or auto"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, _ = parse_options(EnsembleOptions, argv, "expr ensemble", "ensemble", __doc__.split("\n\n")[0],
                            config_keys=False)  # fmt: skip
    try:
        report = ensemble(list(args.runs), args.out, args.split, args.weights, args.cache, args.device)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "eval" / args.split / "members.md").read_text())
    print(f"wrote {args.out}: ensemble.json, eval/{args.split}/ (report, frame probabilities), members/")
    return 0 if report else 2


__all__ = ["ensemble", "greedy_weights", "EnsembleError", "main"]
