"""Aff-Wild2's other tasks, their building blocks: VA and AU annotation files, the challenge's scores (CCC, AU F1)
and the losses, with unannotated frames masked out."""

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from expr.data.affwild2 import AU_NAMES, AnnotationError, read_au_annotation, read_va_annotation
from expr.losses import au_loss, au_pos_weights, ccc_loss
from expr.metrics import au_report, ccc, tune_au_thresholds, va_report

AU_HEADER = ",".join(AU_NAMES)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_va_annotation_parsing(tmp_path):
    path = write(tmp_path, "v.txt", "valence,arousal\n0.5,-0.25\n-5,-5\n-1,1\n\n")
    va = read_va_annotation(path)
    assert va.dtype == np.float32 and va.shape == (3, 2)
    np.testing.assert_allclose(va[[0, 2]], [[0.5, -0.25], [-1, 1]])
    assert np.isnan(va[1]).all()


@pytest.mark.parametrize(
    "text, message",
    [
        ("valence;arousal\n0,0\n", ":1: header"),
        ("arousal,valence\n0,0\n", ":1: header"),
        ("valence,arousal\n0.1,0.2\n0.5\n", ":3: 1 values, expected 2"),
        ("valence,arousal\n0.1,1.5\n", ":2: value 1.5 is outside [-1, 1]"),
        ("valence,arousal\n-5,0.3\n", ":2: value -5 is outside [-1, 1]; -5 marks an unannotated frame only when both"),
        ("valence,arousal\n-1,-1\n-1,x\n", ":3: '-1,x' are not two numbers"),
        ("", ":1: empty file"),
    ],
)
def test_malformed_va_files_name_the_line(tmp_path, text, message):
    path = write(tmp_path, "bad.txt", text)
    with pytest.raises(AnnotationError, match=f"bad.txt{message}".replace("[", r"\[").replace("]", r"\]")):
        read_va_annotation(path)


def test_au_annotation_parsing_and_errors(tmp_path):
    rows = ["1,0,0,0,0,0,0,0,0,0,0,1", ",".join(["-1"] * 12), "0,0,0,0,0,0,0,0,0,0,0,0"]
    au = read_au_annotation(write(tmp_path, "a.txt", AU_HEADER + "\n" + "\n".join(rows) + "\n"))
    assert au.dtype == np.int8 and au.shape == (3, 12)
    assert au[0, 0] == 1 and au[0, 11] == 1 and (au[1] == -1).all() and (au[2] == 0).all()
    cases = [
        (AU_HEADER.replace("AU4", "AU5") + "\n", ":1: header"),
        (AU_HEADER + "\n" + "0," * 10 + "0\n", ":2: 11 values, expected 12"),
        (AU_HEADER + "\n" + "0," * 11 + "2\n", ":2: AU26 is 2, not 0 or 1"),
        (AU_HEADER + "\n" + "-1," * 11 + "0\n", ":2: AU1 is -1, not 0 or 1; -1 marks an unannotated frame only"),
        (AU_HEADER + "\n" + "-5," * 11 + "-5\n", ":2: AU1 is -5, not 0 or 1"),  # VA's sentinel in an AU file
    ]
    for text, message in cases:
        with pytest.raises(AnnotationError, match=f"bad.txt{message}"):
            read_au_annotation(write(tmp_path, "bad.txt", text))


def test_ccc_is_the_direct_formula_and_skips_unannotated_frames():
    rng = np.random.default_rng(0)
    x, y = rng.normal(0.1, 0.5, 500), rng.normal(-0.2, 0.3, 500)
    y = 0.6 * x + y
    direct = 2 * np.cov(x, y, bias=True)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    assert ccc(x, y) == pytest.approx(direct)
    assert ccc(y, y) == pytest.approx(1.0) and ccc(-y, y) < 0
    assert ccc(y + 0.5, y) < np.corrcoef(y + 0.5, y)[0, 1]  # a bias costs CCC, not Pearson's r
    targets = np.stack([y, x], 1)
    targets[:50] = np.nan
    preds = np.stack([x, y], 1)
    report = va_report(preds, targets)
    assert report["ccc_valence"] == pytest.approx(ccc(x[50:], y[50:]))
    assert report["ccc"] == pytest.approx((ccc(x[50:], y[50:]) + ccc(y[50:], x[50:])) / 2)
    assert report["count"] == 450


def test_ccc_loss_is_one_minus_the_score_and_ignores_unannotated_frames():
    rng = np.random.default_rng(1)
    preds = torch.tensor(rng.normal(0, 0.5, (64, 2)), dtype=torch.float32, requires_grad=True)
    targets = torch.tensor(rng.uniform(-1, 1, (64, 2)), dtype=torch.float32)
    targets[:10] = float("nan")
    loss = ccc_loss(preds, targets)
    expected = 1 - va_report(preds.detach().numpy(), targets.numpy())["ccc"]
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    loss.backward()
    assert (preds.grad[:10] == 0).all() and (preds.grad[10:] != 0).any()
    moved = preds.detach().clone()
    moved[:10] = 100.0  # anything at an unannotated frame
    assert ccc_loss(moved, targets).item() == pytest.approx(loss.item(), abs=1e-6)
    assert ccc_loss(preds[:1], targets[10:11]).item() == 0.0


def test_au_f1_is_scikit_learns_per_unit_mean_and_thresholds_can_be_tuned():
    rng = np.random.default_rng(2)
    targets = (rng.random((400, 12)) < np.linspace(0.05, 0.6, 12)).astype(np.int8)
    probs = np.clip(0.3 * targets + rng.random((400, 12)) * 0.7, 0, 1)
    targets[:20] = -1
    report = au_report(probs, targets, AU_NAMES)
    expected = f1_score(targets[20:], probs[20:] >= 0.5, average=None, zero_division=0)
    np.testing.assert_allclose(list(report["per_au_f1"].values()), expected)
    assert report["au_f1"] == pytest.approx(expected.mean()) and report["count"] == 380
    thresholds = tune_au_thresholds(probs, targets)
    tuned = au_report(probs, targets, AU_NAMES, thresholds)
    assert tuned["au_f1"] > report["au_f1"] and thresholds.shape == (12,)
    assert all(tuned["per_au_f1"][n] >= report["per_au_f1"][n] for n in AU_NAMES)  # 0.5 is on the grid


def test_au_loss_weights_positives_and_ignores_unannotated_frames():
    targets = np.array([[1, 0], [0, 0], [0, 0], [0, 1], [-1, -1]])
    np.testing.assert_allclose(au_pos_weights(targets).numpy(), [3.0, 3.0])
    np.testing.assert_allclose(au_pos_weights(np.array([[0, 1], [0, 0]])).numpy(), [1.0, 1.0])
    logits = torch.zeros(5, 2, requires_grad=True)
    t = torch.tensor(targets)
    loss = au_loss(logits, t, au_pos_weights(targets))
    manual = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:4], t[:4].float(), pos_weight=torch.tensor([3.0, 3.0])
    )
    assert loss.item() == pytest.approx(manual.item())
    loss.backward()
    assert (logits.grad[4] == 0).all()
    assert au_loss(logits, torch.full((5, 2), -1)).item() == 0.0
