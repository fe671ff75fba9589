import csv
from pathlib import Path

import numpy as np
import pytest

from expr.cli.submit import main
from expr.config import ABAW_CLASSES
from expr.runs.submission import (
    SubmissionError,
    read_example,
    validate_submission,
    write_submission,
)

HEADER = "image_location," + ",".join(ABAW_CLASSES)


def test_each_example_line_gets_the_label_of_its_own_frame(tmp_path):
    # Frame numbers in the example count from 1; predicted labels are indexed from frame 0. Every frame has its own
    # label here, so an off-by-one shows on every line.
    ex = tmp_path / "example.csv"
    lines = [("vidA", n) for n in (1, 2, 3, 10, 11)] + [("vidB_left", n) for n in (1, 5, 7, 9)]
    ex.write_text(HEADER + "\n" + "".join(f"{v}/{n:05d}.jpg,0\n" for v, n in lines))
    labels = {"vidA": np.arange(11) % 8, "vidB_left": (np.arange(7) * 3) % 8}  # vidB_left decodes to 7 frames
    out = write_submission(read_example(ex), labels, tmp_path / "sub.csv")
    rows = list(csv.reader(open(out)))[1:]
    expected = [(n - 1) % 8 for _, n in lines[:5]] + [((min(n, 7) - 1) * 3) % 8 for _, n in lines[5:]]
    assert [r[0] for r in rows] == [f"{v}/{n:05d}.jpg" for v, n in lines]
    assert [int(r[1]) for r in rows] == expected  # past the decoded end: the last frame's label


def test_a_malformed_example_line_is_named(tmp_path):
    ex = tmp_path / "example.csv"
    ex.write_text(HEADER + "\nvid/00001.jpg,0\nvid-00002.jpg,0\n")
    with pytest.raises(SubmissionError, match="example.csv:3"):
        read_example(ex)


def test_frame_zero_is_refused_and_repeated_lines_are_warned_about(tmp_path):
    """The challenge numbers frames from 00001.jpg: a line naming 00000.jpg would silently get the last frame's
    label (index -1), so it is refused by name; a line repeated is kept (the example decides) but said."""
    ex = tmp_path / "example.csv"
    ex.write_text(HEADER + "\nvid/00001.jpg,0\nvid/00000.jpg,0\n")
    with pytest.raises(SubmissionError, match=r"example.csv:3: image_location 'vid/00000.jpg' names frame 0"):
        read_example(ex)
    ex.write_text(HEADER + "\nvid/00001.jpg,0\nvid/00002.jpg,0\nvid/00001.jpg,0\n")
    example = read_example(ex)
    assert len(example.lines) == 3
    assert example.warnings == [f"1 lines repeat an earlier one (each gets the same prediction): {ex}:4 repeats line "
                                "2 (vid/00001.jpg)"]  # fmt: skip


@pytest.fixture(scope="module")
def test_store(tmp_path_factory):
    """Two demo videos prepared as the test split (no labels), one with a run of missing faces."""
    from expr.data.demo import generate_videos
    from expr.data.store import write_store

    videos = generate_videos(3, seed=7)[:2]
    for i, v in enumerate(videos):
        v.name, v.split = f"test_{i}", "test"
        v.labels = np.full(len(v.labels), -1)
    videos[1].face[10:40] = False
    meta = {"source": "test", "classes": list(ABAW_CLASSES), "backbones": {"clip": "none", "wav2vec2": "none"}}
    return write_store(tmp_path_factory.mktemp("teststore") / "store", videos, meta), videos


def test_submit_writes_exactly_the_example_frames_and_validates(small_run, test_store, tmp_path, capsys):
    store, videos = test_store
    ex = tmp_path / "example.csv"
    lines = [f"test_1/{i:05d}.jpg,0" for i in range(1, len(videos[1].labels) + 3)]  # 2 frames past the end
    lines += [f"test_0/{i:05d}.jpg,0" for i in range(1, 50)]  # a prefix only, in the example's order
    ex.write_text(HEADER + "\n" + "\n".join(lines) + "\n")
    out = tmp_path / "pred.csv"
    assert main([small_run["run_dir"], "--cache", str(store), "--example", str(ex), "--out", str(out)]) == 0
    assert "validated" in capsys.readouterr().out
    rows = list(csv.reader(open(out)))
    assert rows[0] == HEADER.split(",")
    assert [r[0] for r in rows[1:]] == [line.split(",")[0] for line in lines]
    assert all(0 <= int(r[1]) < 8 and len(r) == 2 for r in rows[1:])
    # The older format: one file per video, a header line, one label per listed frame.
    folder = tmp_path / "per-video"
    args = [small_run["run_dir"], "--cache", str(store), "--example", str(ex), "--out", str(folder)]
    assert main(args + ["--format", "per-video"]) == 0
    assert len((folder / "test_0.txt").read_text().splitlines()) == 1 + 49


