"""The annotations of ABAW's multi-task challenge (s-Aff-Wild2): one split shared by valence-arousal, the 8
expressions and the 12 action units, labelled on a selection of frames.

A tree holds them beside the uni-task folders::

    ROOT/MTL_Challenge/train_set.txt          (or Train_Set.txt, training_set_annotations_22.txt, ...)
    ROOT/MTL_Challenge/validation_set.txt

Each file has a header line (``image,valence,arousal,expression,aus`` or with the unit names), then one line per
annotated image: ``<track>/<NNNNN>.jpg`` (a face crop of ``cropped_aligned``, numbered from 1), valence and arousal
in [-1, 1] (``-5,-5`` = unannotated), the expression 0..7 (``-1`` = unannotated) and the 12 units 0/1 (all ``-1`` =
unannotated). Only reading and checking live here; :mod:`expr.extract.affwild2` attaches the labels to the tracks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from expr.tasks import ABAW_CLASSES, AU, AU_NAMES, EXPR, MTL_DIRS, VA

MTL_FIELDS = 4 + len(AU_NAMES)  # image, valence, arousal, expression, 12 units
SPLIT_PREFIXES = (("train", "train"), ("val", "validation"))  # a file's stem, lower case, starts with ... -> split


class MtlError(ValueError):
    """A malformed multi-task annotation; the message names the file and line."""


@dataclass
class MtlTrack:
    """One track's multi-task labels: the listed frames (0-based) and their values, as the file gives them."""

    split: str
    frames: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # each frame's line in ``source``
    expr: list[int] = field(default_factory=list)
    va: list[tuple[float, float]] = field(default_factory=list)  # NaN, NaN: unannotated
    au: list[tuple[int, ...]] = field(default_factory=list)  # all -1: unannotated
    source: Path | None = None

    def labels(self, length: int) -> dict[str, np.ndarray]:
        """Frame labels of a track of ``length`` frames: the listed frames' values, every other frame unannotated
        (``expr`` [length] int64, ``va`` [length, 2] float32, ``au`` [length, 12] int8)."""
        length = max(length, max(self.frames, default=-1) + 1)
        out = {
            "expr": np.full(length, EXPR.missing, np.int64),
            "va": np.full((length, VA.width), VA.missing, np.float32),
            "au": np.full((length, AU.width), AU.missing, np.int8),
        }
        idx = np.asarray(self.frames, np.int64)
        if len(idx):
            out["expr"][idx] = self.expr
            out["va"][idx] = self.va
            out["au"][idx] = self.au
        return out


def find_mtl_folder(root: Path) -> Path | None:
    """The multi-task annotation folder under ``root``, or None."""
    return next((root / d for d in MTL_DIRS if (root / d).is_dir()), None)


