"""ABAW's multi-task challenge (s-Aff-Wild2): its annotation files read from a generated tree in the published format,
the store's multi-task split, training on it, P_MTL against a direct computation of its terms, and the submission."""

import json

import numpy as np
import pytest
from mediatree import affwild2_tree
from test_prepare import affwild2_items, small_backbones

from expr.data.mtl import MtlError, read_mtl_folder
from expr.data.store import FrameStore
from expr.extract import PrepareError, prepare
from expr.tasks import AU_NAMES

HEADER = "image,valence,arousal,expression,aus"


def mtl_line(image: str, va=(0.1, -0.2), expr=3, au=(0,) * 12) -> str:
    return ",".join([image, *(f"{v:g}" for v in va), str(expr), *(str(u) for u in au)])


def write_mtl(root, train: list[str], validation: list[str]) -> None:
    folder = root / "MTL_Challenge"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train_set.txt").write_text("\n".join([HEADER, *train]) + "\n")
    (folder / "validation_set.txt").write_text("\n".join([HEADER, *validation]) + "\n")


def tree_lines(rng):
    """MTL lines for the generated tree: tracks a and pair_left train, mute validation; every kind of sentinel."""
    train, validation, truth = [], [], {}
    for name, frames, out in (("a", [0, 1, 2, 5, 6, 20, 21, 22], train), ("pair_left", range(10, 20), train),
                              ("mute", range(0, 30, 2), validation)):  # fmt: skip
        for f in frames:
            va = tuple(np.round(rng.uniform(-1, 1, 2), 3))
            expr, au = int(rng.integers(0, 8)), tuple(int(u) for u in rng.integers(0, 2, 12))
            if f == 2:
                va = (-5, -5)
            if f == 5:
                expr = -1
            if f == 6:
                au = (-1,) * 12
            out.append(mtl_line(f"{name}/{f + 1:05d}.jpg", va, expr, au))
            truth[(name, f)] = (va, expr, au)
    return train, validation, truth


@pytest.fixture(scope="module")
def mtl_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("sawild2")
    affwild2_tree(root)
    train, validation, truth = tree_lines(np.random.default_rng(0))
    write_mtl(root, train, validation)
    return root, train, validation, truth


def test_multi_task_annotations_land_on_their_frames_with_one_split(mtl_tree, tmp_path):
    """Labels only on listed frames (sentinels as unannotated), one split per track for every task, the uni-task
    annotations kept beside them, `store info` listing the split, and use_mtl_split switching every task to it."""
    root, _, _, truth = mtl_tree
    items, source, classes = affwild2_items(root)
    assert source["mtl_dir"] == "MTL_Challenge"
    out = tmp_path / "store"
    prepare(items, out, small_backbones(), classes, source=source, progress=False)
    store = FrameStore(out)
    split = dict(zip(store.names, store.mtl_splits, strict=True))
    assert split == {"a": "train", "b25": "", "pair_left": "train", "pair_right": "", "mute": "validation",
                     "long": "", "t1": ""}  # fmt: skip
    uni = store.labels.copy()
    for (name, f), (va, expr, au) in truth.items():
        row = store.frame_offset[store.names.index(name)] + f
        assert store.mtl["expr"][row] == expr
        if va == (-5, -5):
            assert np.isnan(store.mtl["va"][row]).all()
        else:
            np.testing.assert_allclose(store.mtl["va"][row], va, atol=1e-6)
        np.testing.assert_array_equal(store.mtl["au"][row], au)
    listed = {store.frame_offset[store.names.index(n)] + f for n, f in truth}
    others = np.setdiff1d(np.arange(len(store.labels)), sorted(listed))
    assert (store.mtl["expr"][others] == -1).all() and np.isnan(store.mtl["va"][others]).all()
    assert (store.mtl["au"][others] == -1).all()
    from expr.data.store_info import describe

    assert "multi-task split: videos train 2, validation 1; frames 33 listed" in describe(store)
    store.use_mtl_split()
    assert (store.labels == store.mtl["expr"]).all() and not (store.labels == uni).all()
    assert store.task_labels["va"] is store.mtl["va"] and store.task_labels["au"] is store.mtl["au"]
    for task in ("expr", "va", "au"):
        assert sorted(store.names[v] for v in store.videos_in("validation", task)) == ["mute"]
        assert sorted(store.names[v] for v in store.videos_in("train", task)) == ["a", "pair_left"]
    assert [store.names[v] for v in store.videos_in("test")] == ["t1"]  # the store's test video stays one
    for item in items:  # the same tree without (or with another) multi-task annotation: refused, never mixed
        item.mtl = None
        (item.task_splits or {}).pop("mtl", None)
    refused = r"3 of its videos are in the multi-task annotation differently .*first: a, multi-task split 'train'"
    with pytest.raises(PrepareError, match=refused + r" in the store, 'none' in the tree"):
        prepare(items, out, small_backbones(), classes, source=source, progress=False)


