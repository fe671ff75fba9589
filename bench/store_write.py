"""Writing and opening a feature store at Aff-Wild2 scale: seconds, peak anonymous memory (RssAnon, sampled: the
process's own memory, not the page cache of the files it maps), and the store's size on disk.

    python bench/store_write.py --scale 1 [--dir /tmp/expr-bench]
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from pathlib import Path

from common import Timer, machine, print_table, synthetic_store

SMOKE = "--scale 0.0005 --dir {tmp}/store"
"""This script's smallest honest size: tests/test_bench.py runs it with these arguments (``{tmp}``: a temporary
folder) and checks that it prints its figures."""


class PeakAnon:
    """Samples /proc/self/status RssAnon every 50 ms; ``peak`` in MiB."""

    def __enter__(self):
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, anon_mib())
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anon_mib())


def anon_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0


def phase(name: str, scale: float, root: Path) -> list:
    """One measurement in this (fresh) process: ``write`` the store, or ``open`` it."""
    from expr.data.store import FrameStore

    base = anon_mib()
    if name == "write":
        with PeakAnon() as mem, Timer() as t:
            path = synthetic_store(scale, cache=root)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30
        return [t.seconds, mem.peak - base, size]
    path = next(root.glob("affwild2-synthetic-*"))
    with PeakAnon() as mem, Timer() as t:
        store = FrameStore(path)
        frames = len(store.labels)
    return [t.seconds, mem.peak - base, frames]


def main() -> None:
    import json
    import subprocess
    import sys

    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--dir", default="/tmp/expr-bench-store")
    parser.add_argument("--phase", choices=["write", "open"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = Path(args.dir)
    if args.phase:
        print(json.dumps(phase(args.phase, args.scale, root)))
        return
    print(f"machine: {machine()}\n")
    shutil.rmtree(root, ignore_errors=True)
    results = {}
    for name in ("write", "open"):  # each in a fresh process: memory freed by one phase does not hide the next
        cmd = [sys.executable, __file__, "--scale", str(args.scale), "--dir", str(root), "--phase", name]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    (write_s, write_mem, size), (open_s, open_mem, frames) = results["write"], results["open"]
    print_table(
        f"Store writing and opening (scale {args.scale:g}; each phase in a fresh process)",
        ["frames", "store GiB", "write s", "write peak anon MiB", "open s", "open peak anon MiB"],
        [[frames, size, write_s, write_mem, open_s, open_mem]],
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
