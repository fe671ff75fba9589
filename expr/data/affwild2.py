"""The Aff-Wild2 layout of the ABAW tracks: annotation files, face-crop folders and raw videos.

Only reading and discovery live here (no decoding, no backbones). A tree looks like::

    ROOT/EXPR_Classification_Challenge/Train_Set/<name>.txt        (or EXPR_Recognition_Challenge)
    ROOT/EXPR_Classification_Challenge/Validation_Set/<name>.txt
    ROOT/VA_Estimation_Challenge/Train_Set/<name>.txt              (optional: valence-arousal)
    ROOT/AU_Detection_Challenge/Validation_Set/<name>.txt          (optional: action units)
    ROOT/MTL_Challenge/train_set.txt, validation_set.txt            (optional: the multi-task challenge, expr.data.mtl)
    ROOT/cropped_aligned/<name>/00001.jpg ...                      (and/or cropped_aligned_new_50_vids)
    ROOT/<anywhere>/<video>.mp4 | .avi                             (<name> = <video>, <video>_left or <video>_right)

An EXPR annotation file has a header line with the class names, then one integer per frame (frame i on line i + 2,
the header being line 1; ``-1`` = ignore); a VA file ``valence,arousal`` then two floats in [-1, 1] per frame
(``-5,-5`` = unannotated); an AU file the 12 unit names then 12 values 0/1 per frame (all ``-1`` = unannotated). A
video may be annotated for some tasks only, and each task has its own train / validation split. Crops are numbered
from 1; frames without a face have no crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from expr.config import ABAW_CLASSES
from expr.data.mtl import MtlTrack, check_frames_exist, find_mtl_folder, read_mtl_folder
from expr.data.store import video_name
from expr.tasks import AU_NAMES, EXPR, TASKS, VA

ANNOTATION_DIRS = EXPR.annotation_dirs
SPLIT_DIRS = {"Train_Set": "train", "Validation_Set": "validation"}
CROP_DIRS = ("cropped_aligned", "cropped_aligned_new_50_vids")
VIDEO_SUFFIXES = (".mp4", ".avi")


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and line."""


VA_HEADER = VA.names
VA_UNANNOTATED = VA.file_missing
TASK_DIRS = {name: t.annotation_dirs for name, t in TASKS.items()}
"""The annotation folders of each ABAW task on Aff-Wild2 (the first found is read)."""


class LayoutError(ValueError):
    """A tree that is not an Aff-Wild2 EXPR layout; the message says what is missing."""


def _lines(path: Path, header: Sequence[str]) -> list[tuple[int, str]]:
    """(line number, text) of an annotation file's frame lines, after its header (``header``, case aside) is checked;
    trailing blank lines are harmless."""
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise AnnotationError(f"{path}: not a text file") from None
    if not lines:
        raise AnnotationError(f"{path}:1: empty file; expected the header {','.join(header)}")
    if [c.strip().lower() for c in lines[0].split(",")] != [c.lower() for c in header]:
        raise AnnotationError(f"{path}:1: header {lines[0].strip()!r} is not {','.join(header)}")
    while lines and not lines[-1].strip():
        lines.pop()
    return [(n, line.strip()) for n, line in enumerate(lines[1:], start=2)]


def read_annotation(path: str | Path, classes: Sequence[str] = ABAW_CLASSES) -> np.ndarray:
    """Per-frame labels of one EXPR annotation file (int64, ``-1`` = ignore); frame i is line i + 2 of the file."""
    path = Path(path)
    rows = _lines(path, classes)
    labels = np.empty(len(rows), np.int64)
    for i, (n, text) in enumerate(rows):
        try:
            value = int(text)
        except ValueError:
            raise AnnotationError(f"{path}:{n}: {text!r} is not an integer label") from None
        if not -1 <= value < len(classes):
            raise AnnotationError(f"{path}:{n}: label {value} is outside -1..{len(classes) - 1}")
        labels[i] = value
    return labels


def _rows(path: Path, header: Sequence[str]) -> list[tuple[int, list[str]]]:
    """(line number, comma-separated fields) of a VA or AU annotation file's frame lines, one field per column."""
    rows = []
    for n, line in _lines(path, header):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(header):
            raise AnnotationError(f"{path}:{n}: {len(fields)} values, expected {len(header)} ({','.join(header)})")
        rows.append((n, fields))
    return rows


