"""Choosing a post-processing setting on validation data: the in-sample pick and the cross-fitted estimate."""

import numpy as np

from expr.scoring.selection import cross_fitted_choice


def test_each_half_is_scored_with_the_setting_chosen_on_the_other():
    # Four raw videos of 10 frames (subjects 0-3, dealt into halves {0, 2} and {1, 3}); truth 1 everywhere.
    # Setting 0 is right on videos 0 and 2 only, setting 1 on video 1 only, setting 2 on all but video 3's frames 5+.
    subject = np.repeat([0, 1, 2, 3], 10)
    truth = np.ones(40)
    outputs = [np.where(np.isin(subject, [0, 2]), 1.0, 0.0), np.where(subject == 1, 1.0, 0.0),
               np.where((subject == 3) & (np.arange(40) % 10 >= 5), 0.0, 1.0)]  # fmt: skip

    def accuracy(out, rows):
        return float((out[rows] == truth[rows]).mean())

    choice = cross_fitted_choice(outputs, accuracy, subject)
    assert choice["in_sample"] == {"setting": 2, "score": 35 / 40}
    # Half {0, 2} is scored with the choice on {1, 3} (setting 2: 15/20 there, setting 1: 10/20) -> 20/20 right;
    # half {1, 3} with the choice on {0, 2} (settings 0 and 2 tie at 20/20: the earlier, 0) -> 0/20 right.
    assert choice["cross_fitted"] == {"score": 20 / 40, "settings": [2, 0]}


def test_one_raw_video_has_no_cross_fitted_estimate():
    choice = cross_fitted_choice([np.zeros(5), np.ones(5)], lambda o, r: float(o[r].mean()), np.zeros(5, int))
    assert choice == {"in_sample": {"setting": 1, "score": 1.0}, "cross_fitted": None}
