"""The one atomic-write helper: a file or folder appears complete under its final name, or not at all."""

import pytest

from expr.atomic import atomic_path, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "final.json"
    write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.json"]


def test_a_folder_is_replaced_whole(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.bin").write_text("x")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "model.safetensors").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_the_temporary_keeps_the_suffix_and_the_first_copy_can_win(tmp_path):
    path = tmp_path / "index"
    with atomic_path(path, replace=False) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("first")
    with atomic_path(path, replace=False) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("second")
    assert (path / "a").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
    with atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"png")