@pytest.mark.parametrize(
    "train, validation, where",
    [
        ([mtl_line("a/00001.jpg"), mtl_line("a/00001.jpg")], [], r"train_set.txt:3: a/00001.jpg is already listed at "
         r".*train_set.txt:2"),
        ([mtl_line("a/00001.jpg")], [mtl_line("a/00001.jpg")], r"validation_set.txt:2: a/00001.jpg is already listed"),
        ([mtl_line("a/00001.jpg")], [mtl_line("a/00002.jpg")], r"validation_set.txt:2: a has frames in train"),
        ([mtl_line("a/00004.jpg")], [], r"train_set.txt:2: a/00004.jpg does not exist"),  # no crop: frame 3
        ([mtl_line("zz/00001.jpg")], [], r"train_set.txt:2: zz has no face-crop folder and no raw video"),
        ([mtl_line("a/00001.jpg", va=(-5, 0.2))], [], r"train_set.txt:2: valence/arousal -5 is outside \[-1, 1\]; -5 "
         r"marks unannotated only when both"),
        ([mtl_line("a/00001.jpg", expr=8)], [], r"train_set.txt:2: expression 8 is outside -1..7"),
        ([mtl_line("a/00001.jpg", au=(-1,) + (0,) * 11)], [], r"train_set.txt:2: AU1 is -1, not 0 or 1; -1 marks"),
        ([mtl_line("a/00001.jpg", au=(2,) + (0,) * 11)], [], r"train_set.txt:2: AU1 is 2, not 0 or 1$"),
        (["a/00001.jpg,0.1,0.2,3"], [], r"train_set.txt:2: 4 fields, expected 16"),
        (["a/00001.jpg,0.1,x" + ",0" * 13], [], r"train_set.txt:2: .* are not 2 numbers and 13 integers"),
        ([mtl_line("a/1.png.jpg")], [], r"train_set.txt:2: image 'a/1.png.jpg' is not <video>/<NNNNN>.jpg"),
    ],
)  # fmt: skip
def test_a_bad_multi_task_line_stops_before_extraction_naming_file_and_line(tmp_path, train, validation, where):
    from mediatree import write_crops

    root = tmp_path / "aw"
    write_crops(root / "cropped_aligned" / "a", [0, 1, 2, 4], size=8)
    write_mtl(root, train, validation)
    with pytest.raises(MtlError, match=where):
        affwild2_items(root, test=False)


