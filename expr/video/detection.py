"""Faces of a stream of frames, as ``expr predict`` detects them: in batches of frames through the detector, on every
``every``-th frame (``predict.detect_every``) of a copy downscaled by ``scale`` (``predict.detect_scale``), the faces
of the frames between interpolated along the faces that two detections share; each face with its aligned crop cut
from the full frame.

With ``every`` 1 and ``scale`` 1 (the defaults) every frame is detected as it is, in batches of ``batch`` frames of
one size. With ``every`` n, frame 0, every n-th frame and the last frame are detected; a face of one detection that
overlaps a face of the next (IoU at least 0.3, greedily by overlap) is interpolated linearly (box, landmarks, tilt)
on the frames between, and a face without such a partner appears on its own frame only.
"""

from __future__ import annotations

import numpy as np

from expr.features.faces import Face
from expr.video.tracks import greedy_pairs

MIN_IOU = 0.3


def downscaled(frame: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    h, w = frame.shape[:2]
    return cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def scaled_back(face: Face, scale: float) -> Face:
    if scale == 1.0:
        return face
    marks = None if face.landmarks is None else face.landmarks / scale
    return Face(face.box / scale, face.angle, marks, face.score)


def between(a: list[Face], b: list[Face], w: float) -> list[Face]:
    """The faces at fraction ``w`` of the way from detection ``a`` to detection ``b``: each face of ``a`` with its
    partner in ``b`` (the best overlap of at least :data:`MIN_IOU`, greedily), interpolated; largest first."""
    out = []
    for i, j in greedy_pairs([(i, f.box) for i, f in enumerate(a)], [f.box for f in b], MIN_IOU):
        fa, fb = a[i], b[j]
        marks = None
        if fa.landmarks is not None and fb.landmarks is not None:
            marks = (1 - w) * fa.landmarks + w * fb.landmarks
        out.append(Face((1 - w) * fa.box + w * fb.box, (1 - w) * fa.angle + w * fb.angle, marks,
                        min(fa.score, fb.score)))  # fmt: skip
    return sorted(out, key=lambda f: -f.area)


class FrameFaces:
    """Feed frames in order (:meth:`push`, then :meth:`close`); each returns the frames whose faces are now known, as
    (frame index, faces with their crops), in order. ``faces``: ``largest`` keeps each detection's largest face,
    ``all`` every face."""

    def __init__(self, detector, faces: str = "largest", batch: int = 16, every: int = 1, scale: float = 1.0):
        self.detector, self.faces, self.batch, self.every, self.scale = detector, faces, batch, every, scale
        self.count = 0
        self.keys: list[tuple[int, np.ndarray]] = []  # frames to detect, not yet detected
        self.waiting: list[tuple[int, np.ndarray]] = []  # frames between detections, awaiting the next one
        self.last: tuple[int, list[Face]] | None = None  # the latest detected frame and its faces

    def push(self, frame: np.ndarray) -> list[tuple[int, list[Face]]]:
        i, self.count = self.count, self.count + 1
        out = []
        if self.keys and (len(self.keys) == self.batch or self.keys[0][1].shape != frame.shape):
            out = self._detect()
        if i % self.every == 0:
            self.keys.append((i, frame))
            if len(self.keys) == self.batch:  # a full batch: now, not at the next frame
                out += self._detect()
        else:
            self.waiting.append((i, frame))
        return out

    def close(self) -> list[tuple[int, list[Face]]]:
        """The faces of the frames still held; the last frame is detected when it was not a detection frame."""
        out = []
        if self.waiting and (not self.keys or self.waiting[-1][0] > self.keys[-1][0]):
            last = self.waiting.pop()
            if self.keys and self.keys[0][1].shape != last[1].shape:
                out = self._detect()
            self.keys.append(last)
        out += self._detect() if self.keys else []
        return out + self._fill(None)

    def _detect(self) -> list[tuple[int, list[Face]]]:
        frames = np.stack([f if self.scale == 1.0 else downscaled(f, self.scale) for _, f in self.keys])
        out = []
        for (i, frame), found in zip(self.keys, self.detector.detect_batch(frames), strict=True):
            found = [scaled_back(f, self.scale) for f in (found if self.faces == "all" else found[:1])]
            for face in found:
                face.image = face.crop(frame)
            out += self._fill((i, found))
            out.append((i, found))
            self.last = (i, found)
        self.keys = []
        return out

    def _fill(self, nxt: tuple[int, list[Face]] | None) -> list[tuple[int, list[Face]]]:
        """The waiting frames before ``nxt`` (a newly detected frame; None: the end), interpolated from the last
        detected frame to it."""
        out, keep = [], []
        for i, frame in self.waiting:
            if nxt is not None and i > nxt[0]:
                keep.append((i, frame))
                continue
            found = []
            if self.last is not None and nxt is not None:
                w = (i - self.last[0]) / (nxt[0] - self.last[0])
                found = between(self.last[1], nxt[1], w)
                for face in found:
                    face.image = face.crop(frame)
            out.append((i, found))
        self.waiting = keep
        return out
