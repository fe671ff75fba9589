import numpy as np
import pytest

from expr.config import ABAW_CLASSES
from expr.data.affwild2 import (
    AnnotationError,
    LayoutError,
    crop_frames,
    discover,
    read_annotation,
    read_test_names,
    video_name,
)

HEADER = ",".join(ABAW_CLASSES)


def write(path, text=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_read_annotation(tmp_path):
    f = write(tmp_path / "a.txt", HEADER + "\n0\n4\n-1\n7\n\n")
    assert read_annotation(f).tolist() == [0, 4, -1, 7]


@pytest.mark.parametrize(
    "text, where",
    [
        (HEADER + "\n0\nx\n", ":3:"),  # not an integer, on line 3
        (HEADER + "\n0\n8\n", ":3:"),  # out of range
        (HEADER + "\n0\n-2\n", ":3:"),
        ("Neutral,Anger\n0\n", ":1:"),  # wrong header
        ("", ":1:"),  # empty
    ],
)
def test_malformed_annotation_names_file_and_line(tmp_path, text, where):
    f = write(tmp_path / "bad.txt", text)
    with pytest.raises(AnnotationError, match=f"bad.txt{where}"):
        read_annotation(f)


def test_video_name_and_crop_frames(tmp_path):
    assert video_name("12-24-1920x1080_left") == "12-24-1920x1080" and video_name("video5") == "video5"
    for n in (1, 2, 5):
        write(tmp_path / "c" / f"{n:05d}.jpg")
    write(tmp_path / "c" / "notes.txt")
    assert crop_frames(tmp_path / "c").tolist() == [0, 1, 4]


def make_tree(root, edition="EXPR_Classification_Challenge"):
    write(root / edition / "Train_Set" / "v1.txt", HEADER + "\n0\n")
    write(root / edition / "Train_Set" / "pair_left.txt", HEADER + "\n1\n")
    write(root / edition / "Validation_Set" / "pair_right.txt", HEADER + "\n2\n")
    write(root / edition / "Validation_Set" / "lost.txt", HEADER + "\n2\n")
    write(root / "raw" / "batch1" / "v1.mp4")
    write(root / "raw" / "pair.avi")
    write(root / "raw" / "t1.mp4")
    for name, crop_root in (
        ("v1", "cropped_aligned"),
        ("pair_left", "cropped_aligned"),
        ("pair_right", "cropped_aligned_new_50_vids"),
        ("t1", "cropped_aligned"),
    ):
        write(root / crop_root / name / "00001.jpg")


@pytest.mark.parametrize("edition", ["EXPR_Classification_Challenge", "EXPR_Recognition_Challenge"])
def test_discover_layout(tmp_path, edition):
    make_tree(tmp_path, edition)
    layout = discover(tmp_path, test_names=["t1.mp4", ""])
    entries = {e.name: e for e in layout.entries}
    assert {e.split for e in layout.entries} == {"train", "validation", "test"}
    assert entries["pair_left"].video == entries["pair_right"].video == tmp_path / "raw" / "pair.avi"
    assert entries["pair_right"].crop_dir == tmp_path / "cropped_aligned_new_50_vids" / "pair_right"
    assert entries["v1"].video == tmp_path / "raw" / "batch1" / "v1.mp4"
    assert entries["lost"].video is None and entries["lost"].crop_dir is None
    assert entries["t1"].annotation is None and entries["t1"].split == "test"
    summary = layout.summary()
    assert edition in summary and "cropped_aligned_new_50_vids" in summary and "lost" in summary


def test_not_a_layout(tmp_path):
    with pytest.raises(LayoutError, match="annotation folder"):
        discover(tmp_path)
    with pytest.raises(LayoutError, match="not a folder"):
        discover(tmp_path / "missing")


def test_read_test_names(tmp_path):
    f = write(tmp_path / "names.txt", "a.mp4\n\nb\n c.avi \n")
    assert read_test_names(f) == ["a", "b", "c"]
    assert np.array_equal(read_annotation(write(tmp_path / "x.txt", HEADER + "\n")), np.zeros(0))


def test_discover_reads_every_task_folder_and_a_tree_without_expressions(tmp_path):
    make_tree(tmp_path)
    write(tmp_path / "VA_Estimation_Challenge" / "Train_Set" / "t1.txt", "valence,arousal\n0,0\n")
    write(tmp_path / "AU_Detection_Challenge" / "Validation_Set" / "only_au.txt", "x\n")
    layout = discover(tmp_path, test_names=["t1"])
    entries = {e.name: e for e in layout.entries}
    assert entries["t1"].split == "test" and entries["t1"].tasks["va"][0] == "train"
    assert entries["only_au"].annotation is None and entries["only_au"].split == "validation"
    assert entries["only_au"].tasks["au"][0] == "validation" and "au annotations: 1 tracks" in layout.summary()
    with pytest.raises(LayoutError, match="v1 is a test video and has an expression annotation"):
        discover(tmp_path, test_names=["v1"])
    va_only = tmp_path / "va_only"
    write(va_only / "VA_Set" / "Validation_Set" / "x.txt", "valence,arousal\n0,0\n")
    layout = discover(va_only)
    assert layout.annotation_dir is None and [e.name for e in layout.entries] == ["x"]
