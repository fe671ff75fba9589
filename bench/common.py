"""Shared helpers of the benchmarks: a synthetic feature store at a fraction of Aff-Wild2's EXPR size, the machine's
description, and table printing."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AFFWILD2_FRAMES = 2_600_000  # annotated EXPR frames, train + validation
AFFWILD2_VIDEOS = 550


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, Python {platform.python_version()}"


def synthetic_store(scale: float, cache: Path | None = None, seed: int = 0) -> Path:
    """A feature store shaped like Aff-Wild2 EXPR at ``scale`` (frames, videos, 30 fps, 50 audio frames/s), random
    fp16 features, runs of labels; written once under ``cache`` (default ``$EXPR_CACHE_DIR/bench``)."""
    from expr.config import ABAW_CLASSES
    from expr.data.store import VideoRecord, write_store
    from expr.features.backbones import cache_root

    cache = cache or cache_root() / "bench"
    path = cache / f"affwild2-synthetic-{scale:g}"
    if (path / "store.json").is_file():
        return path
    videos = max(4, round(AFFWILD2_VIDEOS * scale))
    per_video = max(64, round(AFFWILD2_FRAMES * scale / videos))

    def records():  # one video at a time: the store writer streams, so scale 1 (~9 GB) never sits in memory twice
        rng = np.random.default_rng(seed)
        # features are random normal values cut from one pool at random offsets: what the benchmarks time (gathers,
        # copies, the head's arithmetic) does not depend on the values, and scale 1 is written in seconds, not minutes
        pool = rng.standard_normal(1 << 24, np.float32).astype(np.float16)

        def features(rows: int, dim: int) -> np.ndarray:
            out = np.empty(rows * dim, np.float16)
            for s in range(0, len(out), len(pool) // 2):
                piece = min(len(pool) // 2, len(out) - s)
                start = int(rng.integers(0, len(pool) - piece + 1))
                out[s : s + piece] = pool[start : start + piece]
            return out.reshape(rows, dim)

        for i in range(videos):
            n = int(per_video * rng.uniform(0.5, 1.5))
            labels = np.repeat(rng.integers(-1, 8, n // 60 + 1), 60)[:n]
            na = int(n / 30 * 50)
            yield VideoRecord(
                name=f"v{i:04d}",
                split="validation" if i % 5 == 0 else "train",
                fps=30.0,
                visual=features(n, 512),
                face=rng.random(n) > 0.05,
                labels=labels,
                audio=features(na, 768),
            )

    meta = {"source": "synthetic benchmark", "classes": list(ABAW_CLASSES), "backbones": {"clip": "none"}}
    return write_store(path, records(), meta)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def format_table(title: str, header: list[str], rows: list[list]) -> str:
    """A Markdown table under a ``###`` title, numbers formatted as the benchmarks print them."""
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def print_table(title: str, header: list[str], rows: list[list]) -> str:
    text = format_table(title, header, rows)
    print(text + "\n")
    return text


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:,.1f}" if abs(x) >= 10 else f"{x:.3g}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)
