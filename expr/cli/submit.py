"""``expr submit``: the ABAW prediction file for the test videos, validated against the organisers' example.

    expr submit RUN_DIR --cache CACHE --example EXAMPLE.csv --out predictions.csv [--format csv|per-video]
    expr submit RUN_DIR --task va|au --cache CACHE --example EXAMPLE.csv --out predictions.csv
    expr submit RUN_DIR --task mtl --example MTL_Challenge_test_set_release.txt --out predictions.txt

The example file lists, in order, every frame to predict: a header
``image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other`` then ``<video>/<nnnnn>.jpg,...``
lines (frame numbers from 1). The output has the same header and exactly those lines, each ending in a label 0-7.

How every listed frame gets a label: windows of the run's length slide over each video (stride: the run's
``data.eval_stride``), and the path that training's validation and ``expr evaluate`` score
(:mod:`expr.scoring.decision`) turns their predictions into frame labels: each window's prediction placed at its label
frame and interpolated between them, a frame without a face crop given the probabilities of the nearest frame in time
that has one, the run's decision calibration when ``expr calibrate`` fitted one, then its temporal smoothing
(``eval.*``, or ``--smoothing/--width``) per video. A listed frame past the video's decoded end takes the last frame's
label.

``--task va`` / ``--task au`` (a run trained with those tasks, ``train.tasks``): the example's header is
``image_location,valence,arousal`` or ``image_location,AU1,...,AU26``, and each line gets the frame's valence and
arousal (4 decimals, in [-1, 1]) or its 12 units (0/1 at probability 0.5, or ``--au-thresholds validation``: per
unit, the threshold that maximises F1 on the run's AU validation videos), by the same path from windows to frames
(no calibration or smoothing: those are the expression task's).

``--task mtl`` (a run of the three tasks, ``--train.tasks expr,va,au``; on the challenge's split with
``--data.split_source mtl``): the example is the multi-task challenge's test file, header
``image,valence,arousal,expression,aus`` (or with the 12 unit names) then ``<video>/<nnnnn>.jpg`` lines; each output
line is the image then its valence and arousal (4 decimals), expression label (the run's decision, as above) and
12 units (as ``--task au``), all from one pass of the head. An example image of a video the store does not hold is
refused naming its line (prepare the test videos with ``expr prepare affwild2 ROOT --test-names EXAMPLE``); one past
its video's decoded end is named in a warning and takes the last frame's values, as for the other tasks."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import numpy as np

from expr.cli.options import parse_options, positional
from expr.config import ConfigError, Smoothing
from expr.data.store import StoreError
from expr.runs.layout import (
    RunError,
    run_options_help,
)
from expr.runs.run import Run
from expr.runs.submission import (
    TASK_COLUMNS,
    SubmissionError,
    frame_labels,
    frame_values,
    mtl_frames,
    read_example,
    validate_submission,
    validation_thresholds,
    write_submission,
)
from expr.tasks import AU_NAMES


@dataclass(kw_only=True)
class SubmitOptions:
    run_dir: str = positional()
    """a run directory (its best head is used), or an ensemble folder (expr ensemble)"""
    cache: str | None = None
    """feature store holding the test videos (= --data.cache)"""
    example: str
    """the organisers' example prediction file"""
    out: str
    """the CSV to write (a folder with --format per-video)"""
    task: Literal["expr", "va", "au", "mtl"] = "expr"
    """the challenge: expr (expression labels), va (valence-arousal), au (action units), mtl (the multi-task
    challenge: the three on each line); the run must have trained it (train.tasks)"""
    au_thresholds: Literal["fixed", "validation"] = "fixed"
    """--task au or mtl: a unit is active at probability 0.5 (fixed, the challenge's usual rule) or at per-unit
    thresholds tuned for F1 on the run's AU validation videos (validation)"""
    format: Literal["csv", "per-video"] = "csv"
    """csv: one file (current challenge format); per-video: <video>.txt files (older format)"""
    smoothing: Smoothing | None = None
    """temporal post-processing (= --eval.smoothing)"""
    width: int | None = None
    """smoothing width in frames (= --eval.smoothing_width)"""
    device: str = "auto"
    """cuda, cpu or auto"""


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_options(
        SubmitOptions,
        sys.argv[1:] if argv is None else argv,
        "expr submit",
        "submit",
        __doc__.split("\n\n")[0],
        run_options_help(),
    )
    try:
        cfg = Run.open(args.run_dir, overrides).cfg
        if args.task in ("va", "au") and (args.smoothing or args.width or args.format != "csv"):
            raise SubmissionError(f"--smoothing, --width and --format are the expression task's; --task {args.task} "
                                  f"writes its values as csv, without the expression decision")  # fmt: skip
        if args.task == "mtl" and args.format != "csv":
            raise SubmissionError("--format per-video is the expression task's older layout; --task mtl writes csv")
        if args.task not in ("au", "mtl") and args.au_thresholds != "fixed":
            raise SubmissionError(f"--au-thresholds is for --task au or mtl, not --task {args.task}")
        example = read_example(args.example, TASK_COLUMNS.get(args.task, cfg.data.classes), args.task)
        for warning in example.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if args.task == "mtl":
            labels, thresholds = mtl_frames(args.run_dir, args.cache, example, args.au_thresholds, args.device,
                                            overrides, args.smoothing, args.width)  # fmt: skip
            if args.au_thresholds == "validation":
                print("AU thresholds tuned on validation: "
                      + ", ".join(f"{n} {t:.2f}" for n, t in zip(AU_NAMES, thresholds, strict=True)))  # fmt: skip
        elif args.task == "expr":
            labels = frame_labels(
                args.run_dir, args.cache, example.videos(), args.smoothing, args.width, args.device, overrides
            )
        else:
            values = frame_values(args.run_dir, args.cache, example.videos(), args.task, args.device, overrides)
            thresholds = np.full(len(AU_NAMES), 0.5)
            if args.task == "au" and args.au_thresholds == "validation":
                thresholds = validation_thresholds(args.run_dir, args.cache, args.device, overrides)
                print("AU thresholds tuned on validation: "
                      + ", ".join(f"{n} {t:.2f}" for n, t in zip(AU_NAMES, thresholds, strict=True)))  # fmt: skip
            labels = {v: (p >= thresholds).astype(np.int64) if args.task == "au" else p for v, p in values.items()}
        out = write_submission(example, labels, args.out, args.format, args.task)
        problems = validate_submission(out, example, args.format, args.task)
    except (SubmissionError, RunError, StoreError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if problems:
        print("error: the submission does not validate:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(
        f"wrote {out}: {len(example.lines)} frames of {len(example.videos())} videos; validated against {args.example}"
    )
    if args.task == "mtl":
        every = np.concatenate([labels[v] for v in example.videos()])
        counts = np.bincount(every[:, 2].astype(np.int64), minlength=len(cfg.data.classes))
        print(f"over decoded frames: mean valence {every[:, 0].mean():.3f}, arousal {every[:, 1].mean():.3f}; labels "
              + ", ".join(f"{c} {n}" for c, n in zip(cfg.data.classes, counts, strict=True)) + "; active units "
              + ", ".join(f"{n} {m:.2f}" for n, m in zip(AU_NAMES, every[:, 3:].mean(0), strict=True)))  # fmt: skip
        return 0
    if args.task != "expr":
        every = np.concatenate([labels[v] for v in example.videos()])
        summary = (
            f"mean valence {every[:, 0].mean():.3f}, arousal {every[:, 1].mean():.3f}"
            if args.task == "va"
            else "active: " + ", ".join(f"{n} {m:.2f}" for n, m in zip(AU_NAMES, every.mean(0), strict=True))
        )
        print(f"over decoded frames: {summary}")  # fmt: skip
        return 0
    counts = np.bincount(np.concatenate([labels[v] for v in example.videos()]), minlength=len(cfg.data.classes))
    print(
        "predicted label counts over decoded frames: "
        + ", ".join(f"{c} {n}" for c, n in zip(cfg.data.classes, counts, strict=True))
    )
    return 0
