"""One video to extract, as a corpus reader (:mod:`expr.data.affwild2`, :mod:`expr.data.folder`) describes it for
``expr prepare``: where its frames, audio and labels come from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Item:
    """One video (or person track) to extract: where its frames, audio and labels come from."""

    name: str
    split: str
    labels: np.ndarray | None = None  # per-frame labels (frame i = labels[i]; -1 = ignore); None for test videos
    crops: dict[int, Path] | None = None  # frame index -> face crop image; None: take the frames of ``video``
    video: Path | None = None  # raw video: frame rate, frame count and audio (and frames when there are no crops)
    fps: float | None = None  # frame rate to use when there is no readable video
    source: str = ""  # the annotation file or CSV the labels came from, for messages
    va: np.ndarray | None = None  # [frames, 2] valence, arousal (NaN = unannotated); None: no VA annotation
    au: np.ndarray | None = None  # [frames, 12] action units (-1 = unannotated); None: no AU annotation
    task_splits: dict[str, str] | None = None  # the split of each other task annotating it ("va": "train", "mtl")
    mtl: dict[str, np.ndarray] | None = None  # the multi-task challenge's labels by frame ("expr", "va", "au")
