"""Decision calibration: per-class offsets fitted for macro-F1, applied by evaluate, submit and predict alike."""

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from expr.scoring.calibration import apply_offsets, cross_fit, fit_offsets, macro_f1, subject_ids, video_groups
from expr.scoring.decision import Decision


def biased_case(n=3000, classes=5, seed=0):
    """A perfect classifier's probabilities (the true class leads by 0.5 to 1.0 in log space) pushed off by a known
    per-class bias: the offsets that undo the bias score macro-F1 1.0, and only offsets near them do."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0, 0.05, (n, classes))
    logits[np.arange(n), labels] += rng.uniform(0.5, 1.0, n)
    bias = np.array([0.0, 1.5, -1.0, 0.75, -2.0])[:classes]
    z = logits + bias
    return np.exp(z) / np.exp(z).sum(1, keepdims=True), labels, bias


def test_calibration_recovers_a_known_optimum():
    probs, labels, bias = biased_case()
    assert macro_f1(labels, probs.argmax(1), 5) < 0.8  # the bias costs a lot
    offsets = fit_offsets(probs, labels)
    calibrated = apply_offsets(probs, offsets)
    assert macro_f1(labels, calibrated.argmax(1), 5) == 1.0
    np.testing.assert_allclose(offsets - offsets[0], -(bias - bias[0]), atol=0.26)  # within a grid step
    np.testing.assert_allclose(calibrated.sum(1), 1.0)


def test_macro_f1_is_scikit_learns_and_unlabelled_frames_are_ignored():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    assert macro_f1(y, p, 4) == pytest.approx(f1_score(y, p, labels=range(4), average="macro", zero_division=0))
    probs, labels, _ = biased_case(600)
    labels[:300] = -1  # the fit sees only labelled frames
    assert np.array_equal(fit_offsets(probs, labels), fit_offsets(probs[300:], labels[300:]))


def test_a_calibrated_classifier_keeps_zero_offsets_and_none_changes_nothing():
    probs, labels, _ = biased_case()
    unbiased = apply_offsets(probs, -np.array([0.0, 1.5, -1.0, 0.75, -2.0]))
    assert not fit_offsets(unbiased, labels).any()  # already optimal: nothing moves
    assert apply_offsets(probs, None) is probs


def test_cross_fitting_scores_each_group_with_offsets_fitted_on_the_others():
    rng = np.random.default_rng(2)  # noise: every subset fits other offsets
    probs, labels = rng.dirichlet(np.ones(5), 2000), rng.integers(0, 5, 2000)
    groups = np.arange(2000) % 4
    everything = fit_offsets(probs, labels)
    assert any(not np.array_equal(everything, fit_offsets(probs[groups != g], labels[groups != g])) for g in range(4))
    held, fitted = cross_fit(probs, labels, groups)
    assert len(fitted) == 4
    for g, offsets in enumerate(fitted):
        np.testing.assert_array_equal(offsets, fit_offsets(probs[groups != g], labels[groups != g]))
        np.testing.assert_allclose(held[groups == g], apply_offsets(probs[groups == g], offsets))
    with pytest.raises(ValueError, match="two or more"):
        cross_fit(probs, labels, np.zeros(2000))


def test_calibration_groups_keep_every_video_and_both_tracks_of_one_together():
    names = ["a", "b_left", "b_right", "c"]
    frame_offset = np.array([0, 10, 25, 30])
    rows = np.arange(40)
    subject = subject_ids(names, rows, frame_offset)
    groups = video_groups(subject, 2)
    owner = np.searchsorted(frame_offset, rows, side="right") - 1
    for v in range(4):
        assert len(set(groups[owner == v])) == 1
    assert groups[owner == 1][0] == groups[owner == 2][0]  # b_left and b_right: one raw video, one group
    assert groups[owner == 0][0] == groups[owner == 3][0] == 0 and groups[owner == 1][0] == 1


def test_a_decision_calibrates_before_it_smooths():
    probs, _, _ = biased_case(40)
    offsets = (0.0, 2.0, 0.0, -1.0, 0.0)
    d = Decision(offsets, "mode", 5)
    from expr.scoring.decision import smooth

    np.testing.assert_allclose(d.video(probs), smooth(apply_offsets(probs, offsets), "mode", 5))
    rows, num_frames, frame_offset = np.arange(40), np.array([20, 20]), np.array([0, 20])
    both = d.rows(rows, probs, num_frames, frame_offset)
    np.testing.assert_allclose(both[:20], d.video(probs[:20]))
    np.testing.assert_allclose(both[20:], d.video(probs[20:]))


@pytest.mark.slow
def test_expr_calibrate_records_offsets_that_evaluate_and_submit_apply(small_run, tmp_path, capsys):
    """A run calibrated by `expr calibrate`: calibration.json beside its config, the report's rows (without, with,
    cross-fitted), and evaluate and submit applying the offsets (and ignoring them with eval.calibrate false)."""
    import shutil

    from expr.cli.calibrate import main as calibrate_main
    from expr.data.store import FrameStore
    from expr.runs.evaluate import evaluate_run
    from expr.runs.submission import frame_labels

    run = tmp_path / "run"
    shutil.copytree(small_run["run_dir"], run)
    assert calibrate_main([str(run), "--device", "cpu", "--groups", "3"]) == 0
    out = capsys.readouterr().out
    assert "+ calibration, cross-fitted (3 groups of videos)" in out
    info = json.loads((run / "calibration.json").read_text())
    report = json.loads((run / "eval" / "validation" / "report.json").read_text())
    assert len(info["offsets"]) == 8 and info["offsets"][0] == 0.0
    assert info["macro_f1"]["calibrated"] >= info["macro_f1"]["uncalibrated"]  # fitted on this split
    assert report["calibrated_metrics"]["macro_f1"] == info["macro_f1"]["calibrated"]
    again = evaluate_run(run, device="cpu", overrides={"eval.smoothing": "mean", "eval.smoothing_width": 9})
    assert again["calibrated_metrics"]["macro_f1"] == pytest.approx(info["macro_f1"]["calibrated"])  # applied
    # ... and, on the split they were fitted on, the report keeps the cross-fitted row and names the in-sample one;
    # its smoothing row says it stands on the in-sample offsets, and a cross-fitted one stands beside it
    assert again["cross_fitted_metrics"]["macro_f1"] == pytest.approx(info["macro_f1"]["cross_fitted"])
    table = (run / "eval" / "validation" / "report.md").read_text()
    for row in ("+ calibration (fitted on these frames: in-sample, optimistic)",
                "+ calibration, cross-fitted (3 groups of videos)",
                "+ mean smoothing, width 9 (on the in-sample calibration)",
                "+ mean smoothing, width 9, on the cross-fitted calibration"):  # fmt: skip
        assert row in table, row
    other = evaluate_run(run, device="cpu", split="train", out_dir=tmp_path / "t")  # offsets fitted elsewhere
    assert other["calibrated_metrics"] and not other.get("calibration_in_sample")
    assert evaluate_run(run, device="cpu", overrides={"eval.calibrate": False})["calibrated_metrics"] is None

    # submit applies them too: offsets that make one class win everywhere label every frame with it
    info["offsets"] = [0.0, 0.0, 0.0, 0.0, 0.0, 50.0, 0.0, 0.0]
    (run / "calibration.json").write_text(json.dumps(info))
    store = FrameStore(report["store"])
    names = [store.names[v] for v in store.videos_in("validation")[:2]]
    labels = frame_labels(run, None, names, device="cpu")
    assert all((v == 5).all() for v in labels.values())
    plain = frame_labels(run, None, names, device="cpu", overrides={"eval.calibrate": False})
    assert not all((v == 5).all() for v in plain.values())
    info["classes"] = info["classes"][::-1]
    (run / "calibration.json").write_text(json.dumps(info))
    with pytest.raises(Exception, match="calibrated for classes"):
        evaluate_run(run, device="cpu")
