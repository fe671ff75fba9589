"""Submissions (``expr submit``, :mod:`expr.cli.submit`): the ABAW prediction file for the test videos, validated
against the organisers' example.

How to run it, and what it writes: :mod:`expr.cli.submit`.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from expr.atomic import atomic_path, write_text
from expr.config import ABAW_CLASSES
from expr.data.source import open_store
from expr.runs.layout import (
    legacy_overrides,
)
from expr.runs.run import Run
from expr.scoring.decision import smooth
from expr.scoring.metrics import tune_au_thresholds
from expr.tasks import AU_NAMES, MTL_TASKS, OTHER_TASKS


class SubmissionError(ValueError):
    """An example file, cache or submission that does not fit; the message names the file and line."""


TASK_COLUMNS = {name: t.names for name, t in OTHER_TASKS.items()}
"""The columns after ``image_location`` of the VA and AU challenges' files (EXPR's: the class names)."""
MTL_HEADER = ("image", "valence", "arousal", "expression", "aus")
"""The multi-task challenge's header (its example's own header is kept: it may name the 12 units instead of aus)."""
MTL_FIELDS = 4 + len(AU_NAMES)


@dataclass
class Example:
    header: list[str]
    lines: list[tuple[str, int]]  # (video, 1-based frame number), in file order
    numbers: list[int] = field(default_factory=list)  # each line's number in ``path``
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)  # what the file holds that a test example should not

    def videos(self) -> list[str]:
        return list(dict.fromkeys(v for v, _ in self.lines))


def read_example(path: str | Path, classes=ABAW_CLASSES, task: str = "expr") -> Example:
    """The frames an example file lists (``task`` ``mtl``: the multi-task challenge's, header ``image,...``; else
    ``image_location`` and ``classes``)."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: example file not found")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise SubmissionError(f"{path}:1: empty file")
    header = [h.strip() for h in rows[0]]
    if task == "mtl":
        if header[0].lower() != "image":
            raise SubmissionError(f"{path}:1: header {','.join(header)} is not the multi-task challenge's "
                                  f"{','.join(MTL_HEADER)} (the submission repeats the example's header)")  # fmt: skip
    else:
        expected = ["image_location", *classes]
        if header != expected:
            raise SubmissionError(f"{path}:1: header {','.join(header)} is not {','.join(expected)}")
    lines, numbers, first_seen, repeats = [], [], {}, []
    for n, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        loc = row[0].strip().replace("\\", "/")
        video, _, image = loc.rpartition("/")
        stem = image.rsplit(".", 1)[0]
        if not video or not stem.isdigit():
            raise SubmissionError(f"{path}:{n}: {header[0]} {loc!r} is not <video>/<nnnnn>.jpg")
        if int(stem) < 1:
            raise SubmissionError(f"{path}:{n}: {header[0]} {loc!r} names frame 0: the challenge numbers a "
                                  f"video's frames from 00001.jpg; is this file the challenge's example?")  # fmt: skip
        if (video, int(stem)) in first_seen:
            repeats.append(f"{path}:{n} repeats line {first_seen[video, int(stem)]} ({loc})")
        first_seen.setdefault((video, int(stem)), n)
        lines.append((video, int(stem)))
        numbers.append(n)
    warnings = []
    if repeats:
        warnings.append(f"{len(repeats)} lines repeat an earlier one (each gets the same prediction): {repeats[0]}")
    return Example(header, lines, numbers, path, warnings)


def frame_values(run_dir, cache, videos: list[str], task: str, device="auto", overrides=None) -> dict[str, np.ndarray]:
    """Per video, every decoded frame's ``va`` [frames, 2] (valence, arousal; smoothed in time as the run's
    ``eval.va_smoothing`` says) or ``au`` [frames, 12] probabilities of the run's head trained with that task; an
    ensemble folder: its members' weighted mean (smoothed as its first member's config says)."""
    run = Run.open(run_dir, legacy_overrides(overrides, cache))
    values = task_outputs(run, videos, task, device)
    if task == "va":
        values = {v: smooth(p, run.cfg.eval.va_smoothing, run.cfg.eval.va_smoothing_width) for v, p in values.items()}
    return values