def test_prepare_names_a_bad_multi_task_line_and_refuses_a_test_video_the_file_lists(tmp_path, capsys):
    """Through the command: one `error:` line naming file:line (exit 2), before any extraction; a test video that
    the multi-task file lists as training or validation is refused too."""
    from mediatree import write_crops

    from expr.cli.prepare import main

    root = tmp_path / "aw"
    write_crops(root / "cropped_aligned" / "a", [0, 1], size=8)
    write_mtl(root, [mtl_line("a/00001.jpg", expr=9)], [])
    args = ["affwild2", str(root), "--out", str(tmp_path / "out"), "--clip", "random", "--wav2vec2", "random"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train_set.txt:2: expression 9 is outside -1..7" in err
    assert not (tmp_path / "out").exists()
    write_mtl(root, [mtl_line("a/00001.jpg")], [])
    (tmp_path / "test.txt").write_text("a\n")
    assert main(args + ["--test-names", str(tmp_path / "test.txt")]) == 2
    assert "a is a test video and the multi-task annotation lists it as train" in capsys.readouterr().err


def test_multi_task_reader_takes_the_published_names_and_the_test_release(tmp_path):
    """Train_Set.txt / training_set_annotations_22.txt both name the training file; a header with the unit names is
    accepted; the test release lists its tracks once each, in order."""
    from expr.data.affwild2 import read_test_names

    folder = tmp_path / "MTL_Challenge"
    folder.mkdir()
    header = "image,valence,arousal,expression," + ",".join(AU_NAMES)
    (folder / "training_set_annotations_22.txt").write_text(header + "\n" + mtl_line("x/00002.jpg") + "\n\n")
    (folder / "Validation_Set.txt").write_text(header + "\n" + mtl_line("y_left/00001.jpg", expr=-1) + "\n")
    tracks = read_mtl_folder(folder)
    assert {n: (t.split, t.frames) for n, t in tracks.items()} == {"x": ("train", [1]), "y_left": ("validation", [0])}
    labels = tracks["x"].labels(4)
    assert labels["expr"].tolist() == [-1, 3, -1, -1] and labels["au"].shape == (4, 12)
    release = tmp_path / "MTL_Challenge_test_set_release.txt"
    release.write_text(HEADER + "\nt9/00001.jpg\nt9/00002.jpg\nt3_right/00007.jpg,,,\n")
    assert read_test_names(release) == ["t9", "t3_right"]


@pytest.fixture(scope="module")
def mtl_run(tmp_path_factory, small_store):
    """One epoch of the three tasks on the demo's multi-task split."""
    from expr.config import build_config
    from expr.training.trainer import run

    out = tmp_path_factory.mktemp("mtl") / "run"
    cfg = build_config({"data.demo_videos": 12, "model.tcn_blocks": 1, "train.epochs": 1, "train.batch_size": 16,
                        "train.output_dir": str(out), "train.log_with": "none",
                        "train.tasks": ["expr", "va", "au"], "data.split_source": "mtl"}, preset="demo")  # fmt: skip
    run(cfg)
    return out


def test_p_mtl_is_the_sum_of_its_three_terms_on_the_multi_task_validation_frames(mtl_run):
    """Training on the demo's multi-task split logs val/p_mtl = val/ccc + val/macro_f1 + val/au_f1, each equal to a
    direct computation (scikit-learn F1, the CCC formula) on the frames the multi-task file annotates."""
    from sklearn.metrics import f1_score

    from expr.data.source import open_store
    from expr.runs.run import Run

    metrics = [json.loads(line) for line in (mtl_run / "metrics.jsonl").read_text().splitlines()]
    m = next(x for x in metrics if "val/p_mtl" in x)
    assert m["val/p_mtl"] == pytest.approx(m["val/ccc"] + m["val/macro_f1"] + m["val/au_f1"], abs=1e-12)
    info = json.loads((mtl_run / "best" / "head.json").read_text())
    assert info["selected_by"] == "val/p_mtl" and info["val/p_mtl"] == m["val/p_mtl"]
    done = Run.open(mtl_run)
    store = open_store(done.cfg)
    assert store.split_tag == "mtl"
    videos = store.videos_in("validation")
    rows, out = done.window_outputs(store, "validation", videos, "cpu")
    raw = FrameStore(store.path)  # the multi-task columns as written, not the arrays training read
    assert sorted(videos) == sorted(np.flatnonzero(raw.mtl_splits == "validation"))
    labels = raw.mtl["expr"][rows]
    known = labels >= 0
    assert 0 < known.sum() < len(rows)  # labels sit on the listed frames only
    f1 = f1_score(labels[known], out["expr"][known].argmax(1), labels=range(8), average="macro", zero_division=0)
    assert m["val/macro_f1"] == pytest.approx(f1, abs=1e-9)

    def ccc(x, y):
        return 2 * np.cov(x, y, bias=True)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)

    target = raw.mtl["va"][rows]
    ok = ~np.isnan(target).any(1)
    va = out["va"][ok]
    assert m["val/ccc"] == pytest.approx(np.mean([ccc(va[:, k], target[ok, k]) for k in range(2)]), abs=1e-5)
    target = raw.mtl["au"][rows]
    ok = (target >= 0).all(1)
    f1s = [f1_score(target[ok, k], out["au"][ok, k] >= 0.5, zero_division=0) for k in range(12)]
    assert m["val/au_f1"] == pytest.approx(np.mean(f1s), abs=1e-9)
    from expr.runs.evaluate import evaluate_run

    report = evaluate_run(mtl_run, device="cpu")  # reports it with each term, equal to training's
    assert report["p_mtl"]["score"] == pytest.approx(m["val/p_mtl"], abs=1e-9)
    assert report["p_mtl"]["macro_f1"] == pytest.approx(m["val/macro_f1"], abs=1e-9)
    assert "## P_MTL" in (mtl_run / "eval" / "validation" / "report.md").read_text()


