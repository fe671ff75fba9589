"""The generic layout for other corpora: a folder of videos and/or frame folders, plus a CSV of labels.

    ROOT/<name>.mp4 | .avi | .mov | .mkv | .webm      a video (frames, frame rate and audio), and/or
    ROOT/<name>/00001.jpg ...                         its face crops (frame images; when both exist, the crops are
                                                      the frames and the video gives the frame rate and the audio)

LABELS.csv has a header and the columns ``video,label`` (one label for every frame of the clip) or
``video,frame,label`` (per frame, 0-based; frames not listed are unlabelled), and optionally ``split``
(``train`` / ``validation`` / ``test``). A label is a class name (case-insensitive) or its index; ``-1`` or an
empty label means "ignore". Without a ``split`` column, videos are split by a hash of their name (``--val-fraction``
of them to validation). Videos in ROOT that the CSV does not list are prepared as ``test`` (no labels).

Frame images named by a number are placed by it (``--frame-base``: the number of the first frame, 1 as in
Aff-Wild2's crops); other names are taken in sorted order as consecutive frames.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from expr.config import ABAW_CLASSES
from expr.data.affwild2 import AnnotationError, LayoutError
from expr.data.item import Item
from expr.data.media import MediaError, probe

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def frame_images(folder: Path, frame_base: int = 1) -> dict[int, Path]:
    """0-based frame index -> image file of a frame folder."""
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if images and all(p.stem.isdigit() for p in images):
        return {int(p.stem) - frame_base: p for p in images if int(p.stem) >= frame_base}
    return dict(enumerate(images))


def _parse_label(text: str, classes: Sequence[str], where: str) -> int:
    text = text.strip()
    if text in ("", "-1"):
        return -1
    lower = [c.lower() for c in classes]
    if text.lower() in lower:
        return lower.index(text.lower())
    try:
        value = int(text)
    except ValueError:
        raise AnnotationError(
            f"{where}: label {text!r} is neither a class ({', '.join(classes)}) nor an index"
        ) from None
    if not 0 <= value < len(classes):
        raise AnnotationError(f"{where}: label {value} is outside 0..{len(classes) - 1}")
    return value


def read_labels_csv(path: str | Path, classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per video: ``split`` (or None) and ``clip`` (one label) or ``frames`` ({frame: label})."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: label file not found")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise AnnotationError(f"{path}:1: empty file; expected a header such as video,frame,label") from None
        for col in ("video", "label"):
            if col not in header:
                raise AnnotationError(f"{path}:1: no '{col}' column in the header {','.join(header)}")
        col = {name: header.index(name) for name in header}
        videos: dict[str, dict[str, Any]] = {}
        for line_no, row in enumerate(reader, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            where = f"{path}:{line_no}"
            if len(row) != len(header):
                raise AnnotationError(f"{where}: {len(row)} fields, the header has {len(header)}")
            name = Path(row[col["video"]].strip()).stem
            label = _parse_label(row[col["label"]], classes, where)
            entry = videos.setdefault(name, {"split": None, "clip": None, "frames": {}, "lines": {}})
            if "split" in col:
                split = row[col["split"]].strip().lower()
                if split not in ("train", "validation", "test"):
                    raise AnnotationError(f"{where}: split {split!r} is not train, validation or test")
                if entry["split"] not in (None, split):
                    raise AnnotationError(f"{where}: video {name} is in two splits ({entry['split']}, {split})")
                entry["split"] = split
            if "frame" in col:
                try:
                    frame = int(row[col["frame"]])
                except ValueError:
                    raise AnnotationError(f"{where}: frame {row[col['frame']]!r} is not an integer") from None
                if frame < 0:
                    raise AnnotationError(f"{where}: frame {frame} is negative (frames are 0-based)")
                _once(entry, frame, label, line_no, where, f"frame {frame} of video {name}")
                entry["frames"][frame] = label
            else:
                _once(entry, None, label, line_no, where, f"video {name}")
                entry["clip"] = label
    if not videos:
        raise AnnotationError(f"{path}: no label rows")
    for entry in videos.values():
        del entry["lines"]
    return videos


def _once(entry: dict[str, Any], key, label, line_no: int, where: str, what: str) -> None:
    """A label given twice must be the same label: two different ones are refused naming both lines."""
    first = entry["lines"].setdefault(key, (line_no, label))
    if first[1] != label:
        raise AnnotationError(f"{where}: {what} is labelled {label} here and {first[1]} on line {first[0]}; keep one")


def _hash_split(name: str, fraction: float) -> str:
    return "validation" if zlib.crc32(name.encode()) % 1000 < fraction * 1000 else "train"


def items_from_folder(args) -> tuple[list, dict[str, Any], list[str]]:

    root = Path(args.root)
    if not root.is_dir():
        raise LayoutError(f"{root}: not a folder")
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else list(ABAW_CLASSES)
    videos = {p.stem: p for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES}
    folders = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    folders = {n: p for n, p in folders.items() if any(q.suffix.lower() in IMAGE_SUFFIXES for q in p.iterdir())}
    labels = read_labels_csv(args.labels, classes)
    missing = sorted(set(labels) - set(videos) - set(folders))
    if missing:
        raise LayoutError(
            f"{args.labels}: {len(missing)} labelled videos have no video or frame folder in {root}: "
            + ", ".join(missing[:10])
        )
    names = sorted(set(videos) | set(folders))
    if not names:
        raise LayoutError(f"{root}: no videos ({', '.join(VIDEO_SUFFIXES)}) and no frame folders")
    has_split = any(e["split"] for e in labels.values())
    items = []
    for name in names:
        crops = frame_images(folders[name], args.frame_base) if name in folders else None
        entry = labels.get(name)
        frame_labels = None
        if entry is not None:
            n = max(crops) + 1 if crops else 0
            if name in videos:
                try:
                    n = probe(videos[name]).num_frames
                except MediaError:
                    pass  # extraction reports the unreadable video
            if entry["clip"] is not None or not entry["frames"]:
                frame_labels = np.full(n, entry["clip"] if entry["clip"] is not None else -1, np.int64)
            else:  # frames the CSV does not list stay unlabelled; listed frames past the video's end are reported
                frame_labels = np.full(max(n, max(entry["frames"]) + 1), -1, np.int64)
                for frame, label in entry["frames"].items():
                    frame_labels[frame] = label
            split = entry["split"] or _hash_split(name, args.val_fraction)
        else:
            split = "test"
        items.append(Item(name, split, frame_labels, crops, videos.get(name), args.fps, str(args.labels)))
    train = [it for it in items if it.split == "train"]
    if not has_split and len(train) > 1 and not any(it.split == "validation" for it in items):
        min(train, key=lambda it: zlib.crc32(it.name.encode())).split = "validation"  # the hash gave none
    source = {"layout": "folder", "root": str(root.resolve()), "labels": str(Path(args.labels).resolve())}
    return items, source, classes