def task_outputs(run: Run, videos: list[str], task: str, device="auto") -> dict[str, np.ndarray]:
    """Per video, every decoded frame's raw outputs of ``task`` (:meth:`Run.outputs`, before any decision) of a run
    or ensemble; each run reads the videos from its own store, where every one of them must be."""
    if task not in run.tasks:
        which = next((m for m, _ in run.members or [] if task not in m.tasks), run)
        raise SubmissionError(f"{which.path}: the run trained {', '.join(which.tasks)}, not {task} (train.tasks)")
    outputs = run.outputs(videos, store=lambda r: example_store(r.cfg, videos)[0], device=device)
    return {v: o[task] for v, o in outputs.items()}


def validation_thresholds(run_dir, cache, device="auto", overrides=None) -> np.ndarray:
    """Per-unit AU thresholds maximising each unit's F1 over the annotated frames of the AU validation videos of the
    run's store (:func:`expr.scoring.metrics.tune_au_thresholds`)."""
    run = Run.open(run_dir, legacy_overrides(overrides, cache))
    store = open_store(run.cfg)  # an ensemble's: its first member's
    names = [store.names[v] for v in store.videos_in("validation", "au")]
    if not names:
        raise SubmissionError(f"{store.path} has no AU validation videos to tune thresholds on")
    values = task_outputs(run, names, "au", device)
    rows = [store.frame_rows([store.names.index(n)]) for n in names]
    targets = np.concatenate([store.task_labels["au"][r] for r in rows])
    return tune_au_thresholds(np.concatenate([values[n] for n in names]), targets)


def example_store(cfg, videos: list[str], example: Example | None = None):
    """(the run's store, the indices of ``videos`` in it); every video must be there, and with ``example`` (the
    multi-task challenge's, whose images are crops the store holds) every image's frame."""
    store = open_store(cfg)
    if list(store.classes) != list(cfg.data.classes):
        raise SubmissionError(f"{store.path}: classes {store.classes} differ from the run's {list(cfg.data.classes)}")
    missing = [v for v in videos if v not in store.names]
    if missing and example is not None:
        video, frame = next(line for line in example.lines if line[0] == missing[0])
        n = example.numbers[example.lines.index((video, frame))]
        raise SubmissionError(f"{example.path}:{n}: {video}/{frame:05d}.jpg is not in {store.path} (no video "
                              f"{video}; {len(missing)} of the example's are missing). Prepare them with `expr prepare "
                              f"affwild2 ... --test-names {example.path} --out {store.path}`")  # fmt: skip
    if missing:
        raise SubmissionError(
            f"{len(missing)} videos of the example are not in {store.path}: {', '.join(missing[:8])}. Prepare them "
            f"with `expr prepare ... --test-names FILE --out {store.path}`"
        )
    index = np.array([store.names.index(v) for v in videos], np.int64)
    if example is not None:  # crops and decoded frames may differ by a few: such a frame takes the last one's values
        frames = dict(zip(store.names, store.num_frames.tolist(), strict=True))
        past = [(video, frame, n) for (video, frame), n in zip(example.lines, example.numbers, strict=True)
                if frame > frames[video]]  # fmt: skip
        if past:
            video, frame, n = past[0]
            print(f"warning: {len(past)} images of the example lie past their video's decoded frames in {store.path} "
                  f"(first: {example.path}:{n}: {video}/{frame:05d}.jpg, {video} has {frames[video]}); each takes "
                  f"its video's last frame's values", file=sys.stderr)  # fmt: skip
    trained = [store.names[i] for i in index if store.splits[i] in ("train", "validation")]
    if trained:
        print(f"warning: {len(trained)} videos of the example are in the train or validation split of {store.path}, "
              f"not its test split (first: {trained[0]}): a test example names test videos; is --example the right "
              f"file?", file=sys.stderr)  # fmt: skip
    return store, index


