import numpy as np
import pytest
from sklearn.metrics import f1_score

from expr.evaluation import aggregate_frames, frame_report, smooth, smooth_videos


def test_frame_probabilities_average_the_windows_that_cover_them():
    # Two videos: 5 frames (rows 0-4) and 3 frames (rows 5-7). Windows of 3 frames with stride 2 on video 0 (starts
    # 0, 2; the last one ends at the video's end) and one window on video 1.
    num_frames, offset = np.array([5, 3]), np.array([0, 5])
    video, start = np.array([0, 0, 1]), np.array([0, 2, 0])
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.25, 0.75]])
    frames, counts = aggregate_frames(num_frames, offset, 8, video, start, 3, probs)
    # By hand: frames 0, 1 only in window 0; frame 2 in both; frames 3, 4 only in window 1; video 1 all window 2.
    assert counts.tolist() == [1, 1, 2, 1, 1, 1, 1, 1]
    np.testing.assert_allclose(frames[:5], [[1, 0], [1, 0], [0.5, 0.5], [0, 1], [0, 1]])
    np.testing.assert_allclose(frames[5:], [[0.25, 0.75]] * 3)


def test_windows_padded_past_a_short_videos_end_touch_only_its_frames():
    frames, counts = aggregate_frames(
        np.array([2, 4]), np.array([0, 2]), 6, np.array([0]), np.array([0]), 5, np.array([[0.3, 0.7]])
    )
    assert counts.tolist() == [1, 1, 0, 0, 0, 0]  # the window of video 0 does not spill into video 1


def test_frame_report_scores_labelled_frames_like_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 8, 500)
    probs = rng.random((500, 8))
    rows = np.arange(100, 500)
    report = frame_report(labels, probs, rows, [str(i) for i in range(8)])
    keep = rows[labels[rows] >= 0]
    assert report["count"] == len(keep)
    assert report["macro_f1"] == pytest.approx(f1_score(labels[keep], probs[keep].argmax(1), average="macro"))


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


def test_smoothing_stays_inside_each_video():
    probs = np.eye(2)[[0, 0, 0, 1, 1, 1]].astype(float)  # video 0 = rows 0-2 (class 0), video 1 = rows 3-5
    out = smooth_videos(probs, np.array([3, 3]), np.array([0, 3]), [0, 1], "mean", 5)
    np.testing.assert_allclose(out, probs)  # no mixing across the boundary
    with pytest.raises(ValueError, match="unknown smoothing"):
        smooth(probs, "gaussian", 3)


def test_expr_evaluate_scores_frames_like_training_and_writes_a_report(small_run, capsys):
    import json
    from pathlib import Path

    from expr.report import main

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
        f1_score(saved["labels"][keep], saved["probs"][keep].astype(np.float32).argmax(1), average="macro"), abs=1e-3
    )
    assert report["smoothed_metrics"] is not None and "mode smoothing, width 9" in printed
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    best = np.load(run_dir / "best" / "val_frame_probs.npz")  # kept by training for post-processing studies
    assert len(best["rows"]) == report["frames"]


def test_expr_evaluate_explains_a_missing_head(tmp_path, capsys):
    from expr.report import main

    (tmp_path / "config.yaml").write_text("{}\n")
    assert main([str(tmp_path)]) == 2
    assert "no trained head yet" in capsys.readouterr().err
