"""Aff-Wild2's other tasks, their building blocks: VA and AU annotation files, the challenge's scores (CCC, AU F1)
and the losses, with unannotated frames masked out."""

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from expr.data.affwild2 import AU_NAMES, AnnotationError, read_au_annotation, read_va_annotation
from expr.scoring.metrics import au_report, ccc, tune_au_thresholds, va_report
from expr.training.losses import au_loss, au_pos_weights, ccc_loss

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


def task_store(tmp_path):
    """Three short videos whose tasks split them differently: ``a`` EXPR-train and VA-validation, ``b`` EXPR- and
    VA-train (AU-validation), ``c`` EXPR-validation without VA or AU."""
    from expr.data.store import FrameStore, VideoRecord, write_store

    rng = np.random.default_rng(0)
    videos = []
    layout = (("a", "train", {"va": "validation"}), ("b", "train", {"va": "train", "au": "validation"}),
              ("c", "validation", {}))  # fmt: skip
    for name, split, tasks in layout:
        n = 40
        va = np.stack([np.linspace(-0.5, 0.5, n), np.linspace(0.5, -0.5, n)], 1).astype(np.float32)
        va[:5] = np.nan
        au = (rng.random((n, 12)) < 0.3).astype(np.int8)
        videos.append(VideoRecord(name, split, 30.0, rng.standard_normal((n, 8)), np.ones(n, bool),
                                  np.arange(n) % 8, rng.standard_normal((n * 50 // 30, 4)),
                                  va=va if "va" in tasks else None, au=au if "au" in tasks else None,
                                  task_splits=tasks))  # fmt: skip
    meta = {"classes": ["Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other"]}
    return FrameStore(write_store(tmp_path / "store", videos, meta))


def test_each_task_trains_and_validates_on_its_own_split_of_the_videos(tmp_path):
    from expr.data.windows import TaskTargets, WindowDataset, build_windows

    store = task_store(tmp_path)
    a, b, c = 0, 1, 2
    train = TaskTargets(store, "train", ("expr", "va", "au"), window=10, overlap="allow")
    assert list(train.videos) == [a, b]  # c is in no task's training split
    out = train(np.array([a, b, b]), np.array([0, 0, 30]))
    assert (out["label"] == [5, 5, 35 % 8]).all()  # EXPR: both train videos, the centre frame's label
    assert np.isnan(out["va"][0]).all() and np.isfinite(out["va"][1:]).all()  # a's VA is validation, not training
    assert (out["au"] == -1).all()  # no video's AU split is train
    val = TaskTargets(store, "validation", ("expr", "va", "au"), window=10)
    assert list(val.videos) == [a, b, c]
    out = val(np.array([a, b, c]), np.array([0, 0, 0]))
    assert (out["label"] == [-1, -1, 5]).all() and np.isfinite(out["va"][0]).all() and np.isnan(out["va"][1:]).all()
    assert (out["au"][1] >= 0).all() and (out["au"][[0, 2]] == -1).all()
    # the training windows of EXPR + VA: a's and b's, each kept for its task; a window whose only target is an
    # unannotated VA frame of a VA-only task set is dropped
    windows = build_windows(store, "train", 10, 10, tasks=("va",))
    assert (
        sorted(set(windows["video"])) == [b] and len(windows) == 4
    )  # b's VA frames 5..39: label frames 10, 20, 30, 39
    tasks = ("expr", "va")
    data = WindowDataset(store, build_windows(store, "train", 10, 10, tasks=tasks, overlap="allow"), split="train",
                         tasks=tasks, overlap="allow")  # fmt: skip
    batch = data.__getitems__(list(range(len(data))))
    assert batch["va"].shape == (len(data), 2) and "au" not in batch
    assert torch.isnan(batch["va"][torch.from_numpy(data.video == a)]).all()


def test_by_default_no_video_that_one_task_holds_out_trains_another(tmp_path):
    from expr.config import Config, ConfigError
    from expr.data.windows import TaskTargets, build_windows
    from expr.training.criterion import frame_class_weights
    from expr.training.loaders import check_store
    from expr.training.losses import class_weights

    store = task_store(tmp_path)
    a, b = 0, 1  # a: EXPR-train but VA-validation
    tasks = ("expr", "va")
    assert store.crossing_videos(tasks).tolist() == [a]
    train = TaskTargets(store, "train", tasks, window=10)  # train.task_overlap exclude, the default
    assert list(train.videos) == [b] and list(train.members["expr"]) == [b]
    assert set(build_windows(store, "train", 10, 10, tasks=tasks)["video"]) == {b}
    assert set(build_windows(store, "train", 10, 10, tasks=tasks, overlap="allow")["video"]) == {a, b}
    cfg = Config()
    cfg.train.tasks = tasks
    expected = class_weights(store.labels[store.frame_rows([b])], 8, cfg.loss.class_weights)
    torch.testing.assert_close(frame_class_weights(store, cfg), expected)  # a's frames do not weigh either
    cfg.train.tasks = ("expr", "va", "au")  # b validates AU: nothing is left to train EXPR on
    with pytest.raises(ConfigError, match="task_overlap"):
        check_store(store, cfg)


def test_a_frame_is_an_au_target_only_with_all_twelve_units_annotated(tmp_path):
    from expr.data.windows import TaskTargets

    store = task_store(tmp_path)
    b = 1  # AU-validation video
    store.task_labels["au"][store.frame_offset[b] + 20, 3] = -1  # one unit unannotated at frame 20
    store.task_labels["au"][store.frame_offset[b] + 30] = -1  # no unit at frame 30
    targets = TaskTargets(store, "validation", ("au",), window=10)
    starts = np.array([15, 25, 5])  # centre frames 20, 30, 10
    assert targets.labelled(np.full(3, b), starts).tolist() == [False, False, True]
    rows = targets.frames_with_target("au")
    assert len(rows) == 38 and store.frame_offset[b] + 20 not in rows


def test_the_multi_task_loss_ignores_what_a_window_lacks():
    from types import SimpleNamespace

    from expr.config import build_config
    from expr.training.criterion import Criterion

    cfg = build_config({"train.tasks": ["expr", "va", "au"], "loss.contrastive_weight": 0.0})
    criterion = Criterion(cfg, torch.zeros(8, 4), torch.ones(8), torch.ones(12))
    torch.manual_seed(0)
    va = torch.zeros(4, 2, requires_grad=True)
    out = SimpleNamespace(logits=torch.randn(4, 8, requires_grad=True), visual_embedding=torch.zeros(4, 4),
                          logit_scale=torch.tensor(1.0), va=va, au=torch.randn(4, 12, requires_grad=True))  # fmt: skip
    with torch.no_grad():
        va += torch.randn(4, 2)
    batch = {"label": torch.tensor([2, -1, 5, -1]), "visual_mask": torch.ones(4, 3, dtype=torch.bool),
             "va": torch.tensor([[0.1, 0.2], [float("nan")] * 2, [-0.3, 0.4], [0.5, -0.5]]),
             "au": torch.tensor([[1] * 12, [0] * 12, [-1] * 12, [1, 0] * 6])}  # fmt: skip
    losses = criterion(out, batch)
    assert set(losses) == {"loss", "loss_cls", "loss_va", "loss_au"} and torch.isfinite(losses["loss"])
    expected = (torch.nn.functional.cross_entropy(out.logits[[0, 2]], batch["label"][[0, 2]]) + losses["loss_va"]
                + losses["loss_au"])  # fmt: skip
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    losses["loss"].backward()
    assert (out.logits.grad[[1, 3]] == 0).all() and (va.grad[1] == 0).all() and (out.au.grad[2] == 0).all()
    assert (va.grad[[0, 2, 3]] != 0).any(1).all()
    only_va = dict(batch, label=torch.full((4,), -1))  # a batch without any EXPR label: no NaN
    assert torch.isfinite(criterion(out, only_va)["loss"])


def test_multi_task_training_on_the_demo_learns_all_three(multi_task_run):
    """The demo's VA and AU annotations follow its hidden expressions: one head learns the three tasks together,
    validated as the challenges score them, the best epoch chosen by the sum of the scores."""
    import json
    from pathlib import Path

    from expr.runs.layout import load_head

    result = multi_task_run
    run_dir = Path(result["run_dir"])
    last = result["history"][-1]
    assert result["best_metric"] == "val/score"
    assert last["val/score"] == pytest.approx(last["val/macro_f1"] + last["val/ccc"] + last["val/au_f1"])
    assert last["val/ccc"] > 0.75 and last["val/au_f1"] > 0.5 and last["val/macro_f1"] > 0.5, last
    assert set(last["val/per_au_f1"]) == set(AU_NAMES) and last["val/va_frames"] > 0
    head = json.loads((run_dir / "best" / "head.json").read_text())
    assert head["selected_by"] == "val/score" and head["val/ccc"] == pytest.approx(
        max(r["val/ccc"] for r in result["history"] if r["val/score"] == max(h["val/score"] for h in result["history"]))
    )
    model, _ = load_head(run_dir)
    assert set(model.task_heads) == {"va", "au"}
    # the split record: no video trained a task that any trained task validated on (train.task_overlap exclude)
    record = json.loads((run_dir / "videos.json").read_text())
    held_out = {name for task in record.values() for name in task["validation"]}
    assert set(record) == {"expr", "va", "au"} and all(record[t]["train"] for t in record)
    assert not held_out & {name for task in record.values() for name in task["train"]}
    coverage = json.loads((run_dir / "final.json").read_text())["target_coverage"]
    assert set(coverage) == {"expr", "va", "au"} and all(0 < c <= 1 for c in coverage.values()), coverage
    # expr evaluate scores every task the run trained, through the same path as validation: the same numbers
    from expr.runs.evaluate import evaluate_run

    report = evaluate_run(run_dir, device="cpu")
    best = result["history"][result["best_epoch"] - 1]
    assert report["va"]["ccc"] == pytest.approx(best["val/ccc"], abs=1e-5)
    assert report["au"]["au_f1"] == pytest.approx(best["val/au_f1"], abs=1e-5)
    assert report["metrics"]["macro_f1"] == pytest.approx(best["val/macro_f1"], abs=1e-5)
    assert report["au"]["au_f1_tuned"] >= report["au"]["au_f1"]
    out = run_dir / "eval" / "validation"
    assert all(
        (out / f).read_bytes()[:4] == b"\x89PNG" for f in ("va_density.png", "au_f1.png", "confusion_matrix.png")
    )
    assert "## Valence-arousal" in (out / "report.md").read_text()


def test_expr_evaluate_warns_when_a_run_trained_on_other_tasks_held_out_videos(multi_task_run, tmp_path, capsys):
    import shutil
    from pathlib import Path

    from expr.runs.evaluate import evaluate_run

    run = tmp_path / "run"
    shutil.copytree(Path(multi_task_run["run_dir"]), run)
    evaluate_run(run, device="cpu", out_dir=tmp_path / "e1")
    assert "task_overlap" not in capsys.readouterr().err  # trained with exclude: nothing to say
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("task_overlap: exclude", "task_overlap: allow"))
    evaluate_run(run, device="cpu", out_dir=tmp_path / "e2")
    assert "was trained with train.task_overlap=allow: 2 videos" in capsys.readouterr().err


def test_va_smoothing_is_one_path_for_validation_evaluate_submit_and_the_va_smoothing_study(multi_task_run, tmp_path):
    import csv
    import subprocess
    import sys
    from pathlib import Path

    from expr.data.store import FrameStore
    from expr.runs.evaluate import evaluate_run
    from expr.runs.submission import frame_values
    from expr.scoring.decision import smooth, smooth_rows
    from expr.scoring.metrics import va_report

    run = Path(multi_task_run["run_dir"])
    saved = np.load(run / "best" / "val_frame_va.npz")  # the best epoch's VA validation outputs
    best = multi_task_run["history"][multi_task_run["best_epoch"] - 1]
    assert va_report(saved["va"], saved["targets"])["ccc"] == pytest.approx(best["val/ccc"], abs=1e-5)
    smoothing = {"eval.va_smoothing": "median", "eval.va_smoothing_width": 15}
    report = evaluate_run(run, device="cpu", out_dir=tmp_path / "e", overrides=smoothing)
    store = FrameStore(report["store"])
    direct = smooth_rows(saved["rows"], saved["va"].astype(np.float64), store.num_frames, store.frame_offset,
                         "median", 15)  # fmt: skip
    assert report["va"]["smoothed"]["ccc"] == pytest.approx(va_report(direct, saved["targets"])["ccc"], abs=1e-4)
    assert "| + median smoothing, width 15 |" in (tmp_path / "e" / "report.md").read_text()
    names = [store.names[v] for v in store.videos_in("validation", "va")[:2]]
    plain = frame_values(run, None, names, "va", device="cpu")
    smoothed = frame_values(run, None, names, "va", device="cpu", overrides=smoothing)
    assert any(np.abs(smoothed[n] - plain[n]).max() > 1e-3 for n in names)  # the smoothing changed something
    for name in names:
        np.testing.assert_allclose(smoothed[name], smooth(plain[name], "median", 15), atol=1e-6)
    # the va_smoothing study: width 0 reproduces the run's CCC; the choice is labelled
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "sweeps" / "run.py"), "--study", "va_smoothing", "--out", str(tmp_path / "s"),
           "--run", str(run)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "s" / "report.md").read_text()
    assert "| eval.va_smoothing | eval.va_smoothing_width | CCC |" in table and "In-sample (optimistic" in table
    rows = list(csv.DictReader(open(tmp_path / "s" / "results.csv")))
    zero = [float(r["value"]) for r in rows if r["eval.va_smoothing_width"] == "0"]
    assert zero and all(v == pytest.approx(best["val/ccc"], abs=1e-5) for v in zero)


