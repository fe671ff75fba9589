import numpy as np
import pytest
from sklearn.metrics import f1_score

from expr.data.windows import label_position, window_starts
from expr.scoring.decision import (
    aggregate_frames,
    fill_missing_faces,
    frame_probabilities,
    frame_report,
    smooth,
    smooth_rows,
)

A, B = [1.0, 0.0], [0.0, 1.0]


def test_a_centre_window_speaks_for_its_label_frame_and_frames_between_are_interpolated():
    # One video of 10 frames; windows of 4 frames at starts 0, 3, 6: label frames 2, 5, 8 (start + 4 // 2).
    probs = np.array([A, B, A])
    frames, covered = aggregate_frames(
        np.array([10]), np.array([0]), 10, np.zeros(3, int), np.array([0, 3, 6]), 4, probs
    )
    expected = [A, A, A, [2 / 3, 1 / 3], [1 / 3, 2 / 3], B, [1 / 3, 2 / 3], [2 / 3, 1 / 3], A, A]
    np.testing.assert_allclose(frames, expected)  # before the first / after the last label frame: the nearest one
    assert covered.all()


def test_a_last_frame_window_speaks_for_the_frame_it_ends_on():
    probs = np.array([A, B])  # windows of 4 frames at starts 0 and 4: label frames 3 and 7
    frames, _ = aggregate_frames(np.array([9]), np.array([0]), 9, np.zeros(2, int), np.array([0, 4]), 4, probs, "last")
    np.testing.assert_allclose(frames[[0, 3, 5, 7, 8]], [A, A, [0.5, 0.5], B, B])


def test_a_majority_window_is_spread_over_its_frames():
    # Two videos: 5 frames (rows 0-4) and 3 frames (rows 5-7). Windows of 3 frames with stride 2 on video 0 (starts
    # 0, 2) and one window on video 1: a frame takes the mean over the windows covering it.
    num_frames, offset = np.array([5, 3]), np.array([0, 5])
    probs = np.array([A, B, [0.25, 0.75]])
    frames, covered = aggregate_frames(
        num_frames, offset, 8, np.array([0, 0, 1]), np.array([0, 2, 0]), 3, probs, "majority"
    )
    np.testing.assert_allclose(frames[:5], [A, A, [0.5, 0.5], B, B])
    np.testing.assert_allclose(frames[5:], [[0.25, 0.75]] * 3)
    assert covered.all()


@pytest.mark.parametrize("rule", ["center", "last", "majority"])
def test_a_window_padded_past_a_short_videos_end_touches_only_its_frames(rule):
    frames, covered = aggregate_frames(
        np.array([2, 4]), np.array([0, 2]), 6, np.array([0]), np.array([0]), 5, np.array([[0.3, 0.7]]), rule
    )
    assert covered.tolist() == [True, True, False, False, False, False]  # nothing spills into video 1
    np.testing.assert_allclose(frames[:2], [[0.3, 0.7]] * 2)