def test_the_validator_catches_order_missing_lines_and_bad_labels(tmp_path):
    ex = tmp_path / "example.csv"
    ex.write_text(HEADER + "\nv/00001.jpg,0\nv/00002.jpg,0\nw/00001.jpg,0\n")
    example = read_example(ex)
    good = write_submission(example, {"v": np.array([3, 4]), "w": np.array([7])}, tmp_path / "good.csv")
    assert validate_submission(good, example) == []
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "\nv/00002.jpg,1\nv/00001.jpg,9\n")
    problems = validate_submission(bad, example)
    assert any("2 frame lines, the example has 3" in p for p in problems)
    assert any("bad.csv:2" in p and "v/00001.jpg" in p for p in problems)  # order
    assert any("label '9'" in p for p in problems)


def test_an_example_naming_training_videos_is_warned_about(small_run, small_store, tmp_path, capsys):
    from expr.data.store import FrameStore

    store = FrameStore(small_store)
    train = store.names[int(store.videos_in("train")[0])]
    ex = tmp_path / "example.csv"
    ex.write_text(HEADER + f"\n{train}/00001.jpg,0\n{train}/00002.jpg,0\n")
    args = [small_run["run_dir"], "--cache", str(small_store), "--example", str(ex), "--out", str(tmp_path / "p.csv")]
    assert main(args) == 0  # it may be deliberate (a dry run on known videos): a warning, not a refusal
    err = capsys.readouterr().err
    assert f"1 videos of the example are in the train or validation split of {small_store}" in err and train in err


