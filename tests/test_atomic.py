"""The one atomic-write helper: a file or folder appears complete under its final name, or not at all."""

import pytest

from expr.atomic import _sweep, atomic_path, write_text


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


KILLED_WRITER = """
import os, sys
from pathlib import Path
import expr.atomic as atomic
out, when = Path(sys.argv[1]), sys.argv[2]
if when == "after-swap":  # killed right after the new folder is in place, before the old one is removed
    real = atomic._exchange
    atomic._exchange = lambda a, b: real(a, b) and os._exit(9)
if when == "between-renames":  # a system that cannot swap: killed between setting the old aside and the new in
    atomic._exchange = lambda a, b: False
    real_replace = os.replace
    def replace(a, b):
        real_replace(a, b)
        if ".old-" in str(b):
            os._exit(9)
    os.replace = replace
with atomic.atomic_path(out) as tmp:
    tmp.mkdir()
    (tmp / "model.safetensors").write_text("new")
    if when == "while-writing":
        os._exit(9)
"""


@pytest.mark.parametrize("when", ["while-writing", "after-swap", "between-renames"])
def test_a_writer_killed_while_replacing_a_folder_never_loses_it(tmp_path, when):
    """An export replaced by a writer that is killed at any moment: the folder is the old one or the new one, whole,
    and the next writer removes what the killed one left."""
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "export"
    out.mkdir()
    (out / "model.safetensors").write_text("old")
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out), when], cwd=ROOT)
    assert killed.returncode == 9
    right_after = (out / "model.safetensors").read_text() if out.exists() else None
    assert right_after == {"while-writing": "old", "after-swap": "new", "between-renames": None}[when]
    _sweep(out)  # what the next writer of the folder does first
    assert (out / "model.safetensors").read_text() == ("new" if when == "after-swap" else "old")
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary left beside it
