import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import f1_score

from expr.config import ABAW_CLASSES
from expr.metrics import METRIC_PATH, classification_report


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.choice(8, size=500, p=[0.4, 0.05, 0.03, 0.02, 0.25, 0.1, 0.05, 0.1])
    p = np.where(rng.random(500) < 0.6, y, rng.integers(0, 8, 500))
    report = classification_report(y, p, ABAW_CLASSES)
    assert report["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"), abs=1e-12)
    per_class = f1_score(y, p, average=None, labels=range(8))
    assert [report["per_class_f1"][c] for c in ABAW_CLASSES] == pytest.approx(per_class.tolist())
    assert report["confusion_matrix"] == sk_confusion(y, p, labels=range(8)).tolist()
    assert report["accuracy"] == pytest.approx((y == p).mean())


def test_class_absent_from_targets_and_predictions_is_left_out_like_abaw():
    # Class 3 never occurs: the ABAW scorer (sklearn without a label list) averages over the other 7.
    y = np.array([0, 1, 2, 4, 5, 6, 7, 0, 1])
    p = np.array([0, 1, 2, 4, 5, 6, 7, 1, 1])
    report = classification_report(y, p, ABAW_CLASSES)
    assert report["per_class_f1"]["Fear"] is None
    assert report["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert report["macro_f1"] > f1_score(y, p, average="macro", labels=range(8), zero_division=0)


def test_class_only_predicted_counts_as_zero():
    y = np.array([0, 0, 1])
    p = np.array([0, 2, 1])
    report = classification_report(y, p, ["a", "b", "c"])
    assert report["per_class_f1"]["c"] == 0.0
    assert report["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))


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
    assert out["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert set(out["per_class_f1"]) == set(ABAW_CLASSES)
