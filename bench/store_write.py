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


def main() -> None:
    from expr.data.store import FrameStore

    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--dir", default="/tmp/expr-bench-store")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    base = anon_mib()
    with PeakAnon() as write_mem, Timer() as write:
        path = synthetic_store(args.scale, cache=root)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30
    with PeakAnon() as open_mem, Timer() as opened:
        store = FrameStore(path)
    frames = len(store.labels)
    del store
    print_table(
        f"Store writing and opening (scale {args.scale:g})",
        ["frames", "store GiB", "write s", "write peak anon MiB", "open s", "open peak anon MiB"],
        [[frames, size, write.seconds, write_mem.peak - base, opened.seconds, open_mem.peak - base]],
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
