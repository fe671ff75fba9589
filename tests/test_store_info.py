"""A store tells what it holds (``expr store info``) and says when it is damaged: a truncated or changed data file is
named when the store is opened (sizes) or verified (``--verify``: SHA-256 checksums recorded at write time)."""

import json

import pytest

from expr.config import ABAW_CLASSES
from expr.data.demo import generate_videos
from expr.data.store import FrameStore, StoreError, write_store
from expr.store_info import main


@pytest.fixture
def store(tmp_path):
    return write_store(tmp_path / "store", generate_videos(4, seed=1), {"classes": list(ABAW_CLASSES)})


def test_info_lists_sets_videos_and_files(store, capsys):
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "format 2" in out and "videos: 4" in out
    assert "clip" in out and "visual" in out and "512" in out and "wav2vec2" in out and "768" in out
    assert "defaults: visual clip, audio wav2vec2" in out and "data files: 4" in out


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
    assert set(files) == arrow and {"sets/clip/data-00000-of-00001.arrow", "frames/data-00000-of-00001.arrow"} <= arrow
    assert all(len(v["sha256"]) == 64 and v["bytes"] == (store / f).stat().st_size for f, v in files.items())
