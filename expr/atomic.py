"""Atomic writes: a file or folder appears under its final name complete, or not at all.

    with atomic_path(run_dir / "final.json") as tmp:
        tmp.write_text(text)

Everything expr writes that another process or a later run reads (heads, reports, run summaries, window indexes,
extracted videos, feature stores, plots) goes through :func:`atomic_path`, so a run killed mid-write never leaves a
half-written file that looks finished.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


HOST = socket.gethostname().replace("-", "_")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _sweep(path: Path) -> None:
    """Remove the temporaries of ``path`` that writers on this host left when they were killed (their process is
    gone); put back an old version set aside by a writer killed between its two renames (where the system cannot
    swap two folders at once), unless a new one is in place."""
    for kind in ("tmp", "old"):
        for p in path.parent.glob(f".{path.stem}.{kind}-{HOST}-*"):
            pid = p.name[len(f".{path.stem}.{kind}-{HOST}-") :].removesuffix(path.suffix)
            if not pid.isdigit() or _alive(int(pid)):
                continue
            if kind == "old" and not path.exists():
                os.replace(p, path)
            else:
                _remove(p)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextlib.contextmanager
def atomic_path(path: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write (a file, or a folder the caller creates); renamed onto ``path`` when
    the block ends without an error, removed when it raises. The temporary name keeps ``path``'s suffix (some writers
    choose the format by it). A folder already at ``path`` is replaced, and stays whole until the new one is complete
    (the two are swapped in one step); with ``replace=False`` an existing ``path`` is kept and the new copy dropped
    (two processes building the same cache: the first one wins). Temporaries that killed writers left beside
    ``path`` are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path)
    tmp = path.with_name(f".{path.stem}.tmp-{HOST}-{os.getpid()}{path.suffix}")
    _remove(tmp)
    try:
        yield tmp
        if not replace and path.exists():
            _remove(tmp)
            return
        if replace and path.is_dir() and not path.is_symlink() and tmp.exists():
            if _exchange(tmp, path):  # the new folder at path, the old one at tmp
                _remove(tmp)
                return
            old = path.with_name(f".{path.stem}.old-{HOST}-{os.getpid()}{path.suffix}")
            os.replace(path, old)  # a kill from here to the next line: the next writer puts the old one back
            os.replace(tmp, path)
            _remove(old)
            return
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
