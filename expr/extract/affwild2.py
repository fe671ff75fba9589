"""The items of an Aff-Wild2 tree as distributed for the ABAW challenge: every task's annotations, face crops and
videos, matched by name, with the store's record of where they came from."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from expr.config import ABAW_CLASSES
from expr.data.affwild2 import (
    crop_frames,
    discover,
    read_annotation,
    read_au_annotation,
    read_test_names,
    read_va_annotation,
)
from expr.data.item import Item


def items_from_affwild2(
    root: str | Path,
    test_names: str | Path | None = None,
    annotation_dir: str | None = None,
    crop_dirs: Sequence[str] | None = None,
) -> tuple[list[Item], dict[str, Any], list[str]]:
    """(the items of the tree at ``root``, the store's ``source`` record, the classes). ``test_names``: the file of
    the organisers' test video names; ``annotation_dir``, ``crop_dirs``: folder names under ``root`` (default:
    detected). Every annotation is read first: a malformed line stops before any extraction."""
    names = read_test_names(test_names) if test_names else []
    layout = discover(root, names, annotation_dir, crop_dirs)
    print(layout.summary())
    items = []
    readers = {"va": read_va_annotation, "au": read_au_annotation}
    for e in layout.entries:  # read every annotation first: a malformed line stops before any extraction
        labels = read_annotation(e.annotation) if e.annotation is not None else None
        crops = None
        if e.crop_dir is not None:
            crops = {int(i): e.crop_dir / f"{i + 1:05d}.jpg" for i in crop_frames(e.crop_dir)}
        item = Item(e.name, e.split, labels, crops if crops is not None else {}, e.video, None, str(e.annotation))
        for task, (_, path) in e.tasks.items():
            setattr(item, task, readers[task](path))
        item.task_splits = {task: split for task, (split, _) in e.tasks.items()}
        if e.mtl is not None:
            item.mtl, item.task_splits["mtl"] = e.mtl.labels(0), e.mtl.split
        item.task_splits = item.task_splits or None
        items.append(item)
    source = {
        "layout": "affwild2",
        "root": str(Path(root).resolve()),
        "annotation_dir": layout.annotation_dir.name if layout.annotation_dir else None,
        "task_dirs": {task: folder.name for task, folder in layout.task_dirs.items()},
        "mtl_dir": layout.mtl_dir.name if layout.mtl_dir else None,
        "crop_dirs": [c.name for c in layout.crop_roots],
        "test_names": str(test_names) if test_names else None,
    }
    return items, source, list(ABAW_CLASSES)
