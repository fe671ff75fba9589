"""``expr store info STORE [--verify]``: what a feature store holds (its feature sets with their encoders, videos,
frames, problems) and, with ``--verify``, whether every data file is as it was written (sizes and SHA-256 checksums
recorded in ``store.json``).

    expr store info cache/affwild2
    expr store info cache/affwild2 --verify
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from expr.data.store import FrameStore, StoreError, problem_lines, read_header, verify_files
from expr.options import parse_options, positional


@dataclass(kw_only=True)
class StoreInfoOptions:
    store: str = positional()
    """the feature store folder (CACHE)"""
    verify: bool = False
    """also check every data file against the size and SHA-256 checksum recorded when it was written"""


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
        frames = int((~np.isnan(known).any(1)).sum() if task == "va" else (known >= 0).all(1).sum())
        lines.append(f"  {task} labels: videos train {per['train']}, validation {per['validation']}; frames {frames}")
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "info":
        print("usage: expr store info STORE [--verify]", file=sys.stderr)
        return 2 if argv and argv[0] not in ("-h", "--help") else 0
    doc = __doc__.split("\n\n")[0]
    args, _ = parse_options(StoreInfoOptions, argv[1:], "expr store info", "store", doc, config_keys=False)
    try:
        if args.verify:  # sizes and checksums first: the damage --verify exists to report must not stop it
            header = Path(args.store) / "store.json"
            if not header.is_file():
                raise StoreError(f"{args.store}: not a feature store (no store.json). Create one with `expr prepare`.")
            meta = read_header(header)
            problems = verify_files(Path(args.store), meta)
            if problems:
                print(f"damaged store ({len(problems)} of {len(meta.get('files', {}))} recorded files):\n  "
                      + "\n  ".join(problems), file=sys.stderr)  # fmt: skip
                return 1
            if not meta.get("files"):
                print(f"error: {header} records no data files, so nothing can be verified", file=sys.stderr)
                return 1
        store = FrameStore(args.store)
        print(describe(store))
        if args.verify:
            print(f"  verified: every data file matches its recorded size and SHA-256 ({len(store.meta['files'])})")
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