def test_videos_missing_from_the_cache_are_named(small_run, test_store, tmp_path, capsys):
    store, _ = test_store
    ex = tmp_path / "example.csv"
    ex.write_text(HEADER + "\nunknown_video/00001.jpg,0\n")
    args = [small_run["run_dir"], "--cache", str(store), "--example", str(ex), "--out", str(tmp_path / "p.csv")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unknown_video" in err and "--test-names" in err
    assert not Path(tmp_path / "p.csv").exists()


def test_export_is_a_self_contained_model_folder_that_loads_like_the_run(small_run, tmp_path):
    import json

    import torch

    from expr.cli.export import main as export_main
    from expr.data.demo import ensure_demo_store
    from expr.data.store import FrameStore
    from expr.data.windows import WindowDataset, load_or_build_windows
    from expr.runs.layout import load_head

    out = tmp_path / "model"
    assert export_main([small_run["run_dir"], "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    info = json.loads((out / "config.json").read_text())
    assert info["classes"] == list(ABAW_CLASSES) and info["validation"]["macro_f1"] == small_run["best_macro_f1"]
    assert (out / "README.md").read_text().startswith("---\nlibrary_name: expr")
    exported, _ = load_head(out)
    original, _ = load_head(small_run["run_dir"])
    store = FrameStore(ensure_demo_store(12, seed=0))
    batch = WindowDataset(store, load_or_build_windows(store, "validation", 30)).__getitems__(list(range(8)))
    args = (batch["visual"].float(), batch["visual_mask"], batch["audio"].float(), batch["audio_mask"])
    with torch.no_grad():
        assert torch.equal(exported(*args).logits, original(*args).logits)


@pytest.mark.slow
def test_submit_takes_an_ensemble_folder_like_a_run(small_run, test_store, tmp_path):
    """`expr submit ENSEMBLE`: its members' weighted frame probabilities; two identical members give the run's file."""
    import json

    from expr.cli.ensemble import main as ensemble_main
    from expr.config import build_config
    from expr.runs.submission import frame_probs
    from expr.training.trainer import run

    store, videos = test_store
    ex = tmp_path / "example.csv"
    ex.write_text(HEADER + "\n" + "\n".join(f"test_0/{i:05d}.jpg,0" for i in range(1, 40)) + "\n")
    run_dir = small_run["run_dir"]
    assert ensemble_main([run_dir, run_dir, "--out", str(tmp_path / "same"), "--device", "cpu"]) == 0
    for folder, name in ((run_dir, "run.csv"), (tmp_path / "same", "ensemble.csv")):
        assert main([str(folder), "--cache", str(store), "--example", str(ex), "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "run.csv").read_text() == (tmp_path / "ensemble.csv").read_text()
    # Two different members, weights 0.25 / 0.75: the mean of their probabilities, weighted.
    values = {"data.demo_videos": 12, "model.tcn_blocks": 1, "train.epochs": 1, "train.seed": 7}
    other = build_config(
        {**values, "train.output_dir": str(tmp_path / "other"), "train.log_with": "none"}, preset="demo"
    )
    run(other)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    members = [{"run": run_dir, "weight": 0.25}, {"run": str(tmp_path / "other"), "weight": 0.75}]
    (mixed / "ensemble.json").write_text(json.dumps({"members": members, "smoothing": {"method": "none", "width": 0}}))
    a, b = (frame_probs(r, str(store), ["test_0", "test_1"], device="cpu") for r in (run_dir, tmp_path / "other"))
    both = frame_probs(mixed, str(store), ["test_0", "test_1"], device="cpu")
    assert not np.allclose(a["test_1"], b["test_1"])
    assert all(np.allclose(both[v], 0.25 * a[v] + 0.75 * b[v], atol=1e-6) for v in ("test_0", "test_1"))


@pytest.mark.parametrize("task", ["va", "au"])
def test_va_and_au_submissions_follow_the_example_and_validate(multi_task_run, small_run, tmp_path, capsys, task):
    """A run trained on the three tasks writes each challenge's file: the example's header and lines in its order,
    each frame's valence-arousal (or 12 units) from the path evaluation scores; a broken file is caught."""
    from expr.data.affwild2 import AU_NAMES
    from expr.data.store import FrameStore
    from expr.runs.submission import TASK_COLUMNS, frame_values

    run = multi_task_run["run_dir"]
    store = FrameStore(json_store(run))
    videos = [store.names[v] for v in np.flatnonzero(store.splits == "validation")][:2]
    lines = [(videos[1], n) for n in (3, 1, 2)] + [(videos[0], n) for n in (1, 50, 99999)]  # any order, past the end
    header = "image_location," + ",".join(TASK_COLUMNS[task])
    ex = tmp_path / "example.csv"
    ex.write_text(header + "\n" + "".join(f"{v}/{n:05d}.jpg{',0' * len(TASK_COLUMNS[task])}\n" for v, n in lines))
    out = tmp_path / "sub.csv"
    assert main([run, "--task", task, "--example", str(ex), "--out", str(out), "--device", "cpu"]) == 0
    rows = list(csv.reader(open(out)))
    assert rows[0] == header.split(",") and [r[0] for r in rows[1:]] == [f"{v}/{n:05d}.jpg" for v, n in lines]
    assert "validated against" in capsys.readouterr().out
    values = np.array([[float(x) for x in r[1:]] for r in rows[1:]])
    frames = frame_values(run, None, videos, task, "cpu")  # each line: its own frame (1-based), the last past the end
    expected = np.array([frames[v][min(n, len(frames[v])) - 1] for v, n in lines])
    if task == "va":
        np.testing.assert_allclose(values, expected, atol=5e-5)
        assert (np.abs(values) <= 1).all() and len(np.unique(values[:, 0])) > 1
    else:
        assert values.shape == (6, len(AU_NAMES)) and (values == (expected >= 0.5)).all()
        tuned = ["--au-thresholds", "validation"]
        assert main([run, "--task", task, "--example", str(ex), "--out", str(out), "--device", "cpu", *tuned]) == 0
        printed = capsys.readouterr().out.split("AU thresholds tuned on validation: ")[1].splitlines()[0]
        thresholds = np.array([float(x.split()[1]) for x in printed.split(", ")])
        got = np.array([[float(x) for x in r[1:]] for r in list(csv.reader(open(out)))[1:]])
        assert (got == (expected >= thresholds)).all() and not np.allclose(thresholds, 0.5)
    broken = out.read_text().replace(rows[2][0] + ",", rows[2][0] + ",7,", 1)
    (tmp_path / "broken.csv").write_text(broken)
    problems = validate_submission(tmp_path / "broken.csv", read_example(ex, TASK_COLUMNS[task]), task=task)
    assert problems and "broken.csv:3" in problems[0]
    expr_only = small_run["run_dir"]
    assert main([expr_only, "--task", task, "--example", str(ex), "--out", str(out), "--device", "cpu"]) == 2
    assert f"not {task} (train.tasks)" in capsys.readouterr().err


def json_store(run):
    import json

    return json.loads((Path(run) / "best" / "head.json").read_text())["store"]["path"]
