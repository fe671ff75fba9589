"""`expr ensemble`: several runs' frame probabilities combined through evaluate's own path."""

import json

import numpy as np
import pytest

from expr.cli.ensemble import main as ensemble_main
from expr.runs.ensemble import EnsembleError, ensemble, greedy_weights


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
    from expr.scoring.metrics import classification_report

    def f1(p):
        return classification_report(labels, p.argmax(1), classes)["macro_f1"]

    w = greedy_weights(members, labels, classes)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert f1(sum(wi * p for wi, p in zip(w, members, strict=True))) >= max(f1(p) for p in members)
    assert w.argmax() == 2  # the strongest member carries the most weight


def test_fitted_weights_are_the_best_point_of_the_greedy_path_on_1000_random_cases():
    """Property: whatever the members, classes and frame counts, the fitted ensemble scores at least its best member
    on the data it was fitted on (the last round of the path may score lower; the best point may not)."""
    from expr.scoring.metrics import classification_report

    rng = np.random.default_rng(1)
    below = 0
    for case in range(1000):
        k, m, n = int(rng.integers(2, 6)), int(rng.integers(2, 6)), int(rng.integers(5, 80))
        classes = [str(c) for c in range(k)]
        labels = rng.integers(0, k, n)
        if case % 4 == 0:  # some frames unlabelled
            labels[rng.random(n) < 0.2] = -1
        members = []
        for _ in range(m):
            logits = rng.normal(0, rng.uniform(0.2, 3), (n, k))
            logits[np.arange(n), np.maximum(labels, 0)] += rng.uniform(0, 1.5)
            if case % 3 == 0:  # coarse probabilities: many ties
                logits = np.round(logits)
            members.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))

        def f1(p, labels=labels, classes=classes):
            return classification_report(labels, p.argmax(1), classes)["macro_f1"]

        w = greedy_weights(members, labels, classes)
        fitted = f1(sum(wi * p for wi, p in zip(w, members, strict=True)))
        below += fitted < max(f1(p) for p in members) - 1e-12
    assert below == 0


def test_an_ensemble_needs_two_runs_on_the_same_frames(small_run, tmp_path):
    with pytest.raises(EnsembleError, match="two or more"):
        ensemble([small_run["run_dir"]], tmp_path / "e")
    with pytest.raises(SystemExit) as e:  # argparse names the choices
        ensemble_main([small_run["run_dir"], small_run["run_dir"], "--out", str(tmp_path), "--weights", "x"])
    assert e.value.code == 2


