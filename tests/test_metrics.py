import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import f1_score

from expr.config import ABAW_CLASSES
from expr.scoring.metrics import METRIC_PATH, classification_report


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.choice(8, size=500, p=[0.4, 0.05, 0.03, 0.02, 0.25, 0.1, 0.05, 0.1])
    p = np.where(rng.random(500) < 0.6, y, rng.integers(0, 8, 500))
    report = classification_report(y, p, ABAW_CLASSES)
    assert report["macro_f1"] == pytest.approx(
        f1_score(y, p, labels=range(8), average="macro", zero_division=0), abs=1e-12
    )
    assert report["absent_classes"] == [] and report["macro_f1_present"] == report["macro_f1"]
    per_class = f1_score(y, p, average=None, labels=range(8))
    assert [report["per_class_f1"][c] for c in ABAW_CLASSES] == pytest.approx(per_class.tolist())
    assert report["confusion_matrix"] == sk_confusion(y, p, labels=range(8)).tolist()
    assert report["accuracy"] == pytest.approx((y == p).mean())


def test_a_class_absent_from_the_targets_counts_zero_in_the_headline_score():
    # Fear (3) never occurs as a target: the EXPR score still averages over all 8 classes (sklearn with the label
    # list and zero_division=0); the mean over the 7 present classes is reported beside it.
    y = np.array([0, 1, 2, 4, 5, 6, 7, 0, 1])
    for p in (np.array([0, 1, 2, 4, 5, 6, 7, 1, 1]), np.array([0, 1, 2, 4, 5, 6, 7, 3, 1])):  # Fear never / once
        report = classification_report(y, p, ABAW_CLASSES)
        reference = f1_score(y, p, labels=range(8), average="macro", zero_division=0)
        assert report["macro_f1"] == pytest.approx(reference, abs=1e-12)
        assert report["per_class_f1"]["Fear"] == 0.0
        assert report["absent_classes"] == ["Fear"]
        present = [c for c in range(8) if c != 3]
        assert report["macro_f1_present"] == pytest.approx(f1_score(y, p, labels=present, average="macro"))
        assert report["macro_f1_present"] > report["macro_f1"]


@pytest.mark.parametrize("seed", range(3))
def test_macro_f1_equals_sklearn_with_rare_classes_missing(seed):
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 4, 5, 7], size=300)  # four of the eight classes never occur
    p = np.where(rng.random(300) < 0.5, y, rng.integers(0, 8, 300))
    report = classification_report(y, p, ABAW_CLASSES)
    assert report["macro_f1"] == pytest.approx(f1_score(y, p, labels=range(8), average="macro", zero_division=0))
    assert report["absent_classes"] == ["Anger", "Disgust", "Fear", "Surprise"]


def test_class_only_predicted_counts_as_zero():
    y = np.array([0, 0, 1])
    p = np.array([0, 2, 1])
    report = classification_report(y, p, ["a", "b", "c"])
    assert report["per_class_f1"]["c"] == 0.0
    assert report["macro_f1"] == pytest.approx(f1_score(y, p, labels=range(3), average="macro", zero_division=0))


def test_ignored_frames_are_skipped():
    report = classification_report(np.array([0, -1, 1]), np.array([0, 1, 1]), ["a", "b"])
    assert report["count"] == 2 and report["macro_f1"] == 1.0


def test_evaluate_module_loads_offline_and_agrees():
    import evaluate

    metric = evaluate.load(METRIC_PATH)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, 200)
    p = np.where(rng.random(200) < 0.5, y, rng.integers(0, 8, 200))
    out = metric.compute(predictions=p.tolist(), references=y.tolist())
    assert out["macro_f1"] == pytest.approx(f1_score(y, p, labels=range(8), average="macro", zero_division=0))
    assert set(out["per_class_f1"]) == set(ABAW_CLASSES)


def test_tuned_au_thresholds_take_the_one_nearest_half_among_equally_good_ones():
    from expr.scoring.metrics import tune_au_thresholds

    # Unit 0: any threshold in (0.1, 0.9] separates perfectly -> 0.5; unit 1: only (0.6, 0.7] does -> 0.65 or 0.7.
    probs = np.array([[0.9, 0.7], [0.1, 0.6], [0.9, 0.7], [0.1, 0.6]])
    targets = np.array([[1, 1], [0, 0], [1, 1], [0, 0]])
    thresholds = tune_au_thresholds(probs, targets)
    assert thresholds[0] == pytest.approx(0.5) and thresholds[1] == pytest.approx(0.65)