def test_validation_scores_va_and_au_on_their_own_validation_videos_through_the_frame_path(tmp_path):
    """Window outputs equal to the targets at their label frames score (nearly) perfectly once placed on frames, and
    only the frames of the task's own validation videos count."""
    from expr.config import build_config
    from expr.data.windows import TaskTargets, WindowDataset, build_windows
    from expr.scoring.outputs import validation_metrics

    store = task_store(tmp_path)
    tasks = ("expr", "va", "au")
    cfg = build_config({"train.tasks": list(tasks)})
    windows = build_windows(store, "validation", 10, 1, drop_unlabelled=False, tasks=tasks)
    data = WindowDataset(store, windows, split="validation", tasks=tasks)
    index = np.arange(len(data))
    perfect = TaskTargets(store, "validation", tasks, 10)(data.video, data.start)
    outputs = {"va": np.nan_to_num(perfect["va"]), "au": np.clip(perfect["au"], 0, 1).astype(np.float32)}
    probs = np.eye(8)[np.maximum(perfect["label"], 0)]
    metrics, _, _ = validation_metrics(store, data, index, probs, cfg, outputs)
    assert metrics["val/va_frames"] == 35 and metrics["val/au_frames"] == 40  # a's VA frames 5..39; b's AU frames
    # frames before the first label frame and after the last take the nearest window's (random AUs differ there)
    assert metrics["val/ccc"] > 0.95 and metrics["val/au_f1"] > 0.8 and metrics["val/macro_f1"] > 0.75
    assert metrics["val/frames"] == 40  # EXPR: c alone


