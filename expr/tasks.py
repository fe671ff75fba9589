"""One definition of each task expr trains: its name, outputs, labels, missing-value sentinels, metric and
submission columns. Everything else (config checks, the store, the head, validation, evaluate, submit, predict)
reads it here; adding a task means adding one :class:`Task` below and the code specific to that task only.

No torch here (the config imports it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

ABAW_CLASSES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
"""The 8 expressions of ABAW's EXPR challenge, in the order of its annotation files' label indices."""
AU_NAMES = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")
"""The 12 action units of ABAW's AU challenge, in the order of its annotation files' columns."""


@dataclass(frozen=True)
class Task:
    name: str
    """The name in ``--train.tasks``, in a store's labels and in a head's outputs."""
    title: str
    """What the task predicts, for people."""
    kind: Literal["classes", "values", "units"]
    """``classes``: one of several (softmax); ``values``: numbers in [-1, 1] (tanh); ``units``: several yes/no
    (sigmoid per unit)."""
    names: tuple[str, ...]
    """A label name per output (the expression task's classes may be replaced by ``data.classes``)."""
    dtype: type
    """How a store holds the task's frame labels."""
    missing: float
    """A store's value for an unannotated frame (NaN or -1)."""
    file_missing: float
    """The challenge annotation files' value for an unannotated frame."""
    metric: str
    """The challenge's metric, as reports name it."""
    score_key: str
    """The metric's key in validation metrics (``metrics.jsonl``) and ``train.select``."""
    annotation_dirs: tuple[str, ...]
    """The task's annotation folders in an Aff-Wild2 tree (the first found is read)."""

    @property
    def width(self) -> int:
        return len(self.names)

    def annotated(self, labels: np.ndarray) -> np.ndarray:
        """Which frames of ``labels`` ([N] or [N, width], as a store holds them) carry a target: a class, or every
        value / unit annotated."""
        labels = np.asarray(labels)
        if self.kind == "values":
            known = ~np.isnan(labels)
        else:
            known = labels >= 0
        return known if known.ndim == 1 else known.all(1)


EXPR = Task(
    "expr", "expressions", "classes", ABAW_CLASSES, np.int64, -1, -1, "macro-F1", "val/macro_f1",
    ("EXPR_Classification_Challenge", "EXPR_Recognition_Challenge"),
)  # fmt: skip
VA = Task(
    "va", "valence and arousal", "values", ("valence", "arousal"), np.float32, np.nan, -5.0, "CCC", "val/ccc",
    ("VA_Estimation_Challenge", "VA_Set"),
)  # fmt: skip
AU = Task(
    "au", "action units", "units", AU_NAMES, np.int8, -1, -1, "AU F1", "val/au_f1",
    ("AU_Detection_Challenge", "AU_Set"),
)  # fmt: skip

TASKS: dict[str, Task] = {t.name: t for t in (EXPR, VA, AU)}
"""Every task, by name, in the order reports list them."""
OTHER_TASKS: dict[str, Task] = {n: t for n, t in TASKS.items() if n != "expr"}
"""The tasks whose frame labels a store holds beside the expression label, and whose heads sit beside the
expression classifier."""
TASK_SCORES = {n: t.score_key for n, t in TASKS.items()}
"""Each task's challenge score, as validation reports it."""


MTL_DIRS = ("MTL_Challenge", "MTL_Set")
"""The folders of ABAW's multi-task challenge (s-Aff-Wild2) in an Aff-Wild2 tree: one split for the three tasks."""
MTL_TASKS = ("va", "expr", "au")
"""The tasks the multi-task challenge scores together, in its files' column order."""
P_MTL = "val/p_mtl"
"""The multi-task challenge's score: CCC + macro-F1 + AU F1 on its validation frames (at most 3)."""


def task(name: str) -> Task:
    """The task called ``name``; an unknown name is a ValueError listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}': choose from {', '.join(TASKS)}")
    return TASKS[name]
