"""``expr store info STORE [--verify]``: what a feature store holds (its feature sets with their encoders, videos,
frames, problems) and, with ``--verify``, whether every data file is as it was written (sizes and SHA-256 checksums
recorded in ``store.json``).

    expr store info cache/affwild2
    expr store info cache/affwild2 --verify"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from expr.cli.options import parse_options, positional
from expr.data.store import FrameStore, StoreError, read_header, verify_files
from expr.data.store_info import describe


@dataclass(kw_only=True)
class StoreInfoOptions:
    store: str = positional()
    """the feature store folder (CACHE)"""
    verify: bool = False
    """also check every data file against the size and SHA-256 checksum recorded when it was written"""


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
