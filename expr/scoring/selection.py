"""Choosing a post-processing setting on validation data, with the optimism said: the setting that scores best on
all the validation videos (in-sample: its score was chosen on the data it is reported on, so it is optimistic), and
a cross-fitted estimate of what choosing does on unseen videos: the videos dealt into two halves (whole raw videos,
``_left`` / ``_right`` tracks together), the setting chosen on one half applied to the other, both ways, and the
frames of both halves scored together. Pure numpy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from expr.scoring.calibration import video_groups


def cross_fitted_choice(
    outputs: Sequence[np.ndarray], score: Callable[[np.ndarray, np.ndarray], float], subject: np.ndarray
) -> dict[str, Any]:
    """``outputs[s]``: the frame outputs of setting ``s`` (rows in one order); ``score(outputs, row_mask)``: the
    score of those rows; ``subject``: each row's raw-video id. Returns ``in_sample`` (index of the best setting on all
    rows, its score) and ``cross_fitted`` (the pooled score of each half under the setting chosen on the other, and
    the two choices); ties: the earlier setting."""
    everything = np.ones(len(subject), bool)
    scores = [score(o, everything) for o in outputs]
    best = int(np.argmax(scores))
    half = video_groups(subject, 2)
    if len(np.unique(half)) < 2:  # one raw video: nothing to hold out
        return {"in_sample": {"setting": best, "score": scores[best]}, "cross_fitted": None}
    picks = []
    combined = np.array(outputs[0], copy=True)
    for h in (0, 1):
        fit = half != h
        pick = int(np.argmax([score(o, fit) for o in outputs]))
        picks.append(pick)
        combined[half == h] = outputs[pick][half == h]
    return {
        "in_sample": {"setting": best, "score": scores[best]},
        "cross_fitted": {"score": score(combined, everything), "settings": picks},
    }


__all__ = ["cross_fitted_choice"]