def frame_labels(
    run_dir, cache, videos: list[str], smoothing=None, width=None, device="auto", overrides=None
) -> dict[str, np.ndarray]:
    """Per video: the label of every decoded frame (see the module docstring for how). ``overrides``: as for
    :func:`expr.runs.layout.load_run`; ``cache``, ``smoothing`` and ``width`` set data.cache and eval.smoothing(_width).
    ``run_dir`` may be an ensemble folder (``expr ensemble``): its members' probabilities, weighted."""
    probs = frame_probs(run_dir, cache, videos, smoothing, width, device, overrides)
    return {v: p.argmax(1) for v, p in probs.items()}


def frame_probs(
    run_dir, cache, videos: list[str], smoothing=None, width=None, device="auto", overrides=None
) -> dict[str, np.ndarray]:
    """Per video: the class probabilities of every decoded frame, [frames, C], after the run's decision (its
    calibration, then its smoothing); of an ensemble folder, the weighted mean of its members' raw probabilities,
    then the ensemble's decision. ``smoothing`` / ``width`` replace the run's (or ensemble's)."""
    run = Run.open(run_dir, legacy_overrides(overrides, cache, smoothing=smoothing, width=width))
    decision = run.decision  # its errors before the work
    return {v: decision.video(p) for v, p in task_outputs(run, videos, "expr", device).items()}


def mtl_frames(run_dir, cache, example: Example, au_thresholds: str = "fixed", device="auto", overrides=None,
               smoothing=None, width=None) -> tuple[dict[str, np.ndarray], np.ndarray]:  # fmt: skip
    """(per video of ``example``, every decoded frame's multi-task line values [frames, 15]: valence, arousal (as
    :func:`frame_values`), the expression label (as :func:`frame_labels`: the run's decision, ``smoothing`` /
    ``width`` replacing its smoothing) and the 12 units (0/1 at 0.5, or at ``validation`` thresholds); the units'
    thresholds), from one pass of the run's head. An example image of a video the store lacks is refused naming
    its line."""
    run = Run.open(run_dir, legacy_overrides(overrides, cache, smoothing=smoothing, width=width))
    missing = [t for t in MTL_TASKS if t not in run.tasks]
    if missing:
        raise SubmissionError(f"{run.path}: the run trained {', '.join(run.tasks)}, not {', '.join(missing)}; --task "
                              f"mtl needs a run of the three (--train.tasks expr,va,au)")  # fmt: skip
    decision = run.decision  # its errors before the work
    videos = example.videos()
    store = example_store(run.cfg, videos, example)[0]
    outputs = run.outputs(videos, store=lambda r: store if r is run else example_store(r.cfg, videos)[0], device=device)
    cfg = run.cfg
    thresholds = np.full(len(AU_NAMES), 0.5)
    if au_thresholds == "validation":
        thresholds = validation_thresholds(run_dir, cache, device, overrides)
    out = {}
    for v, o in outputs.items():
        va = smooth(o["va"], cfg.eval.va_smoothing, cfg.eval.va_smoothing_width)
        expression = decision.video(o["expr"]).argmax(1)
        out[v] = np.concatenate([va, expression[:, None], (o["au"] >= thresholds).astype(np.float64)], 1)
    return out, thresholds


def write_submission(example: Example, labels: dict[str, np.ndarray], out: str | Path, fmt: str = "csv",
                     task: str = "expr") -> Path:  # fmt: skip
    """The submission of per-video frame ``labels`` (EXPR: [frames] labels; VA: [frames, 2] values; AU: [frames,
    12] 0/1) for every line of ``example``; a frame past a video's decoded end takes its last frame's."""
    out = Path(out)
    width = MTL_FIELDS - 1 if task == "mtl" else len(example.header) - 1  # values after the image's name
    if fmt == "csv":
        with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
            f.write(",".join(example.header) + "\n")
            for video, frame in example.lines:
                lab = labels[video]
                value = lab[min(frame - 1, len(lab) - 1)] if len(lab) else np.zeros(width if task != "expr" else ())
                if task == "mtl":
                    text = ",".join([*(f"{float(x):.4f}" for x in value[:2]), *(str(int(x)) for x in value[2:])])
                elif task == "va":
                    text = ",".join(f"{float(x):.4f}" for x in value)
                elif task == "au":
                    text = ",".join(str(int(x)) for x in value)
                else:
                    text = str(int(value))
                f.write(f"{video}/{frame:05d}.jpg,{text}\n")
        return out
    if task != "expr":
        raise SubmissionError(f"--format per-video is the expression task's older layout; --task {task} writes csv")
    out.mkdir(parents=True, exist_ok=True)  # per-video: <video>.txt with a header line and one label per frame
    for video in example.videos():
        lab = labels[video]
        frames = [f for v, f in example.lines if v == video]
        values = [int(lab[min(f - 1, len(lab) - 1)]) if len(lab) else 0 for f in frames]
        write_text(out / f"{video}.txt", ",".join(example.header[1:]) + "\n" + "\n".join(map(str, values)) + "\n")
    return out


