"""Built-in demo data: a seeded generator of synthetic "videos" in the real store schema.

It is a functional test bed, NOT a benchmark of emotion recognition: the features are not CLIP or Wav2Vec2
outputs of real faces and voices. What it does imitate is the structure that the paper's components exploit:

- Labels come in runs (segments of 40-200 frames), imbalanced like Aff-Wild2 (Neutral and Happiness frequent,
  Fear and Disgust rare), with unlabelled (-1) segments, runs of frames without a face (masked), a mix of
  25 and 30 fps videos, and videos without an audio track.
- The 8 classes form 4 visual groups, each with a static prototype direction in the 512-d visual space:
  {Neutral, Sadness} and {Anger, Disgust} look identical and differ only in the audio (class-specific audio
  prototypes on voiced audio frames); {Happiness, Surprise} and {Fear, Other} sound identical and differ only in
  visual dynamics: an oscillation along a group direction that is slow for one class and fast for the other.
  A single frame of either has the same distribution (random phase), so only a model that compares neighbouring
  frames (the TCN) tells them apart.

So a visual-only or audio-only model cannot separate two of the four pairs, nor can a model without temporal
modelling separate the other two: each such ablation loses about a quarter of the macro-F1, and the full model
reaches above 0.9.

The videos are also annotated for Aff-Wild2's other tasks, from the same hidden expression (so a multi-task head
learns them from the same evidence): valence-arousal, a value per class (Happiness pleasant and aroused, Sadness
unpleasant and calm, ...) plus a slow per-video drift and noise; and the 12 action units, each class's FACS units
(Happiness AU6 + AU12 + AU25, Surprise AU1 + AU2 + AU25 + AU26, ...) with units dropped in some segments and
frame noise. Some segments are unannotated (VA NaN, AU -1), every seventh video has no VA annotation and every
ninth no AU annotation. As in Aff-Wild2, the tasks split a few videos differently: every fifth training video
is a VA validation video. These draws come from their own random stream, so the expression data is the same as
without them.

Like s-Aff-Wild2, the demo also carries the multi-task challenge's annotation: every video but each eighth is in
it, with one split for the three tasks (the video's expression split), and its labels (the same expression,
valence-arousal and units) sit on a selection of frames only: segments of 40-200 frames, each listed with
probability 0.6 (``--data.split_source mtl`` trains on it).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from expr.config import ABAW_CLASSES
from expr.data.store import VideoRecord, write_store

DEMO_VERSION = 5  # 2: store format 2 (named feature sets); 3: VA and AU; 4: per-task splits differ; 5: MTL split
CLASS_FREQ = np.array([0.26, 0.08, 0.06, 0.06, 0.20, 0.10, 0.09, 0.15])  # ABAW order; Neutral, Happiness frequent
GROUP = np.array([0, 1, 1, 3, 2, 0, 2, 3])  # visual group of each class
PERIOD = np.array([0, 0, 0, 20.0, 20.0, 0, 2.5, 2.5])  # oscillation period in frames (0: static)
AUDIO_PAIRS = {0, 1, 2, 5}  # classes whose audio prototype is their own; others share one per visual group
VALENCE = np.array([0.0, -0.6, -0.5, -0.55, 0.7, -0.5, 0.3, 0.05])  # per class, ABAW order
AROUSAL = np.array([0.0, 0.6, 0.3, 0.6, 0.4, -0.3, 0.7, 0.1])
# Units of each class, in the order AU1 AU2 AU4 AU6 AU7 AU10 AU12 AU15 AU23 AU24 AU25 AU26 (after FACS / EMFACS)
AU_OF_CLASS = np.array([
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # Neutral
    [0, 0, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0],  # Anger
    [0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0],  # Disgust
    [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0],  # Fear
    [0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0],  # Happiness
    [1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0],  # Sadness
    [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1],  # Surprise
    [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0],  # Other
], np.int8)  # fmt: skip


def default_demo_dir(num_videos: int, seed: int) -> Path:
    """Where the demo store is cached: ``$EXPR_CACHE_DIR`` or ``~/.cache/expr``."""
    root = Path(os.environ.get("EXPR_CACHE_DIR", Path.home() / ".cache" / "expr"))
    return root / f"demo-v{DEMO_VERSION}-n{num_videos}-s{seed}"


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _runs(rng: np.random.Generator, n: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """Consecutive (start, end) segments covering [0, n) with lengths in [lo, hi]."""
    out, t = [], 0
    while t < n:
        length = int(rng.integers(lo, hi + 1))
        out.append((t, min(n, t + length)))
        t += length
    return out


def generate_videos(
    num_videos: int = 40,
    seed: int = 0,
    visual_dim: int = 512,
    audio_dim: int = 768,
    validation_fraction: float = 0.25,
    no_audio_every: int = 15,
) -> list[VideoRecord]:
    """The demo videos, deterministic in (num_videos, seed). Every ``no_audio_every``-th video (starting with
    the sixth) has no audio track: 3 of the default 40, two for training and one for validation."""
    proto_rng = np.random.default_rng(1234)  # prototypes do not depend on the video count or seed
    static = 1.0 * _unit(proto_rng, 4, visual_dim)
    dynamic = 2.0 * _unit(proto_rng, 4, visual_dim)
    audio_proto = 1.0 * _unit(proto_rng, 8, audio_dim)
    for c in range(8):
        if c not in AUDIO_PAIRS:  # one shared audio prototype per dynamics pair
            audio_proto[c] = audio_proto[min(k for k in range(8) if GROUP[k] == GROUP[c] and k not in AUDIO_PAIRS)]
    rng = np.random.default_rng(seed)
    num_val = max(1, round(num_videos * validation_fraction))
    videos = []
    for i in range(num_videos):
        split = "validation" if i >= num_videos - num_val else "train"
        fps = float(rng.choice([25.0, 30.0]))
        n = int(rng.integers(500, 1100))
        labels = np.empty(n, np.int64)
        truth = np.empty(n, np.int64)
        for a, b in _runs(rng, n, 40, 200):
            c = int(rng.choice(8, p=CLASS_FREQ))
            truth[a:b] = c
            labels[a:b] = -1 if rng.random() < 0.05 else c
        face = np.ones(n, bool)
        for a, b in _runs(rng, n, 5, 30):
            if rng.random() < 0.08:
                face[a:b] = False
        gain = rng.uniform(0.7, 1.3)
        identity = 0.5 * _unit(rng, 1, visual_dim)[0]
        phase = rng.uniform(0, 2 * np.pi)
        t = np.arange(n)
        period = PERIOD[truth]
        wave = np.where(period > 0, np.sin(2 * np.pi * t / np.where(period > 0, period, 1.0) + phase), 0.0)
        visual = (
            identity
            + gain * static[GROUP[truth]]
            + wave[:, None] * dynamic[GROUP[truth]]
            + 0.05 * rng.standard_normal((n, visual_dim))
        )
        visual[~face] = 0.0
        audio = None
        if i % no_audio_every != 5:
            na = int(np.floor(n / fps * 50.0))
            frame_of_audio = np.minimum((np.arange(na) / 50.0 * fps).astype(np.int64), n - 1)
            voiced = np.zeros(na, bool)
            for a, b in _runs(rng, na, 10, 60):
                voiced[a:b] = rng.random() < 0.75
            audio = 0.05 * rng.standard_normal((na, audio_dim))
            audio[voiced] += audio_proto[truth[frame_of_audio[voiced]]]
        va, au = other_tasks(np.random.default_rng([seed, i, 17]), truth)
        tasks = task_splits(i, split)
        mtl = mtl_labels(np.random.default_rng([seed, i, 29]), labels, va, au) if "mtl" in tasks else None
        videos.append(
            VideoRecord(
                name=f"demo_{i:03d}",
                split=split,
                fps=fps,
                visual=visual,
                face=face,
                labels=labels,
                audio=audio,
                va=va if "va" in tasks else None,
                au=au if "au" in tasks else None,
                task_splits=tasks,
                mtl=mtl,
            )  # fmt: skip
        )
    return videos


def task_splits(i: int, split: str) -> dict[str, str]:
    """Video ``i``'s split for each other annotation it has. Like Aff-Wild2, the tasks split some videos differently:
    every fifth training video validates VA (train.task_overlap decides whether such videos train the other tasks);
    every video but each eighth is in the multi-task selection, with its own split for the three tasks."""
    tasks = {"va": "validation" if split == "train" and i % 5 == 1 else split} if i % 7 != 3 else {}
    tasks |= {"au": split} if i % 9 != 4 else {}
    return tasks | ({"mtl": split} if i % 8 != 6 else {})


def other_tasks(rng: np.random.Generator, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(valence-arousal [T, 2] float32 with NaN segments, action units [T, 12] int8 with -1 segments) of a video
    whose hidden expression per frame is ``truth``."""
    n = len(truth)
    t = np.arange(n)
    drift = np.stack([0.15 * np.sin(2 * np.pi * t / rng.uniform(150, 400) + rng.uniform(0, 2 * np.pi))
                      for _ in range(2)], 1)  # fmt: skip
    va = np.stack([VALENCE[truth], AROUSAL[truth]], 1) + drift + 0.05 * rng.standard_normal((n, 2))
    va = np.clip(va, -1, 1).astype(np.float32)
    au = AU_OF_CLASS[truth].copy()
    for a, b in _runs(rng, n, 40, 200):
        au[a:b] &= (rng.random(12) >= 0.15).astype(np.int8)  # a unit missing from a segment
        if rng.random() < 0.05:
            va[a:b] = np.nan
        if rng.random() < 0.05:
            au[a:b] = -1
    flip = (rng.random((n, 12)) < 0.02) & (au >= 0)
    au[flip] = 1 - au[flip]
    return va, au


