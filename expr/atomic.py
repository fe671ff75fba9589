"""Atomic writes: a file or folder appears under its final name complete, or not at all.

    with atomic_path(run_dir / "final.json") as tmp:
        tmp.write_text(text)

Everything expr writes that another process or a later run reads (heads, reports, run summaries, window indexes,
extracted videos, feature stores, plots) goes through :func:`atomic_path`, so a run killed mid-write never leaves a
half-written file that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write (a file, or a folder the caller creates); renamed onto ``path`` when
    the block ends without an error, removed when it raises. The temporary name keeps ``path``'s suffix (some writers
    choose the format by it). A folder already at ``path`` is replaced; with ``replace=False`` an existing ``path`` is
    kept and the new copy dropped (two processes building the same cache: the first one wins)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    _remove(tmp)
    try:
        yield tmp
        if not replace and path.exists():
            _remove(tmp)
            return
        if replace and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        try:
            os.replace(tmp, path)
        except OSError:
            if replace or not path.exists():
                raise
            _remove(tmp)  # another process put its copy there first
    except BaseException:
        _remove(tmp)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
