"""`expr ensemble`: several runs' frame probabilities combined through evaluate's own path."""

import json

import numpy as np
import pytest

from expr.ensemble import EnsembleError, ensemble, greedy_weights
from expr.ensemble import main as ensemble_main


def test_an_ensemble_of_identical_runs_equals_the_run(small_run, tmp_path, capsys):
    run = small_run["run_dir"]
    assert ensemble_main([run, run, "--out", str(tmp_path / "e"), "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "e" / "eval" / "validation" / "report.json").read_text())
    member = json.loads(next((tmp_path / "e" / "members").glob("00-*/report.json")).read_text())
    assert report["metrics"]["macro_f1"] == pytest.approx(member["metrics"]["macro_f1"], abs=1e-6)
    assert report["metrics"]["confusion_matrix"] == member["metrics"]["confusion_matrix"]
    assert "ensemble (equal weights)" in capsys.readouterr().out
    info = json.loads((tmp_path / "e" / "ensemble.json").read_text())
    assert [m["weight"] for m in info["members"]] == [0.5, 0.5]


def test_fitted_weights_never_score_below_the_best_member():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 600)
    classes = ["a", "b", "c", "d"]
    members = []
    for skill in (0.2, 0.5, 1.0):  # noisy probabilities, more or less informative
        logits = rng.normal(0, 1, (600, 4))
        logits[np.arange(600), labels] += skill
        members.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    from expr.metrics import classification_report

    def f1(p):
        return classification_report(labels, p.argmax(1), classes)["macro_f1"]

    w = greedy_weights(members, labels, classes)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert f1(sum(wi * p for wi, p in zip(w, members, strict=True))) >= max(f1(p) for p in members)
    assert w.argmax() == 2  # the strongest member carries the most weight


def test_an_ensemble_needs_two_runs_on_the_same_frames(small_run, tmp_path):
    with pytest.raises(EnsembleError, match="two or more"):
        ensemble([small_run["run_dir"]], tmp_path / "e")
    with pytest.raises(SystemExit) as e:  # argparse names the choices
        ensemble_main([small_run["run_dir"], small_run["run_dir"], "--out", str(tmp_path), "--weights", "x"])
    assert e.value.code == 2