def read_va_annotation(path: str | Path) -> np.ndarray:
    """Per-frame [valence, arousal] of a VA annotation file (float32 [frames, 2]; frame i is line i + 2): values in
    [-1, 1], a frame unannotated when both are -5 (returned as NaN)."""
    path = Path(path)
    rows = _rows(path, VA_HEADER)
    out = np.empty((len(rows), 2), np.float32)
    for i, (n, fields) in enumerate(rows):
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise AnnotationError(f"{path}:{n}: {','.join(fields)!r} are not two numbers") from None
        if all(v == VA_UNANNOTATED for v in values):
            out[i] = np.nan
            continue
        bad = [v for v in values if not -1.0 <= v <= 1.0]
        if bad:
            what = "-5 marks an unannotated frame only when both values are -5" if VA_UNANNOTATED in bad else ""
            raise AnnotationError(f"{path}:{n}: value {bad[0]:g} is outside [-1, 1]{'; ' + what if what else ''}")
        out[i] = values
    return out


def read_au_annotation(path: str | Path) -> np.ndarray:
    """Per-frame action units of an AU annotation file (int8 [frames, 12] in the order of :data:`AU_NAMES`; frame i
    is line i + 2): 0 or 1, a frame unannotated when all twelve are -1 (kept as -1)."""
    path = Path(path)
    rows = _rows(path, AU_NAMES)
    out = np.empty((len(rows), len(AU_NAMES)), np.int8)
    for i, (n, fields) in enumerate(rows):
        try:
            values = [int(f) for f in fields]
        except ValueError:
            raise AnnotationError(f"{path}:{n}: {','.join(fields)!r} are not 12 integers") from None
        if all(v == -1 for v in values):
            out[i] = -1
            continue
        bad = [(name, v) for name, v in zip(AU_NAMES, values, strict=True) if v not in (0, 1)]
        if bad:
            name, v = bad[0]
            what = "; -1 marks an unannotated frame only when all 12 are -1" if v == -1 else ""
            raise AnnotationError(f"{path}:{n}: {name} is {v}, not 0 or 1{what}")
        out[i] = values
    return out


def crop_frames(crop_dir: Path) -> np.ndarray:
    """0-based frame indices that have a crop (``00001.jpg`` is frame 0), sorted."""
    frames = [int(p.stem) - 1 for p in crop_dir.iterdir() if p.suffix.lower() == ".jpg" and p.stem.isdigit()]
    return np.array(sorted(frames), np.int64)


@dataclass
class Entry:
    """One annotated person-track: an annotation file (or a test name), its crops and its raw video."""

    name: str
    split: str  # the expression task's split (for a video without an EXPR annotation: its first task's)
    annotation: Path | None  # the EXPR annotation file
    video: Path | None
    crop_dir: Path | None
    tasks: dict[str, tuple[str, Path]] = field(default_factory=dict)  # "va" / "au": (split, annotation file)
    mtl: MtlTrack | None = None  # its frames in the multi-task challenge's annotation


@dataclass
class Layout:
    root: Path
    annotation_dir: Path | None  # the EXPR folder
    crop_roots: list[Path]
    entries: list[Entry] = field(default_factory=list)
    task_dirs: dict[str, Path] = field(default_factory=dict)  # "va" / "au": their annotation folders
    mtl_dir: Path | None = None  # the multi-task challenge's folder

    def summary(self) -> str:
        """What was found, for the user: editions, crop folders, counts per split, what is missing."""
        by_split: dict[str, int] = {}
        for e in self.entries:
            by_split[e.split] = by_split.get(e.split, 0) + 1
        no_video = [e.name for e in self.entries if e.video is None]
        no_crops = [e.name for e in self.entries if e.crop_dir is None]
        folders = [self.annotation_dir, *self.task_dirs.values(), self.mtl_dir]
        annotated = {t: f"{sum(t in e.tasks for e in self.entries)} tracks" for t in self.task_dirs}
        if self.mtl_dir is not None:
            listed = [e.mtl for e in self.entries if e.mtl is not None]
            per = {s: sum(t.split == s for t in listed) for s in ("train", "validation")}
            frames = sum(len(t.frames) for t in listed)
            annotated["multi-task"] = f"{per['train']} train + {per['validation']} validation tracks, {frames} frames"
            by_video: dict[str, set[str]] = {}
            for e in self.entries:
                if e.mtl is not None:
                    by_video.setdefault(video_name(e.name), set()).add(e.mtl.split)
            shared = sorted(v for v, splits in by_video.items() if len(splits) > 1)
            if shared:  # their tracks share the raw video's audio: a held-out track's sound would train the other
                annotated["multi-task warning"] = (f"{len(shared)} raw videos have tracks in both splits (they share "
                                                   f"the audio): {', '.join(shared[:5])}")  # fmt: skip
        lines = [
            f"annotations: {', '.join(str(d.relative_to(self.root)) for d in folders if d is not None)}",
            *[f"{t} annotations: {n}" for t, n in annotated.items()],
            f"crops: {', '.join(str(c.relative_to(self.root)) for c in self.crop_roots) or 'none found'}",
            "entries: " + ", ".join(f"{k} {v}" for k, v in sorted(by_split.items())),
        ]
        if no_video:
            lines.append(f"no raw video for {len(no_video)}: {', '.join(no_video[:10])}")
        if no_crops:
            lines.append(f"no crop folder for {len(no_crops)}: {', '.join(no_crops[:10])}")
        return "\n".join(lines)