def test_mtl_submission_writes_each_example_image_its_three_tasks_and_refuses_what_the_store_lacks(
    mtl_run, small_run, tmp_path, capsys
):
    """One line per example image in its order under the example's header: the frame's valence and arousal, its
    expression label after the run's decision (here with mean smoothing) and its units at 0.5, each from the run's
    own frame outputs (VA smoothed as eval.va_smoothing says); an image of a video the store lacks is refused naming
    the example's line, one past its video's end is named in a warning; a run without the three tasks is refused."""
    from expr.cli.submit import main as submit
    from expr.data.source import open_store
    from expr.runs.run import Run
    from expr.runs.submission import read_example, validate_submission

    done = Run.open(mtl_run)
    store = open_store(done.cfg)
    videos = [store.names[v] for v in store.videos_in("validation")][:2]
    images = [(v, f) for v in videos for f in (1, 2, 17, 40, 41)] + [(videos[0], 3)]
    example = tmp_path / "MTL_Challenge_test_set_release.txt"
    example.write_text("image,valence,arousal,expression,aus\n" + "".join(f"{v}/{f:05d}.jpg\n" for v, f in images))
    out = tmp_path / "predictions.txt"
    smoothing = {"eval.smoothing": "mean", "eval.smoothing_width": 9, "eval.va_smoothing": "mean",
                 "eval.va_smoothing_width": 5}  # fmt: skip
    options = [x for k, v in smoothing.items() for x in (f"--{k}", str(v))]
    assert submit([str(mtl_run), "--task", "mtl", "--example", str(example), "--out", str(out), "--device", "cpu",
                   *options]) == 0  # fmt: skip
    lines = out.read_text().splitlines()
    assert lines[0] == "image,valence,arousal,expression,aus" and len(lines) == len(images) + 1
    from expr.scoring.decision import smooth

    smoothed = Run.open(mtl_run, smoothing)
    outputs = done.outputs(videos, device="cpu")
    expected = {v: {"expr": smoothed.decision.video(o["expr"]).argmax(1), "va": smooth(o["va"], "mean", 5),
                    "au": o["au"] >= 0.5} for v, o in outputs.items()}  # fmt: skip
    assert any(
        (e["expr"] != o["expr"].argmax(1)).any() for e, o in zip(expected.values(), outputs.values(), strict=True)
    )
    for line, (v, f) in zip(lines[1:], images, strict=True):
        fields = line.split(",")
        assert fields[0] == f"{v}/{f:05d}.jpg" and len(fields) == 16
        e = {t: x[f - 1] for t, x in expected[v].items()}
        np.testing.assert_allclose([float(x) for x in fields[1:3]], e["va"], atol=6e-5)
        assert int(fields[3]) == int(e["expr"])
        assert [int(x) for x in fields[4:]] == e["au"].astype(int).tolist()
    assert validate_submission(out, read_example(example, task="mtl"), task="mtl") == []
    bad = tmp_path / "bad.txt"
    bad.write_text(out.read_text().replace(lines[2], lines[2].rsplit(",", 13)[0] + ",9," + ",".join(["2"] * 12)))
    problems = validate_submission(bad, read_example(example, task="mtl"), task="mtl")
    assert any("bad.txt:3: expression '9'" in p for p in problems) and any(
        "AU1 '2' is not 0 or 1" in p for p in problems
    )

    missing = tmp_path / "missing.txt"
    missing.write_text(f"image,valence,arousal,expression,aus\n{videos[0]}/00001.jpg\nzz_left/00007.jpg\n")
    past = tmp_path / "past.txt"
    n = int(store.num_frames[store.names.index(videos[0])])
    past.write_text(f"image,valence,arousal,expression,aus\n{videos[0]}/00001.jpg\n{videos[0]}/{n + 1:05d}.jpg\n")
    from expr.runs.submission import SubmissionError, mtl_frames

    with pytest.raises(SubmissionError, match=r"missing.txt:3: zz_left/00007.jpg is not in .*--test-names"):
        mtl_frames(mtl_run, None, read_example(missing, task="mtl"), device="cpu")
    values, _ = mtl_frames(mtl_run, None, read_example(past, task="mtl"), device="cpu")  # as for the other tasks:
    assert f"past.txt:3: {videos[0]}/{n + 1:05d}.jpg, {videos[0]} has {n}" in capsys.readouterr().err  # said, and
    assert len(values[videos[0]]) == n  # the line takes the last frame's values (write_submission clamps)
    with pytest.raises(SubmissionError, match=r"trained expr, not va, au; --task mtl needs"):
        mtl_frames(small_run["run_dir"], None, read_example(example, task="mtl"), device="cpu")