def _perfect_classifier_accuracy(window: int, stride: int, rule: str, seed: int = 0):
    """Videos whose true expression changes every 120 frames but for a first and a last run shorter than a window,
    a few frames unannotated, two videos shorter than a window; every window predicts exactly the true class of its
    label frame. Returns (frame accuracy, frames in error that no window could know: a change of the true class
    between the frame and a label frame it is interpolated from, whether the first and last frame of every video
    are right)."""
    rng = np.random.default_rng(seed)
    truth, lengths = [], []
    for n in (1800, 1234, 617, 95, max(3, window // 2), window):
        short = rng.integers(1, max(2, min(window, n // 3)), 2)  # the first and last runs, shorter than a window
        runs = [int(short[0])] + [120] * max(0, (n - int(short.sum())) // 120) + [int(short[1])]
        runs[-2] += n - sum(runs)  # the rest into the run before the last
        classes = rng.integers(0, 8, len(runs))
        classes[1:][classes[1:] == classes[:-1]] += 1  # a new class at every run
        truth.append(np.repeat(classes % 8, runs))
        lengths.append(n)
    truth, lengths = np.concatenate(truth), np.array(lengths)
    offset = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    run = np.concatenate([[0], np.cumsum(np.diff(truth) != 0)]) + np.repeat(np.arange(len(lengths)) * 10**6, lengths)
    labels = truth.copy()
    labels[rng.choice(len(labels), size=len(labels) // 100, replace=False)] = -1
    starts = [window_starts(int(n), window, stride, rule) for n in lengths]
    video = np.repeat(np.arange(len(lengths)), [len(s) for s in starts])
    start = np.concatenate(starts)
    target = offset[video] + label_position(start, window, lengths[video], rule)
    rows, probs = frame_probabilities(
        lengths,
        offset,
        np.ones(len(truth), bool),
        range(len(lengths)),
        video,
        start,
        window,
        np.eye(8)[truth[target]],
        rule,
    )
    wrong = rows[(probs.argmax(1) != truth[rows]) & (labels[rows] >= 0)]
    unknowable = np.zeros(len(truth), bool)
    for v, n in enumerate(lengths):  # the label frames around each frame, as the interpolation takes them
        at = np.unique(target[video == v])
        frames = offset[v] + np.arange(n)
        j = np.clip(np.searchsorted(at, frames, side="right") - 1, 0, len(at) - 1)
        k = np.minimum(j + 1, len(at) - 1)
        unknowable[frames] = (run[frames] != run[at[j]]) | (run[frames] != run[at[k]])
    ends = np.concatenate([offset, offset + lengths - 1])
    ends_right = bool((probs.argmax(1)[ends] == truth[rows][ends]).all())  # rows are in frame order here
    return (labels[rows] == probs.argmax(1))[labels[rows] >= 0].mean(), unknowable[wrong].all(), ends_right


@pytest.mark.parametrize("rule", ["center", "last"])
@pytest.mark.parametrize("window", [10, 30, 60])
def test_a_perfect_window_classifier_labels_frames_correctly(rule, window):
    from expr.config import DataConfig

    stride = DataConfig(window=window).resolved_eval_stride()  # the default evaluation stride
    accuracy, explained, ends = _perfect_classifier_accuracy(window, stride, rule)
    assert accuracy >= 0.99 and explained and ends
    # Any stride up to a third of the window: every error is a frame whose class changes before the nearest
    # label frames are reached (S / 2 frames around a change at most), never one the windows did predict; the
    # first and last frame of every video, label frames of their own windows, are always right.
    for stride in range(1, window // 3 + 1):
        accuracy, explained, ends = _perfect_classifier_accuracy(window, stride, rule, seed=stride)
        assert explained and ends, stride
        assert accuracy >= 1 - (stride / 2 + 1) / 80, stride


def test_frames_without_a_face_take_the_nearest_face_frame():
    probs = np.arange(6, dtype=float)[:, None]
    face = np.array([False, True, False, False, True, False])
    # frame 0 -> 1; frame 2 -> 1 (|2-1| = 1 < |4-2| = 2); frame 3 -> 4; frame 5 -> 4
    assert fill_missing_faces(probs, face)[:, 0].tolist() == [1, 1, 1, 4, 4, 4]
    tie = np.array([True, False, True])
    assert fill_missing_faces(probs[:3], tie)[:, 0].tolist() == [0, 0, 2]  # the earlier on a tie
    none = np.zeros(3, bool)
    assert fill_missing_faces(probs[:3], none)[:, 0].tolist() == [0, 1, 2]  # no face at all: unchanged


def test_frame_probabilities_of_some_videos_fill_faceless_frames_within_each_video():
    # Video 0: 9 frames, windows of 4 at starts 0, 2, 4 (label frames 2, 4, 6) predicting A, B, A; frames 3 and 4
    # have no face and take the nearest frame with one (2 and 5). Video 1: 4 frames, one window (label frame 2)
    # predicting B, its first two frames without a face. Video 2's window is ignored; video 1 is asked for first.
    num_frames, offset = np.array([9, 4, 4]), np.array([0, 9, 13])
    face = np.ones(17, bool)
    face[[3, 4, 9, 10]] = False
    video, start = np.array([0, 0, 0, 1, 2]), np.array([0, 2, 4, 0, 0])
    probs = np.array([A, B, A, B, [0.5, 0.5]])
    rows, out = frame_probabilities(num_frames, offset, face, [1, 0], video, start, 4, probs)
    assert rows.tolist() == list(range(9, 13)) + list(range(9))
    half = [0.5, 0.5]
    np.testing.assert_allclose(out[:4], [B] * 4)
    # Interpolated: A A A (A|B) B (B|A) A A A; frame 3 <- frame 2, frame 4 <- frame 5.
    np.testing.assert_allclose(out[4:], [A, A, A, A, half, half, A, A, A])


def test_frame_report_scores_labelled_frames_like_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 8, 500)
    probs = rng.random((500, 8))
    report = frame_report(labels, probs, [str(i) for i in range(8)])
    keep = labels >= 0
    assert report["count"] == keep.sum()
    expected = f1_score(labels[keep], probs[keep].argmax(1), labels=range(8), average="macro", zero_division=0)
    assert report["macro_f1"] == pytest.approx(expected)


def test_mean_smoothing_is_a_centred_moving_average():
    p = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    out = smooth(p, "mean", 3)
    np.testing.assert_allclose(out[0], [0.5, 0.5])  # frames 0, 1 (edge)
    np.testing.assert_allclose(out[1], [2 / 3, 1 / 3])  # frames 0, 1, 2
    np.testing.assert_allclose(out[3], [1.0, 0.0])  # frames 2, 3
    assert smooth(p, "mean", 1) is p and smooth(p, "none", 9) is p


def test_mode_smoothing_removes_a_single_frame_flicker_but_keeps_runs():
    labels = np.array([0, 0, 0, 2, 0, 0, 1, 1, 1, 1])
    out = smooth(np.eye(3)[labels], "mode", 3).argmax(1)
    assert out.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_smoothing_stays_inside_each_video_whatever_the_row_order():
    probs = np.eye(2)[[0, 0, 0, 1, 1, 1]].astype(float)  # video 0 = rows 0-2 (class 0), video 1 = rows 3-5
    rows = np.array([3, 4, 5, 0, 1, 2])
    out = smooth_rows(rows, probs[rows], np.array([3, 3]), np.array([0, 3]), "mean", 5)
    np.testing.assert_allclose(out, probs[rows])  # no mixing across the boundary
    flicker = np.eye(2)[[0, 1, 0, 0]].astype(float)
    out = smooth_rows(np.array([2, 0, 3, 1]), flicker[[2, 0, 3, 1]], np.array([4]), np.array([0]), "mode", 3)
    assert out.argmax(1).tolist() == [0, 0, 0, 0]  # smoothed in time order, returned in the rows' order
    with pytest.raises(ValueError, match="unknown smoothing"):
        smooth(probs, "gaussian", 3)


def test_expr_evaluate_scores_frames_like_training_and_writes_a_report(small_run, capsys):
    import json
    from pathlib import Path

    from expr.cli.evaluate import main

    run_dir = Path(small_run["run_dir"])
    assert main([str(run_dir), "--smoothing", "mode", "--width", "9"]) == 0
    printed = capsys.readouterr().out
    out = run_dir / "eval" / "validation"
    report = json.loads((out / "report.json").read_text())
    # The same head, windows and stride as training's model selection: the same frame-level macro-F1.
    assert report["metrics"]["macro_f1"] == pytest.approx(small_run["best_macro_f1"], abs=1e-6)
    saved = np.load(out / "frame_probs.npz")
    keep = saved["labels"] >= 0
    assert report["labelled_frames"] == keep.sum()
    assert report["metrics"]["macro_f1"] == pytest.approx(
        f1_score(
            saved["labels"][keep],
            saved["probs"][keep].astype(np.float32).argmax(1),
            labels=range(8),
            average="macro",
            zero_division=0,
        ),
        abs=1e-3,
    )
    assert report["smoothed_metrics"] is not None and "mode smoothing, width 9" in printed
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    best = np.load(run_dir / "best" / "val_frame_probs.npz")  # kept by training for post-processing studies
    assert len(best["rows"]) == report["frames"]


def test_expr_evaluate_explains_a_missing_head(tmp_path, capsys):
    from expr.cli.evaluate import main

    (tmp_path / "config.yaml").write_text("{}\n")
    assert main([str(tmp_path)]) == 2
    assert "no trained head yet" in capsys.readouterr().err


def test_commands_reading_a_run_take_dotted_overrides_and_refuse_what_cannot_change(small_run, tmp_path, capsys):
    """`expr evaluate RUN --eval.smoothing mean --data.eval_stride 5` is the same as the short options; a key that
    shaped the trained head is refused by name, and a typo gets the config's suggestion."""
    import json

    from expr.cli.evaluate import main

    run = small_run["run_dir"]
    assert main([run, "--eval.smoothing", "mean", "--eval.smoothing_width=9", "--data.eval_stride", "5",
                 "--out", str(tmp_path / "dotted")]) == 0  # fmt: skip
    assert main([run, "--smoothing", "mean", "--width", "9", "--stride", "5", "--out", str(tmp_path / "short")]) == 0
    dotted, short = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("dotted", "short"))
    assert dotted["smoothing"] == {"method": "mean", "width": 9} and dotted["stride"] == 5
    assert dotted["metrics"] == short["metrics"] and dotted["smoothed_metrics"] == short["smoothed_metrics"]
    capsys.readouterr()
    assert main([run, "--model.dim", "64"]) == 2
    assert "'model.dim' cannot change after training" in capsys.readouterr().err
    assert main([run, "--eval.smothing", "mean"]) == 2
    assert "Did you mean eval.smoothing" in capsys.readouterr().err


def test_median_smoothing_is_a_centred_moving_median_of_each_column():
    values = np.array([[0.0, 1], [10, 1], [0, 1], [0, 9], [5, 1], [5, 1]])
    # width 3: each frame and its two neighbours (at the edges: those that exist; an even count takes the mean)
    expected = [[5, 1], [0, 1], [0, 1], [0, 1], [5, 1], [5, 1]]
    np.testing.assert_allclose(smooth(values, "median", 3), expected)
    np.testing.assert_allclose(smooth(values, "median", 1), values)
