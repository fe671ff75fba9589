"""Face tracks: the faces found in a video's frames linked into one track per person (``expr predict --faces all``),
or the largest face of each frame as the one track (``--faces largest``).

Linking is greedy by box overlap: in each frame, the pairs (track, face) are taken in order of their intersection
over union, best first, while it is at least ``min_iou``; a track takes one face per frame, continues across up to
``max_gap`` frames without one, and a face that continues no track starts a new one. No appearance cue: a person who
leaves the picture and comes back (or two people whose boxes cross) may get a new track.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from expr.features.faces import Face


@dataclass
class Track:
    """One person's faces: ``faces[k]`` found in frame ``frames[k]`` (increasing)."""

    frames: list[int] = field(default_factory=list)
    faces: list[Face] = field(default_factory=list)

    @property
    def first(self) -> int:
        return self.frames[0]

    @property
    def last(self) -> int:
        return self.frames[-1]

    @property
    def centre_x(self) -> float:
        """The median horizontal centre of its boxes (tracks are numbered left to right by it)."""
        return float(np.median([f.box[0] + f.box[2] / 2 for f in self.faces]))

    def add(self, frame: int, face: Face) -> None:
        self.frames.append(frame)
        self.faces.append(face)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (x, y, w, h)."""
    w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def greedy_pairs(a: list[tuple[int, np.ndarray]], b: list[np.ndarray], min_iou: float) -> list[tuple[int, int]]:
    """(key of ``a``, index of ``b``) pairs of boxes, greedily by overlap (best first, ties in the order given), each
    side at most once, overlapping by an IoU of at least ``min_iou``; ``a``: (key, box) pairs."""
    pairs = sorted(((iou(box, other), k, j) for k, box in a for j, other in enumerate(b)), key=lambda p: -p[0])
    out, taken_a, taken_b = [], set(), set()
    for overlap, k, j in pairs:
        if overlap < min_iou:
            break
        if k in taken_a or j in taken_b:
            continue
        out.append((k, j))
        taken_a.add(k)
        taken_b.add(j)
    return out


def link_faces(detections: list[list[Face]], min_iou: float = 0.3, max_gap: int = 15) -> list[Track]:
    """The tracks of ``detections`` (each frame's faces), in order of their first frame."""
    tracks: list[Track] = []
    live: list[int] = []  # the tracks that may still continue
    for t, faces in enumerate(detections):
        live = [k for k in live if t - tracks[k].last <= max_gap + 1]
        taken_faces = set()
        for k, j in greedy_pairs([(k, tracks[k].faces[-1].box) for k in live], [f.box for f in faces], min_iou):
            tracks[k].add(t, faces[j])
            taken_faces.add(j)
        for j, face in enumerate(faces):
            if j not in taken_faces:
                live.append(len(tracks))
                tracks.append(Track([t], [face]))
    return tracks


def largest_faces(detections: list[list[Face]]) -> Track:
    """The one track of each frame's largest face (frames without a face left out)."""
    track = Track()
    for t, faces in enumerate(detections):
        if faces:
            track.add(t, max(faces, key=lambda f: f.area))
    return track


def tracks_of(detections: list[list[Face]], mode: str = "largest", min_frames: int = 1, **link) -> list[Track]:
    """``mode`` ``largest``: one track, every frame's largest face; ``all``: the linked tracks of at least
    ``min_frames`` frames, left to right (by :attr:`Track.centre_x`)."""
    if mode == "largest":
        return [largest_faces(detections)]
    if mode != "all":
        raise ValueError(f"faces={mode!r}: choose largest or all")
    kept = [t for t in link_faces(detections, **link) if len(t.frames) >= min_frames]
    return sorted(kept, key=lambda t: t.centre_x)
