"""``expr store info STORE [--verify]``: what a feature store holds (its feature sets with their encoders, videos,
frames, problems) and, with ``--verify``, whether every data file is as it was written (sizes and SHA-256 checksums
recorded in ``store.json``).

    expr store info cache/affwild2
    expr store info cache/affwild2 --verify
"""

from __future__ import annotations

from typing import Any

from expr.data.store import FrameStore, problem_lines
from expr.tasks import TASKS


def describe(store: FrameStore) -> str:
    """The store as a person reads it: sets, defaults, videos, frames, problems, files."""
    meta = store.meta
    splits = {s: int((store.splits == s).sum()) for s in ("train", "validation", "test")}
    videos = ", ".join(f"{k} {v}" for k, v in splits.items() if v)
    labelled, faces = int((store.labels >= 0).sum()), int(store.face.sum())
    lines = [
        f"store: {store.path} (format {meta.get('format_version')})",
        f"  videos: {len(store.names)} ({videos}); frames {len(store.face)} ({labelled} labelled, {faces} with a face)",
        f"  classes: {', '.join(store.classes)}",
    ]
    for task, splits_of in store.task_splits.items():  # Aff-Wild2's other tasks, each with its own split
        per = {s: int((splits_of == s).sum()) for s in ("train", "validation")}
        known = store.task_labels[task]
        frames = int(TASKS[task].annotated(known).sum())
        lines.append(f"  {task} labels: videos train {per['train']}, validation {per['validation']}; frames {frames}")
    if store.mtl_splits is not None:  # the multi-task challenge's: one split for the three tasks
        per = {s: int((store.mtl_splits == s).sum()) for s in ("train", "validation", "test")}
        listed = (
            (store.mtl["expr"] >= 0) | TASKS["va"].annotated(store.mtl["va"]) | TASKS["au"].annotated(store.mtl["au"])
        )
        lines.append(
            f"  multi-task split: videos train {per['train']}, validation {per['validation']}"
            + (f", test {per['test']}" if per["test"] else "")
            + f"; frames {int(listed.sum())} listed (--data.split_source mtl)"
        )
    source = meta.get("source")
    if isinstance(source, dict) and source:
        lines.append(f"  source: {source.get('layout', '?')} {source.get('root', '')}".rstrip())
    elif source:
        lines.append(f"  source: {source}")
    rows = [("name", "modality", "dim", "encoder", "weights")]
    for name, info in store.feature_sets.items():
        weights = "RANDOM" if info.get("random_weights") else "synthetic" if info.get("family") == "synthetic" else ""
        rows.append((name, info["modality"], str(info["dim"]), info.get("spec", "(not recorded)"), weights or "real"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines.append("  feature sets:")
    lines += ["    " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[4] for r in rows]
    default = meta.get("default_visual")
    default = ", ".join(default) if isinstance(default, list) else default
    text = meta.get("text_set") or ("clip" if (store.path / "text.safetensors").is_file() else "none")
    lines.append(f"  defaults: visual {default}, audio {meta.get('default_audio')}; prompt embeddings from {text}")
    lines.append(f"  media (face crops and audio for online mode): {'yes' if meta.get('media') else 'no'}")
    lines += problem_lines((meta.get("report") or {}).get("summary") or {})
    files = meta.get("files", {})
    size = sum(_bytes(v) for v in files.values())
    lines.append(f"  data files: {len(files)}, {size / 1e9:.2f} GB")
    return "\n".join(lines)


def _bytes(entry: Any) -> int:
    return int(entry["bytes"]) if isinstance(entry, dict) else int(entry)