def test_a_run_without_the_expression_task_never_answers_with_its_untrained_classifier(tmp_path, small_store):
    import csv

    from expr.cli.submit import main as submit
    from expr.config import build_config
    from expr.runs.evaluate import evaluate_run
    from expr.training.trainer import run

    cfg = build_config({"data.demo_videos": 12, "model.tcn_blocks": 1, "train.epochs": 1, "train.batch_size": 32,
                        "train.output_dir": str(tmp_path / "run"), "train.log_with": "none", "train.tasks": ["va"]},
                       preset="demo")  # fmt: skip
    result = run(cfg)
    assert result["best_metric"] == "val/ccc" and "val/macro_f1" not in result["history"][0]
    report = evaluate_run(tmp_path / "run", device="cpu")
    assert "metrics" not in report and report["va"]["frames"] > 0
    assert "each section counts its own annotated frames" in (tmp_path / "run/eval/validation/report.md").read_text()
    example = tmp_path / "ex.csv"
    example.write_text("image_location," + ",".join(cfg.data.classes) + "\ndemo_009/00001.jpg,0\n")
    args = [str(tmp_path / "run"), "--example", str(example), "--out", str(tmp_path / "s.csv"), "--device", "cpu"]
    assert submit(args) == 2 and submit([*args, "--task", "va", "--au-thresholds", "validation"]) == 2

    from test_predict import clip_from_photo

    from expr.video.predict import predict_video

    video = clip_from_photo(tmp_path / "a.mp4", "astronaut", audio=False)
    got = predict_video(video, tmp_path / "run", tmp_path / "out", clip="random", wav2vec2="random", progress=False,
                        device="cpu", annotate=True)  # fmt: skip
    (person,) = got["people"]
    header = next(csv.reader(open(person["csv"])))
    assert "label" not in header and "valence" in header and person["png"] is None and got["video"] is None
    assert any("the run trained none" in w for w in got["warnings"])
