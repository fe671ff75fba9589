"""Checking a store against what was written: the header (``store.json``) and the sizes and SHA-256 checksums it
records for every data file (recorded by :func:`write_header`, sizes checked on opening, checksums by ``expr store
info --verify``), and an opened store's record against its data (:class:`StoreChecks`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from expr.atomic import write_text
from expr.data.store.format import DATA_FOLDERS, StoreError
from expr.data.store.span import video_of_rows

logger = logging.getLogger("expr.store")


def sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def data_files(root: Path, previous: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Every data file of a store (relative path -> bytes, SHA-256, modification time), as the header records them;
    a file ``previous`` lists with the same size and modification time keeps its recorded checksum (adding a feature
    set does not read the others again)."""
    out = {}
    read = [p for p in root.rglob("*") if p.suffix in (".arrow", ".json") and p.is_file()]  # tables and their records
    for p in sorted(read + [root / "text.safetensors"] if (root / "text.safetensors").is_file() else read):
        rel = str(p.relative_to(root))
        parts = p.relative_to(root).parts
        if (parts[0] not in DATA_FOLDERS and rel != "text.safetensors") or any(part.startswith(".") for part in parts):
            continue  # window indexes (windows/) are caches, not data; store.json records the others
        stat = p.stat()
        old = (previous or {}).get(rel)
        if isinstance(old, dict) and old.get("bytes") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns:
            out[rel] = old
        else:
            out[rel] = {"bytes": stat.st_size, "sha256": sha256(p), "mtime_ns": stat.st_mtime_ns}
    return out


def write_header(root: Path, header: dict[str, Any]) -> None:
    """``store.json`` with the sizes and checksums of the data files as they are now (sizes are checked when the
    store is opened, checksums by ``expr store info --verify``)."""
    header = {**header, "files": data_files(root, header.get("files"))}
    write_text(root / "store.json", json.dumps(header, indent=2))


def verify_files(root: Path, meta: dict[str, Any]) -> list[str]:
    """The data files that differ from what the header recorded (missing, another size, another SHA-256)."""
    problems = []
    for rel, entry in meta.get("files", {}).items():
        path = root / rel
        size = entry.get("bytes") if isinstance(entry, dict) else entry
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != size:
            problems.append(f"{rel}: {path.stat().st_size} bytes, {size} were written")
        elif isinstance(entry, dict) and sha256(path) != entry.get("sha256"):
            problems.append(f"{rel}: SHA-256 differs from the one recorded when it was written")
    return problems


def read_header(path: Path) -> dict[str, Any]:
    """A store's ``store.json``, with the keys every reader needs; a broken one is a ``StoreError`` naming it."""
    fix = "restore it from a copy of the store, or re-run expr prepare into a new --out"
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: damaged store record, not JSON ({e}); {fix}") from None
    if not isinstance(meta, dict):
        raise StoreError(f"{path}: damaged store record (a JSON {type(meta).__name__}, not an object); {fix}")
    needed = ["classes"] + (["sets"] if meta.get("format_version", 1) != 1 else [])
    missing = [k for k in needed if k not in meta]
    if missing:
        raise StoreError(f"{path}: damaged store record: no '{missing[0]}' key; {fix}")
    if "files" not in meta:
        logger.warning("%s records no data files: a truncated or replaced file would go unnoticed until it is read "
                       "(`expr store info %s --verify` cannot check it either)", path, path.parent)  # fmt: skip
    return meta


def check_files(root: Path, meta: dict[str, Any]) -> None:
    """Every data file the header lists must exist with its recorded size: a truncated or missing file (a copy cut
    short, a full disk) is named here, before a reader fails deep inside Arrow."""
    for rel, entry in meta.get("files", {}).items():
        path = root / rel
        size = entry.get("bytes") if isinstance(entry, dict) else entry
        if not path.is_file():
            raise StoreError(f"{root}: damaged store: {rel} is missing; copy the store again or re-run expr prepare")
        if path.stat().st_size != size:
            raise StoreError(
                f"{root}: damaged store: {rel} has {path.stat().st_size} bytes, {size} were written; copy the store "
                f"again, or re-run expr prepare into a new --out"
            )


class StoreChecks:
    """The checks of an opened :class:`~expr.data.store.read.FrameStore` (its base class): its record against its
    data, and a scan for non-finite features."""

    def _check_record(self, visual_arrays: list) -> None:
        """``store.json`` against the data: every chosen set has one row per frame (visual) or per audio step of the
        recorded counts (audio), the videos' frame counts add up, and every label is a class or unlabelled."""
        damaged = f"{self.path}: damaged store:"
        fix = "copy the store again, or re-run expr prepare into a new --out"
        n = len(self.labels)
        if int(self.num_frames.sum()) != n or len(self.frame_offset) != len(self.names):
            raise StoreError(f"{damaged} its videos list {int(self.num_frames.sum())} frames, frames/ holds {n}; {fix}")
        for name, array in zip(self.visual_sets, visual_arrays, strict=True):
            if len(array) != n:
                raise StoreError(f"{damaged} feature set '{name}' has {len(array)} rows of {self.sets[name]['dim']} "
                                 f"values where its {n} frames need {n} (store.json's width or the data is wrong); "
                                 f"{fix}")  # fmt: skip
        if self.audio_set is not None and (
            len(self.num_audio) != len(self.names) or len(self.audio) != int(self.num_audio.sum())
        ):
            raise StoreError(f"{damaged} audio set '{self.audio_set}' has {len(self.audio)} rows, its recorded counts "
                             f"say {int(self.num_audio.sum())} over {len(self.num_audio)} videos; {fix}")  # fmt: skip
        bad = np.flatnonzero((self.labels < -1) | (self.labels >= len(self.classes)))
        if len(bad):
            v = int(video_of_rows(self.frame_offset, bad[:1])[0])
            raise StoreError(f"{damaged} frame {int(bad[0] - self.frame_offset[v])} of video {self.names[v]} has "
                             f"label {int(self.labels[bad[0]])}, not one of its {len(self.classes)} classes or -1 "
                             f"(unlabelled); {len(bad)} such frames; {fix}")  # fmt: skip

    def first_non_finite(self, chunk: int = 1 << 16) -> str | None:
        """Where the first NaN or infinite feature of the chosen sets is (set, video, frame or audio step), or None.
        A scan of every row: for saying why a loss is not finite, not for every opening."""
        sources = [(n, self.set_array(n), "visual") for n in self.visual_sets]
        if self.audio_set is not None:
            sources.append((self.audio_set, self.audio, "audio"))
        for name, array, modality in sources:
            for start in range(0, len(array), chunk):
                rows = np.asarray(array[start : start + chunk], np.float32)
                bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
                if len(bad):
                    row = start + int(bad[0])
                    offsets = self.frame_offset if modality == "visual" else self.audio_offset
                    v = int(np.searchsorted(offsets, row, side="right") - 1)
                    unit = "frame" if modality == "visual" else "audio step"
                    return (f"{self.path}: feature set '{name}' has a non-finite value at row {row} ({unit} "
                            f"{row - int(offsets[v])} of video {self.names[v]})")  # fmt: skip
        return None