def validate_submission(path: str | Path, example: Example, fmt: str = "csv", task: str = "expr") -> list[str]:
    """Problems of a submission against the example (videos, frame lines, order, values: EXPR labels in range, VA
    numbers in [-1, 1], AU 0/1 for each unit); [] = valid."""
    path = Path(path)
    num_classes = len(example.header) - 1
    problems: list[str] = []

    def check_label(text: str, where: str) -> None:
        if not text.strip().lstrip("-").isdigit() or not 0 <= int(text) < num_classes:
            problems.append(f"{where}: label {text!r} is not an integer in 0..{num_classes - 1}")

    def check_values(values: list[str], names, where: str, kind: str) -> None:
        for name, text in zip(names, values, strict=True):
            try:
                x = float(text)
            except ValueError:
                x = float("nan")
            ok = -1.0 <= x <= 1.0 if kind == "va" else text.strip() in ("0", "1")
            if not ok:
                what = "a number in [-1, 1]" if kind == "va" else "0 or 1"
                problems.append(f"{where}: {name} {text!r} is not {what}")

    def check_mtl(values: list[str], where: str) -> None:
        check_values(values[:2], ("valence", "arousal"), where, "va")
        if not values[2].strip().isdigit() or not 0 <= int(values[2]) < len(ABAW_CLASSES):
            problems.append(f"{where}: expression {values[2]!r} is not an integer in 0..{len(ABAW_CLASSES) - 1}")
        check_values(values[3:], AU_NAMES, where, "au")

    if fmt == "csv":
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or [h.strip() for h in rows[0]] != example.header:
            problems.append(f"{path}:1: the header differs from the example's")
        body = rows[1:]
        if len(body) != len(example.lines):
            problems.append(f"{path}: {len(body)} frame lines, the example has {len(example.lines)}")
        for n, (row, (video, frame)) in enumerate(zip(body, example.lines, strict=False), start=2):
            want = f"{video}/{frame:05d}.jpg"
            if not row or row[0] != want:
                problems.append(f"{path}:{n}: {row[0] if row else ''!r} where the example has {want!r}")
            fields = {"expr": 2, "mtl": MTL_FIELDS}.get(task, len(example.header))
            if len(row) != fields:
                names = {"expr": "image_location,label", "mtl": "image,valence,arousal,expression and 12 units"}
                problems.append(f"{path}:{n}: expected {fields} fields ({names.get(task, ','.join(example.header))}), "
                                f"got {len(row)}")  # fmt: skip
            elif task == "mtl":
                check_mtl(row[1:], f"{path}:{n}")
            elif task == "expr":
                check_label(row[1], f"{path}:{n}")
            else:
                check_values(row[1:], example.header[1:], f"{path}:{n}", task)
            if len(problems) > 20:
                break
        return problems
    for video in example.videos():
        file = path / f"{video}.txt"
        if not file.is_file():
            problems.append(f"{file}: missing")
            continue
        lines = file.read_text().splitlines()
        frames = sum(1 for v, _ in example.lines if v == video)
        if len(lines) - 1 != frames:
            problems.append(f"{file}: {len(lines) - 1} labels, the example lists {frames} frames")
        for n, line in enumerate(lines[1:], start=2):
            check_label(line, f"{file}:{n}")
    return problems
