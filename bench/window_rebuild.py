"""Benchmark 3 (window rebuild) and 5 (scale): seconds to go from one window length to another, and the size of the
window index against copying features per window, from --scale 0.01 up to Aff-Wild2's full 2.6 M frames.

    python bench/window_rebuild.py --scales 0.01,0.1,1 [--plot bench/window_rebuild.png]

The window index never touches features, so this benchmark gives the builder a store with Aff-Wild2's frame count,
video count and label runs but no feature arrays (a full-scale feature store would need ~9 GB of random numbers to
show the same thing).
"""

from __future__ import annotations

import argparse
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
from common import AFFWILD2_FRAMES, AFFWILD2_VIDEOS, Timer, machine, print_table

from expr.config import ABAW_CLASSES
from expr.data.store import FrameStore
from expr.data.windows import build_windows

SMOKE = "--scales 0.01"
"""This script's smallest honest size: tests/test_bench.py runs it with these arguments (``{tmp}``: a temporary
folder) and checks that it prints its figures."""


class LabelsOnlyStore(FrameStore):
    """A :class:`FrameStore` with Aff-Wild2's frame and video counts and label runs but no feature arrays: it sets
    the per-video and per-frame arrays a store opened from disk has, and inherits every method (``videos_in``,
    ``frame_rows``, ...) from the real class, so what build_windows calls cannot drift from the store's."""

    def __init__(self, scale: float, seed: int = 0):  # no super().__init__: there are no files to open
        rng = np.random.default_rng(seed)
        videos = max(4, round(AFFWILD2_VIDEOS * scale))
        n = (rng.uniform(0.5, 1.5, videos) * AFFWILD2_FRAMES * scale / videos).astype(np.int64)
        self.path = Path(tempfile.gettempdir()) / "labels-only-store"
        self.meta = {"classes": list(ABAW_CLASSES)}
        self.names = [f"v{i:04d}" for i in range(videos)]
        self.num_frames = n
        self.frame_offset = np.concatenate([[0], np.cumsum(n)[:-1]])
        self.splits = np.array(["validation" if i % 5 == 0 else "train" for i in range(videos)])
        self.labels = np.repeat(rng.integers(-1, 8, int(n.sum()) // 60 + 1), 60)[: int(n.sum())]
        self.face = np.ones(int(n.sum()), bool)
        self.task_labels, self.task_splits, self.tasks = {}, {}, ["expr"]
        self.split_tag = ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="0.01,0.1,1")
    parser.add_argument("--plot", default=None, help="write a log-log plot of seconds vs frames (PNG)")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    build_windows(LabelsOnlyStore(0.001), "train", 30, 30, "center")  # warm-up (imports)
    rows, points = [], []
    for scale in [float(s) for s in args.scales.split(",")]:
        store = LabelsOnlyStore(scale)
        frames = int(store.num_frames.sum())
        for T, stride in ((30, 30), (60, 1)):
            tracemalloc.start()
            with Timer() as build:
                windows = build_windows(store, "train", T, stride, "center")
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            with tempfile.TemporaryDirectory() as tmp, Timer() as save:
                windows.save_to_disk(tmp)
                disk = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
            copied = len(windows) * T * (512 + 768 * 50 / 30) * 2  # fp16 visual + audio features per window
            rows.append(
                [
                    scale,
                    frames,
                    f"{T} / {stride}",
                    len(windows),
                    build.seconds,
                    save.seconds,
                    peak / 2**20,
                    disk / 2**20,
                    copied / 2**30,
                ]
            )
            points.append((frames, T, stride, build.seconds + save.seconds))
    print_table(
        "Window rebuild: new window length, index built and saved (the trainer's path, CPU)",
        [
            "scale",
            "frames",
            "T / stride",
            "windows",
            "build s",
            "save s",
            "peak build MiB",
            "index on disk MiB",
            "if features were copied GiB",
        ],
        rows,
    )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        for T, stride in ((30, 30), (60, 1)):
            xs = [p[0] for p in points if p[1:3] == (T, stride)]
            ys = [p[3] for p in points if p[1:3] == (T, stride)]
            ax.loglog(xs, ys, "o-", label=f"T={T}, stride {stride}")
        ax.axhline(5, color="grey", ls="--", label="target 5 s")
        ax.set_xlabel("frames in the store")
        ax.set_ylabel("seconds to rebuild the window index")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
