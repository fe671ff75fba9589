"""Encoding a subset of a video's frames (``predict.fps``): which frames the image encoder sees, and the features of
the frames between, filled in from the encoded ones on either side.

``expr predict`` encodes only these frames (its cost on a CPU is the image encoder's); ``expr evaluate`` and every
other command that reads a store apply the same rule to stored features (:meth:`FrameStore.encode_at
<expr.data.store.FrameStore.encode_at>`), so the accuracy that the speed costs is measured on labelled data. The head
still sees every frame, in the windows it was trained on.

The rule, for a frame ``t`` between encoded frames ``a < t < b``:

- both have a face: the linear interpolation of their features (weight ``(t - a) / (b - a)`` on ``b``), a face;
- one of them has a face: its features when it is the nearer one (``a`` on a tie), otherwise no face;
- neither has one: no face.
"""

from __future__ import annotations

import numpy as np


def encoded_frames(num_frames: int, fps: float, rate: float) -> np.ndarray:
    """The frames encoded at ``rate`` encodings per second of a ``fps`` video: frame 0, then every ``fps / rate``
    frames (rounded to the nearest frame), and the last frame; every frame when ``rate`` is 0 or at least ``fps``."""
    if num_frames <= 0:
        return np.zeros(0, np.int64)
    if not rate or rate >= fps:
        return np.arange(num_frames, dtype=np.int64)
    idx = np.round(np.arange(0.0, num_frames, fps / rate)).astype(np.int64)
    idx = np.unique(np.append(idx[idx < num_frames], num_frames - 1))
    return idx


def fill_between(features: np.ndarray, face: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every frame's features and face flag from those of the encoded frames ``idx`` (sorted, the first and last frame
    among them) by the module's rule; ``features`` [T, D] and ``face`` [T] are read at ``idx`` only. Returns new
    arrays, ``features`` in its own dtype (interpolated in float32)."""
    T = len(face)
    if len(idx) == T:
        return features.copy(), face.copy()
    t = np.arange(T)
    j = np.clip(np.searchsorted(idx, t, side="right") - 1, 0, len(idx) - 2)  # a = idx[j] <= t <= b = idx[j + 1]
    a, b = idx[j], idx[j + 1]
    w = (t - a) / (b - a)
    fa, fb = face[a], face[b]
    nearer = np.where(w <= 0.5, a, b)
    both = fa & fb
    out_face = both | face[nearer]
    x = features[idx].astype(np.float32)
    xa, xb = x[j], x[j + 1]
    blend = (1 - w)[:, None] * xa + w[:, None] * xb
    single = np.where((w <= 0.5)[:, None], xa, xb)
    out = np.where(both[:, None], blend, np.where(out_face[:, None], single, 0.0))
    return out.astype(features.dtype), out_face