def discover(
    root: str | Path,
    test_names: Sequence[str] = (),
    annotation_dir: str | None = None,
    crop_dirs: Sequence[str] | None = None,
) -> Layout:
    """Find annotations, crop folders and raw videos under ``root``. ``annotation_dir`` / ``crop_dirs`` override
    the detection of the edition-specific names; ``test_names`` are the organisers' test videos (no labels)."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: not a folder")
    candidates = [annotation_dir] if annotation_dir else list(ANNOTATION_DIRS)
    found = [root / d for d in candidates if (root / d).is_dir()]
    task_dirs = {}
    for task in ("va", "au"):
        folder = next((root / d for d in TASK_DIRS[task] if (root / d).is_dir()), None)
        if folder is not None:
            task_dirs[task] = folder
    mtl_dir = find_mtl_folder(root)
    if not found and (annotation_dir or not (task_dirs or mtl_dir)):
        every = " or ".join(candidates + ([] if annotation_dir else [d for t in ("va", "au") for d in TASK_DIRS[t]]))
        raise LayoutError(f"{root}: no annotation folder ({every}); name yours with --annotation-dir")
    ann_dir = found[0] if found else None
    crop_roots = [root / d for d in (crop_dirs or CROP_DIRS) if (root / d).is_dir()]
    videos: dict[str, Path] = {}
    skip = {ann_dir, *task_dirs.values(), mtl_dir, *crop_roots} - {None}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in VIDEO_SUFFIXES and not any(s in path.parents for s in skip):
            videos.setdefault(path.stem, path)

    def crops_for(name: str) -> Path | None:
        for crop_root in crop_roots:
            if (crop_root / name).is_dir():
                return crop_root / name
        return None

    def annotations(folder: Path | None):
        for split_dir, split in SPLIT_DIRS.items():
            if folder is not None and (folder / split_dir).is_dir():
                for ann in sorted((folder / split_dir).glob("*.txt")):
                    yield ann.stem, split, ann

    layout = Layout(root=root, annotation_dir=ann_dir, crop_roots=crop_roots, task_dirs=task_dirs, mtl_dir=mtl_dir)
    entries: dict[str, Entry] = {}

    def entry(name: str, split: str) -> Entry:
        if name not in entries:
            entries[name] = Entry(name, split, None, videos.get(video_name(name)), crops_for(name))
        return entries[name]

    for name, split, ann in annotations(ann_dir):
        entry(name, split).annotation = ann
    for task, folder in task_dirs.items():
        for name, split, ann in annotations(folder):
            entry(name, split).tasks[task] = (split, ann)
    if mtl_dir is not None:  # read whole and checked before any extraction; a track only here is in its split
        tracks = read_mtl_folder(mtl_dir)
        check_frames_exist(tracks, {n: crops_for(n) for n in tracks}, {n for n in tracks if video_name(n) in videos})
        for name, track in tracks.items():
            entry(name, track.split).mtl = track
    for raw in test_names:
        name = Path(raw.strip()).stem
        if not name:
            continue
        if name in entries and entries[name].annotation is not None:
            raise LayoutError(f"{name} is a test video and has an expression annotation ({entries[name].annotation})")
        if name in entries and entries[name].mtl is not None:
            track = entries[name].mtl
            raise LayoutError(f"{name} is a test video and the multi-task annotation lists it as {track.split} "
                              f"({track.source}:{track.lines[0]})")  # fmt: skip
        entry(name, "test").split = "test"  # the expression task's test video (it may be annotated for others)
    layout.entries = list(entries.values())
    if not layout.entries:
        where = ", ".join(str(d) for d in [ann_dir, *task_dirs.values(), mtl_dir] if d is not None)
        raise LayoutError(f"{where}: no annotation files under {' or '.join(SPLIT_DIRS)} and no test names")
    return layout


def read_test_names(path: str | Path) -> list[str]:
    """The organisers' test list: one video name per line (blank lines and a ``.mp4``/``.avi`` suffix allowed), or
    the multi-task challenge's test release (a header ``image,...``, then ``<track>/<NNNNN>.jpg`` lines: its
    tracks, once each, in order)."""
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if lines and lines[0].lower().startswith("image"):
        return list(dict.fromkeys(line.split(",")[0].replace("\\", "/").split("/")[0] for line in lines[1:]))
    return [Path(line).stem for line in lines]