def test_the_steps_table_shows_best_run_ensemble_calibration_and_smoothing(small_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(small_run["run_dir"], run)
    out = tmp_path / "e"
    assert ensemble_main([str(run), str(run), "--out", str(out), "--device", "cpu", "--calibrate",
                          "--smoothing", "mean", "--width", "9", "--groups", "3"]) == 0  # fmt: skip
    table = (out / "eval" / "validation" / "members.md").read_text()
    report = json.loads((out / "eval" / "validation" / "report.json").read_text())
    for step in ("best single run (run)", "ensemble (equal weights)", "+ calibration (fitted on this split)",
                 "+ calibration, cross-fitted (3 groups of videos)", "+ mean smoothing, width 9"):  # fmt: skip
        assert step in table, step
    assert (out / "calibration.json").is_file() and not (run / "calibration.json").exists()
    assert report["smoothing"] == {"method": "mean", "width": 9}
    assert report["calibrated_metrics"]["macro_f1"] >= report["metrics"]["macro_f1"]
    info = json.loads((out / "ensemble.json").read_text())
    assert info["smoothing"] == {"method": "mean", "width": 9}
    # the ensemble's decision is what submit applies: its calibration, then its smoothing, on the members' raw mean
    from expr.data.store import FrameStore
    from expr.runs.submission import frame_probs
    from expr.scoring.decision import Decision

    store = FrameStore(report["store"])
    name = store.names[store.videos_in("validation")[0]]
    (run / "calibration.json").write_text(json.dumps({"classes": info["classes"], "offsets": [0, 9, 0, 0, 0, 0, 0, 0]}))
    got = frame_probs(out, None, [name], device="cpu")[name]  # the member's own calibration plays no part
    data = np.load(out / "eval" / "validation" / "frame_probs.npz")
    v = store.names.index(name)
    at = (data["rows"] >= store.frame_offset[v]) & (data["rows"] < store.frame_offset[v] + store.num_frames[v])
    offsets = tuple(json.loads((out / "calibration.json").read_text())["offsets"])
    np.testing.assert_allclose(got, Decision(offsets, "mean", 9).video(data["probs"][at]), atol=1e-6)


@pytest.fixture(scope="module")
def fold_runs(tmp_path_factory):
    """One run per fold of a 2-fold split of the demo store (1 epoch each)."""
    from expr.config import build_config
    from expr.training.trainer import run

    base = tmp_path_factory.mktemp("folds")
    runs = []
    for fold in (0, 1):
        cfg = build_config({"data.demo_videos": 12, "data.folds": 2, "data.fold": fold, "model.tcn_blocks": 2,
                            "train.epochs": 1, "train.batch_size": 16, "train.output_dir": str(base / f"f{fold}"),
                            "train.log_with": "none"}, preset="demo")  # fmt: skip
        runs.append(run(cfg)["run_dir"])
    return runs


def write_results(path, rows):
    """A results.csv as `expr sweep` writes it (value and objective: the study's objective per trial; each task's
    score and the steps to the best epoch, which differ between the repeats of one setting)."""
    import csv

    rows = [{**r, "value": r["macro_f1"], "objective": "val/macro_f1", "task/macro_f1": r["macro_f1"],
             "steps": 10 * (r["trial"] + 1)} for r in rows]  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    fields = ["trial", "state", "value", "objective", "macro_f1", "data.window", "data.fold", "task/macro_f1",
              "steps", "run_dir"]  # fmt: skip
    with open(path / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.slow
def test_a_k_fold_study_becomes_one_out_of_fold_ensemble(fold_runs, tmp_path, capsys):
    """`expr ensemble --study DIR`: the best setting's runs, every fold; scored out of fold (each video by the model
    that did not train on it), calibration checked fold against fold."""
    from expr.data.store import FrameStore

    study = tmp_path / "sweep"
    write_results(study, [
        {"trial": 0, "state": "complete", "macro_f1": 0.2, "data.window": 10, "data.fold": 0, "run_dir": "elsewhere"},
        {"trial": 1, "state": "complete", "macro_f1": 0.5, "data.window": 30, "data.fold": 0, "run_dir": fold_runs[0]},
        {"trial": 2, "state": "complete", "macro_f1": 0.4, "data.window": 30, "data.fold": 1, "run_dir": fold_runs[1]},
        {"trial": 3, "state": "pruned", "macro_f1": 0.9, "data.window": 60, "data.fold": 0, "run_dir": "pruned"},
    ])  # fmt: skip
    out = tmp_path / "e"
    assert ensemble_main(["--study", str(study), "--out", str(out), "--device", "cpu", "--calibrate"]) == 0
    table = capsys.readouterr().out
    assert "out of fold" in table and "+ calibration, cross-fitted (2 folds)" in table
    # the setting was chosen on these same folds among the study's two complete settings: said, and why
    assert "Optimistic: the study's setting (data.window 30) was chosen among 2 settings" in table
    report = json.loads((out / "eval" / "validation" / "report.json").read_text())
    data = np.load(out / "eval" / "validation" / "frame_probs.npz")
    store = FrameStore(report["store"])
    pooled = np.flatnonzero(np.isin(store.splits, ["train", "validation"]))
    assert np.array_equal(data["rows"], store.frame_rows(pooled))  # every pooled video, each once
    for fold, member in enumerate(sorted((out / "members").iterdir())):
        own = np.load(member / "frame_probs.npz")
        at = np.isin(data["rows"], own["rows"])
        assert (data["groups"][at] == fold).all()
        np.testing.assert_allclose(data["probs"][at], own["probs"])
    info = json.loads((out / "ensemble.json").read_text())
    assert [m["weight"] for m in info["members"]] == [0.5, 0.5] and info["out_of_fold"]

    with pytest.raises(EnsembleError, match="equal only"):
        ensemble(fold_runs, tmp_path / "x", weights="fit", device="cpu")
    assert ensemble_main(["--study", str(tmp_path / "nowhere"), "--out", str(tmp_path / "z")]) == 2
    assert "expr sweep" in capsys.readouterr().err


def fake_member(monkeypatch, reports, folds=None, smoothing=None):
    """evaluate_member replaced: member i gets reports[i] (classes, store, rows), folds[i], smoothing[i] and random
    probabilities."""
    from expr.runs.evaluate import Frames

    folds, smoothing = folds or [None] * len(reports), smoothing or [("none", 0)] * len(reports)
    calls = iter(zip(reports, folds, smoothing, strict=True))

    def evaluate_member(run, cache, split, device, out_dir):
        (classes, store, rows), fold, (method, width) = next(calls)
        out_dir.mkdir(parents=True)
        probs = np.random.default_rng(len(rows)).dirichlet(np.ones(len(classes)), len(rows))
        zeros = np.zeros(len(rows), np.int64)
        frames = Frames(rows, probs, zeros, np.array([100]), np.array([0]), zeros)
        frames.save(out_dir)
        metrics = {"macro_f1": 0.5, "per_class_f1": dict.fromkeys(classes, 0.5)}
        return {"store": store, "metrics": metrics, "calibrated_metrics": None, "smoothed_metrics": None,
                "folds": fold, "smoothing": {"method": method, "width": width}}, frames  # fmt: skip

    monkeypatch.setattr("expr.runs.ensemble.evaluate_member", evaluate_member)


def test_members_that_differ_in_classes_store_or_frames_are_named(monkeypatch, tmp_path):
    rows = np.arange(20)
    fake_member(monkeypatch, [(["a", "b"], "s", rows), (["a", "c"], "s", rows)])
    with pytest.raises(EnsembleError, match=r"r2: classes \['a', 'c'\] differ from r1's"):
        ensemble(["r1", "r2"], tmp_path / "1")
    fake_member(monkeypatch, [(["a", "b"], "s", rows), (["a", "b"], "other", rows)])
    with pytest.raises(EnsembleError, match="r2: evaluated on other, not s"):
        ensemble(["r1", "r2"], tmp_path / "2")
    fake_member(monkeypatch, [(["a", "b"], "s", rows), (["a", "b"], "s", rows[:10])])
    with pytest.raises(EnsembleError, match="r2: its frames of split 'validation' are not r1's"):
        ensemble(["r1", "r2"], tmp_path / "3")
    fake_member(monkeypatch, [(["a", "b"], "s", rows), (["a", "b"], "s", rows)])
    assert ensemble(["r1", "r2"], tmp_path / "4")["frames"] == 20


def test_members_with_other_window_lengths_combine_frame_by_frame(small_run, tmp_path):
    from expr.config import build_config
    from expr.training.trainer import run

    cfg = build_config({"data.demo_videos": 12, "data.window": 24, "data.eval_stride": 6, "model.tcn_blocks": 2,
                        "train.epochs": 1, "train.batch_size": 16, "train.output_dir": str(tmp_path / "w24"),
                        "train.log_with": "none"}, preset="demo")  # fmt: skip
    other = run(cfg)["run_dir"]
    report = ensemble([small_run["run_dir"], other], tmp_path / "e", device="cpu")
    data = np.load(tmp_path / "e" / "eval" / "validation" / "frame_probs.npz")
    a, b = (np.load(m / "frame_probs.npz") for m in sorted((tmp_path / "e" / "members").iterdir()))
    assert json.loads((sorted((tmp_path / "e" / "members").iterdir())[1] / "report.json").read_text())["window"] == 24
    np.testing.assert_allclose(data["probs"], (a["probs"] + b["probs"]) / 2)
    assert report["frames"] == len(a["rows"]) and report["members"][1]["weight"] == 0.5


def test_fold_and_smoothing_mismatches_are_named(monkeypatch, tmp_path):
    rows, cls = np.arange(20), ["a", "b"]
    k3 = [{"k": 3, "fold": 0}, {"k": 3, "fold": 1}]
    fake_member(monkeypatch, [(cls, "s", rows), (cls, "s", rows + 20)], folds=k3)
    with pytest.raises(EnsembleError, match=r"fold\(s\) \[2\] of 3"):
        ensemble(["r1", "r2"], tmp_path / "1")
    fake_member(monkeypatch, [(cls, "s", rows), (cls, "s", rows)], folds=[k3[0], None])
    with pytest.raises(EnsembleError, match="some members come from a k-fold study"):
        ensemble(["r1", "r2"], tmp_path / "2")
    fake_member(monkeypatch, [(cls, "s", rows), (cls, "s", rows)], folds=[k3[0], k3[0]])  # seeds of one fold
    assert ensemble(["r1", "r2"], tmp_path / "3")["split"] == "validation"
    differ = [("mean", 9), ("none", 0)]
    fake_member(monkeypatch, [(cls, "s", rows)] * 2, smoothing=differ)
    with pytest.raises(EnsembleError, match="smooth differently"):
        ensemble(["r1", "r2"], tmp_path / "4")
    fake_member(monkeypatch, [(cls, "s", rows)] * 2, smoothing=[("mean", 9), ("mean", 9)])
    with pytest.raises(EnsembleError, match="needs a --width"):
        ensemble(["r1", "r2"], tmp_path / "5", smoothing="mode", width=0)
    fake_member(monkeypatch, [(cls, "s", rows)] * 2, smoothing=[("mean", 9), ("mean", 0)])
    with pytest.raises(EnsembleError, match="smooth differently"):
        ensemble(["r1", "r2"], tmp_path / "6")
    fake_member(monkeypatch, [(cls, "s", rows)] * 2, smoothing=[("mean", 0), ("none", 0)])  # both: no smoothing
    assert ensemble(["r1", "r2"], tmp_path / "7")["smoothing"] == {"method": "none", "width": 0}
    fake_member(monkeypatch, [(cls, "s", rows)] * 2, smoothing=[("mean", 9), ("mean", 9)])
    assert ensemble(["r1", "r2"], tmp_path / "8", width=5)["smoothing"] == {"method": "mean", "width": 5}


def test_an_ensembles_decision_overrides_are_parsed_like_a_runs(tmp_path):
    from expr.config import CliText, ConfigError
    from expr.runs.layout import RunError, ensemble_decision

    folder = tmp_path / "e"
    folder.mkdir()
    classes = ["a", "b"]
    info = {"members": [], "classes": classes, "smoothing": {"method": "mean", "width": 9}}
    (folder / "ensemble.json").write_text(json.dumps(info))
    (folder / "calibration.json").write_text(json.dumps({"classes": classes, "offsets": [0.0, 1.0]}))
    assert ensemble_decision(folder).offsets == (0.0, 1.0)
    cli = {"eval.calibrate": CliText("FALSE")}  # as the command line gives it, parsed as for a run
    assert ensemble_decision(folder, cli).offsets is None
    cli = {"eval.smoothing": CliText("mode"), "eval.smoothing_width": CliText("5"), "data.cache": CliText("x")}
    d = ensemble_decision(folder, cli)
    assert (d.smoothing, d.width) == ("mode", 5)
    with pytest.raises(ConfigError, match="eval.calibrate"):
        ensemble_decision(folder, {"eval.calibrate": CliText("no")})
    with pytest.raises(ConfigError, match="eval.smoothing"):
        ensemble_decision(folder, {"eval.smoothing": CliText("median")})
    (folder / "calibration.json").write_text(json.dumps({"classes": classes, "offsets": [0.0]}))
    with pytest.raises(RunError, match="1 offsets for 2 classes"):
        ensemble_decision(folder)
    del info["smoothing"]
    (folder / "ensemble.json").write_text(json.dumps(info))
    with pytest.raises(RunError, match="run `expr ensemble` again"):
        ensemble_decision(folder)


def test_a_study_whose_best_setting_has_one_run_is_refused(tmp_path):
    from expr.runs.ensemble import study_runs

    (tmp_path / "trials" / "0001").mkdir(parents=True)
    write_results(tmp_path, [
        {"trial": 0, "state": "complete", "macro_f1": 0.2, "data.window": 10, "data.fold": "", "run_dir": "a"},
        {"trial": 1, "state": "complete", "macro_f1": 0.5, "data.window": 30, "data.fold": "", "run_dir": "b"},
    ])  # fmt: skip
    with pytest.raises(EnsembleError, match="the best setting has one run"):
        study_runs(tmp_path)
    write_results(tmp_path, [
        {"trial": 1, "state": "complete", "macro_f1": 0.5, "data.window": 30, "data.fold": 0, "run_dir": "rel/1"},
        {"trial": 2, "state": "complete", "macro_f1": 0.5, "data.window": 30, "data.fold": 1, "run_dir": "rel/2"},
    ])  # fmt: skip
    with pytest.raises(EnsembleError, match="trial 2's run rel/2 is not there"):
        study_runs(tmp_path)
    (tmp_path / "trials" / "0002").mkdir()
    assert study_runs(tmp_path) == [str(tmp_path / "trials" / "0001"), str(tmp_path / "trials" / "0002")]
