"""What a window is trained and scored on: its label frame (:func:`label_position`), its EXPR label by rule
(:class:`WindowLabeler`: ``center``, ``last`` or ``majority``) and, per task, the targets of a split
(:class:`TaskTargets`). Read from a store's small per-frame arrays only; the windows themselves are
:mod:`expr.data.windows`."""

from __future__ import annotations

import numpy as np

from expr.data.store import TASK_LABELS, FrameStore
from expr.tasks import TASKS


def label_offset(window: int, rule: str) -> int:
    """How far a window's label frame lies from its start: ``window // 2`` for ``center``, ``window - 1`` for
    ``last``."""
    if rule not in ("center", "last"):
        raise ValueError(f"window label rule '{rule}' has no single label frame (center, last)")
    return window // 2 if rule == "center" else window - 1


def label_position(start: np.ndarray, window: int, num_frames: np.ndarray, rule: str) -> np.ndarray:
    """The frame (within its video) whose label a window is trained on: ``start + window // 2`` for ``center``,
    ``start + window - 1`` for ``last`` (kept inside the video). The one definition of the target frame, used for
    training labels and for placing predictions back on frames."""
    position = np.asarray(start) + label_offset(window, rule)
    return np.clip(position, 0, np.asarray(num_frames) - 1)


class WindowLabeler:
    """The label of windows by ``rule`` (``center``, ``last`` or ``majority`` of labelled frames) over a store's
    frame ``labels``: -1 when the chosen frame is unlabelled or, for ``majority``, no frame of the window is labelled.
    Takes only the small per-frame arrays, so DataLoader workers can label windows they draw."""

    def __init__(self, labels, num_frames, frame_offset, num_classes: int, window: int, rule: str):
        if rule not in ("center", "last", "majority"):
            raise ValueError(f"unknown window label rule '{rule}'")
        self.labels, self.num_frames, self.frame_offset = labels, num_frames, frame_offset
        self.num_classes, self.window, self.rule = num_classes, window, rule
        self._cumulative = None  # majority only: per-class counts over frames [0, r), built on first use

    def __getstate__(self):
        return {**self.__dict__, "_cumulative": None}

    def __call__(self, video: np.ndarray, start: np.ndarray) -> np.ndarray:
        n = self.num_frames[video]
        if self.rule != "majority":
            return self.labels[self.frame_offset[video] + label_position(start, self.window, n, self.rule)]
        if self._cumulative is None:
            onehot = np.zeros((len(self.labels) + 1, self.num_classes), np.int32)
            labelled = self.labels >= 0
            onehot[1:][labelled, self.labels[labelled]] = 1
            self._cumulative = np.cumsum(onehot, axis=0)  # row r: counts over frames [0, r)
        first = self.frame_offset[video] + start
        last = self.frame_offset[video] + np.minimum(start + self.window, n)
        counts = self._cumulative[last] - self._cumulative[first]  # [W, C]
        return np.where(counts.sum(1) > 0, counts.argmax(1), -1)


def window_labels(store: FrameStore, video: np.ndarray, start: np.ndarray, window: int, rule: str) -> np.ndarray:
    """:class:`WindowLabeler` of a store, applied once."""
    labeler = WindowLabeler(store.labels, store.num_frames, store.frame_offset, len(store.classes), window, rule)
    return labeler(video, start)


class TaskTargets:
    """What a split's windows are trained and scored on, per task of ``tasks`` (``expr``, ``va``, ``au``): the
    store's frame labels of that task, kept only for the videos in ``split`` *of that task* (Aff-Wild2's tasks split
    the same videos differently) and unannotated elsewhere: EXPR labels -1, VA NaN, AU -1. ``videos``: those in the
    split of any task. Read at a window's label frame (the centre for ``majority``, whose EXPR label counts the
    window's frames)."""

    def __init__(self, store: FrameStore, split: str, tasks=("expr",), window: int = 1, rule: str = "center",
                 overlap: str = "exclude"):  # fmt: skip
        """``overlap``: for the ``train`` split, :meth:`FrameStore.training_videos` (``exclude`` drops every video
        that another trained task validates or tests on)."""
        self.tasks, self.window, self.rule = tuple(tasks), window, rule
        self.num_frames, self.frame_offset = store.num_frames, store.frame_offset
        if split == "train":
            member = {task: store.training_videos(task, self.tasks, overlap) for task in {"expr", *tasks}}
        else:
            member = {task: store.videos_in(split, task) for task in {"expr", *tasks}}
        self.videos = np.unique(np.concatenate([member[t] for t in self.tasks]))

        def per_frame(videos):  # a mask of the frames of ``videos``
            out = np.zeros(len(store.labels), bool)
            out[store.frame_rows(videos)] = True
            return out

        self.labels = store.labels
        if "expr" not in tasks:
            self.labels = np.full(len(store.labels), -1, np.int64)
        elif not np.isin(self.videos, member["expr"]).all():
            self.labels = np.where(per_frame(member["expr"]), store.labels, -1)
        self.values = {}  # "va": [N, 2] float32 (NaN), "au": [N, 12] int8 (-1)
        for task in tasks:
            if task != "expr":
                labels, missing = store.task_labels[task], TASK_LABELS[task][2]
                self.values[task] = np.where(per_frame(member[task])[:, None], labels, missing).astype(labels.dtype)
        self.members = {task: member[task] for task in self.tasks}  # the videos of the split, per task
        # a VA target needs both values, an AU target all 12 units annotated
        self.has_target = {task: TASKS[task].annotated(values) for task, values in self.values.items()}
        self.labeler = WindowLabeler(self.labels, self.num_frames, self.frame_offset, len(store.classes), window, rule)

    def __getstate__(self):
        return self.__dict__

    def rows(self, video: np.ndarray, start: np.ndarray) -> np.ndarray:
        """The frame row each window is read at."""
        rule = "center" if self.rule == "majority" else self.rule
        return self.frame_offset[video] + label_position(start, self.window, self.num_frames[video], rule)

    def __call__(self, video: np.ndarray, start: np.ndarray) -> dict[str, np.ndarray]:
        """The windows' targets: ``label`` [W] (EXPR, -1 none), ``va`` [W, 2] (NaN none), ``au`` [W, 12] (-1 none)."""
        out = {"label": self.labeler(video, start)}
        if self.values:
            rows = self.rows(video, start)
            out.update({task: values[rows] for task, values in self.values.items()})
        return out

    def labelled(self, video: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Windows with a target for at least one task."""
        keep = self.labeler(video, start) >= 0
        if self.has_target:
            rows = self.rows(video, start)
            for has in self.has_target.values():
                keep |= has[rows]
        return keep

    def frames_with_target(self, task: str) -> np.ndarray:
        """The frame rows of the split's videos of ``task`` that hold a target of ``task``."""
        rows = np.concatenate(
            [np.arange(self.frame_offset[v], self.frame_offset[v] + self.num_frames[v]) for v in self.members[task]]
            or [np.zeros(0, np.int64)]
        )
        has = self.labels[rows] >= 0 if task == "expr" else self.has_target[task][rows]
        return rows[has]