def split_files(folder: Path) -> dict[str, Path]:
    """Split -> annotation file of a multi-task folder (a ``.txt`` whose name starts with ``train`` or ``val``)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.txt")):
        stem = path.stem.lower()
        split = next((s for prefix, s in SPLIT_PREFIXES if stem.startswith(prefix)), None)
        if split is None:
            continue
        if split in found:
            raise MtlError(f"{folder}: two {split} files, {found[split].name} and {path.name}; keep one")
        found[split] = path
    if not found:
        raise MtlError(f"{folder}: no train_set.txt or validation_set.txt (the challenge's multi-task annotation)")
    return found


def _image(path: Path, n: int, text: str) -> tuple[str, int]:
    """(track, 0-based frame) of an image field ``<track>/<NNNNN>.jpg``."""
    parts = text.replace("\\", "/").split("/")
    stem = Path(parts[-1]).stem
    if len(parts) != 2 or not parts[0] or not stem.isdigit() or int(stem) < 1:
        raise MtlError(f"{path}:{n}: image {text!r} is not <video>/<NNNNN>.jpg (frames numbered from 1)")
    return parts[0], int(stem) - 1


def _values(path: Path, n: int, fields: list[str]) -> tuple[int, tuple[float, float], tuple[int, ...]]:
    """(expression, (valence, arousal), units) of a line's 15 values, sentinels turned into the store's."""
    try:
        valence, arousal = float(fields[1]), float(fields[2])
        expression = int(fields[3])
        units = tuple(int(f) for f in fields[4:])
    except ValueError:
        raise MtlError(f"{path}:{n}: {','.join(fields[1:])!r} are not 2 numbers and 13 integers") from None
    if valence == arousal == VA.file_missing:
        va = (np.nan, np.nan)
    else:
        bad = [v for v in (valence, arousal) if not -1.0 <= v <= 1.0]
        if bad:
            hint = "; -5 marks unannotated only when both are -5" if VA.file_missing in bad else ""
            raise MtlError(f"{path}:{n}: valence/arousal {bad[0]:g} is outside [-1, 1]{hint}")
        va = (valence, arousal)
    if not EXPR.file_missing <= expression < len(ABAW_CLASSES):
        raise MtlError(f"{path}:{n}: expression {expression} is outside -1..{len(ABAW_CLASSES) - 1}")
    if not all(u == AU.file_missing for u in units):
        wrong = [(name, u) for name, u in zip(AU_NAMES, units, strict=True) if u not in (0, 1)]
        if wrong:
            hint = "; -1 marks unannotated only when all 12 are -1" if wrong[0][1] == AU.file_missing else ""
            raise MtlError(f"{path}:{n}: {wrong[0][0]} is {wrong[0][1]}, not 0 or 1{hint}")
    else:
        units = (int(AU.missing),) * len(AU_NAMES)
    return expression, va, units


def read_mtl_file(path: str | Path, split: str, tracks: dict[str, MtlTrack] | None = None) -> dict[str, MtlTrack]:
    """Add the tracks of one multi-task split file to ``tracks`` (by name). A malformed line, a frame listed twice
    (in this file or another split's) or a track listed in two splits is an :class:`MtlError` naming ``file:line``."""
    path = Path(path)
    tracks = {} if tracks is None else tracks
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise MtlError(f"{path}: not a text file") from None
    if not lines or not lines[0].strip().lower().startswith("image"):
        raise MtlError(f"{path}:1: the header must start with 'image' (image,valence,arousal,expression,aus)")
    seen: dict[tuple[str, int], tuple[Path, int]] = {
        (name, f): (t.source, line) for name, t in tracks.items() for f, line in zip(t.frames, t.lines, strict=True)
    }
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != MTL_FIELDS:
            raise MtlError(f"{path}:{n}: {len(fields)} fields, expected {MTL_FIELDS} (image, valence, arousal, "
                           f"expression and the 12 units {','.join(AU_NAMES)})")  # fmt: skip
        name, frame = _image(path, n, fields[0])
        if (name, frame) in seen:
            where, first = seen[(name, frame)]
            raise MtlError(f"{path}:{n}: {fields[0]} is already listed at {where}:{first}; a frame has one split")
        track = tracks.setdefault(name, MtlTrack(split, source=path))
        if track.split != split:
            raise MtlError(
                f"{path}:{n}: {name} has frames in {track.split} ({track.source}:{track.lines[0]}) and in {split}; the "
                f"challenge splits by video, so one track cannot be in both"
            )
        expression, va, units = _values(path, n, fields)
        seen[(name, frame)] = (path, n)
        track.frames.append(frame)
        track.lines.append(n)
        track.expr.append(expression)
        track.va.append(va)
        track.au.append(units)
    return tracks


def read_mtl_folder(folder: Path) -> dict[str, MtlTrack]:
    """Every track of a multi-task folder with its split and labels (train first, then validation)."""
    tracks: dict[str, MtlTrack] = {}
    for split, path in sorted(split_files(folder).items(), key=lambda kv: kv[0] != "train"):
        read_mtl_file(path, split, tracks)
    return tracks


def check_frames_exist(tracks: dict[str, MtlTrack], crop_dirs: dict[str, Path | None], videos: set[str]) -> None:
    """Every listed frame must be a face crop of its track (when the track has a crop folder), and every track must
    have a crop folder or a raw video; otherwise an :class:`MtlError` naming the first offending ``file:line``."""
    for name, track in tracks.items():
        folder = crop_dirs.get(name)
        if folder is None:
            if name not in videos:
                raise MtlError(f"{track.source}:{track.lines[0]}: {name} has no face-crop folder and no raw video in "
                               f"this tree")  # fmt: skip
            continue
        crops = {p.name for p in folder.iterdir()}
        for frame, line in zip(track.frames, track.lines, strict=True):
            if f"{frame + 1:05d}.jpg" not in crops:
                raise MtlError(f"{track.source}:{line}: {name}/{frame + 1:05d}.jpg does not exist in {folder}")