def mtl_labels(rng: np.random.Generator, labels: np.ndarray, va: np.ndarray, au: np.ndarray) -> dict[str, np.ndarray]:
    """A video's multi-task labels: its expression, valence-arousal and units on the frames of the segments listed
    (each with probability 0.6), every other frame unannotated."""
    listed = np.zeros(len(labels), bool)
    for a, b in _runs(rng, len(labels), 40, 200):
        listed[a:b] = rng.random() < 0.6
    return {
        "expr": np.where(listed, labels, -1),
        "va": np.where(listed[:, None], va, np.nan).astype(np.float32),
        "au": np.where(listed[:, None], au, -1).astype(np.int8),
    }


def ensure_demo_store(num_videos: int = 40, seed: int = 0, path: str | Path | None = None) -> Path:
    """Generate the demo store once (cached on disk) and return its path."""
    path = Path(path) if path else default_demo_dir(num_videos, seed)
    if (path / "store.json").is_file():
        return path
    videos = generate_videos(num_videos, seed)
    digest = hashlib.sha1(f"{DEMO_VERSION}-{num_videos}-{seed}".encode()).hexdigest()[:12]
    meta = {
        "source": "demo",
        "classes": list(ABAW_CLASSES),
        "backbones": {"clip": "none (synthetic features)", "wav2vec2": "none (synthetic features)"},
        "sets": {"clip": {"family": "synthetic"}, "wav2vec2": {"family": "synthetic"}},
        "note": "synthetic demo data; not a benchmark of emotion recognition",
        "demo": {"version": DEMO_VERSION, "num_videos": num_videos, "seed": seed, "id": digest},
    }
    return write_store(path, videos, meta)
