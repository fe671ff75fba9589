"""A store tells what it holds (``expr store info``) and says when it is damaged: a truncated or changed data file is
named when the store is opened (sizes) or verified (``--verify``: SHA-256 checksums recorded at write time)."""

import json

import pytest

from expr.cli.store import main
from expr.config import ABAW_CLASSES
from expr.data.demo import generate_videos
from expr.data.store import FrameStore, StoreError, write_store


@pytest.fixture
def store(tmp_path):
    return write_store(tmp_path / "store", generate_videos(4, seed=1), {"classes": list(ABAW_CLASSES)})


def test_info_lists_sets_videos_and_files(store, capsys):
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "format 2" in out and "videos: 4" in out
    assert "clip" in out and "visual" in out and "512" in out and "wav2vec2" in out and "768" in out
    assert "defaults: visual clip, audio wav2vec2" in out and "data files: 12" in out  # 4 tables + their 8 records


def test_a_truncated_data_file_is_named_when_the_store_opens(store):
    data = store / "sets" / "clip" / "data-00000-of-00001.arrow"
    blob = data.read_bytes()
    data.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(StoreError, match="damaged store: sets/clip/data-00000-of-00001.arrow has .* bytes"):
        FrameStore(store)


def test_verify_finds_a_changed_byte_and_passes_an_intact_store(store, capsys):
    assert main(["info", str(store), "--verify"]) == 0
    assert "verified: every data file matches" in capsys.readouterr().out
    data = store / "sets" / "wav2vec2" / "data-00000-of-00001.arrow"
    blob = bytearray(data.read_bytes())
    blob[-100] ^= 0xFF  # same size: only the checksum sees it
    data.write_bytes(bytes(blob))
    assert main(["info", str(store), "--verify"]) == 1
    assert "sets/wav2vec2/data-00000-of-00001.arrow: SHA-256 differs" in capsys.readouterr().err


def test_info_of_a_missing_store_is_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "not a feature store" in err and err.count("\n") == 1


def test_header_records_every_data_file(store):
    from expr.data.store import data_files

    (store / "windows" / "v2-train").mkdir(parents=True)
    (store / "windows" / "v2-train" / "data-00000-of-00001.arrow").write_bytes(b"a cache, not data")
    assert not any(f.startswith("windows") for f in data_files(store))
    files = json.loads((store / "store.json").read_text())["files"]
    arrow = {str(p.relative_to(store)) for p in store.rglob("*.arrow") if p.parts[-3] != "windows"}
    records = {str(p.relative_to(store)) for p in store.rglob("*.json") if p.name != "store.json"}
    assert set(files) == arrow | records  # the tables and the records that datasets reads them with
    assert {"sets/clip/data-00000-of-00001.arrow", "frames/data-00000-of-00001.arrow"} <= arrow
    assert {"frames/state.json", "sets/clip/dataset_info.json"} <= records
    assert all(len(v["sha256"]) == 64 and v["bytes"] == (store / f).stat().st_size for f, v in files.items())


def _edit_header(store, edit) -> None:
    header = json.loads((store / "store.json").read_text())
    edit(header)
    (store / "store.json").write_text(json.dumps(header))


def test_a_store_record_that_does_not_match_its_data_is_refused(store, caplog):
    """store.json is checked against the data when the store opens: a changed width (512 frames of 512 values read as
    1024 rows of 256), shifted audio counts, a broken or incomplete record: each one line naming the store."""
    import shutil

    for edit, said in [
        (
            lambda h: h["sets"]["clip"].update(dim=256),
            "feature set 'clip' holds rows of 512 values, store.json says 256",
        ),
        (lambda h: h["sets"]["wav2vec2"].update(counts=h["sets"]["wav2vec2"]["counts"][:-1]), "audio set 'wav2vec2'"),
        (lambda h: h.pop("sets"), "no 'sets' key"),
        (lambda h: h.pop("classes"), "no 'classes' key"),
    ]:
        copy = shutil.copytree(store, store.parent / "copy", dirs_exist_ok=False)
        _edit_header(copy, edit)
        with pytest.raises(StoreError, match=said):
            FrameStore(copy)
        shutil.rmtree(copy)
    (store / "store.json").write_text('{"format_version": 2, "classes": [')  # cut short
    with pytest.raises(StoreError, match=r"store.json: damaged store record, not JSON"):
        FrameStore(store)


def test_a_store_without_its_file_record_says_so(store, caplog):
    _edit_header(store, lambda h: h.pop("files"))
    with caplog.at_level("WARNING", logger="expr.store"):
        FrameStore(store)
    assert "records no data files: a truncated or replaced file would go unnoticed" in caplog.text
    assert main(["info", str(store), "--verify"]) == 1


def test_labels_outside_the_classes_are_named_when_the_store_opens(tmp_path):
    videos = generate_videos(2, seed=3)
    videos[1].labels[7] = 11  # 8 classes: a damaged or foreign label column
    store = write_store(tmp_path / "store", videos, {"classes": list(ABAW_CLASSES)})
    with pytest.raises(StoreError, match=rf"frame 7 of video {videos[1].name} has label 11, not one of its 8 classes"):
        FrameStore(store)


def test_verify_reports_every_damaged_file_before_reading_any(store, capsys):
    """--verify compares sizes and checksums before it parses anything: the damage it exists to report (a record
    file cut short, a table with garbage) is listed, all of it, instead of stopping it."""
    (store / "videos" / "state.json").write_text("{not json")
    table = store / "frames" / "data-00000-of-00001.arrow"
    table.write_bytes(b"\xff" * table.stat().st_size)  # same size, garbage
    assert main(["info", str(store), "--verify"]) == 1
    err = capsys.readouterr().err
    assert "videos/state.json: " in err and "frames/data-00000-of-00001.arrow: SHA-256 differs" in err
    (store / "store.json").write_text("[]")
    assert main(["info", str(store), "--verify"]) == 2
    assert "damaged store record (a JSON list, not an object)" in capsys.readouterr().err


def test_a_damaged_table_record_is_one_line_naming_the_store(store):
    record = store / "videos" / "state.json"
    record.write_bytes(b"{" + b"x" * (record.stat().st_size - 1))  # same size: only parsing it finds the damage
    with pytest.raises(StoreError, match=r"damaged store: its frames or videos table does not load .*--verify"):
        FrameStore(store)


def test_damaged_head_weights_are_one_line_naming_the_file(small_run, tmp_path, capsys):
    import shutil

    from expr.cli.evaluate import main as evaluate_main

    run = shutil.copytree(small_run["run_dir"], tmp_path / "run")
    weights = run / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert evaluate_main([str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{weights}: damaged head weights" in err and "export-head" in err and "Traceback" not in err
