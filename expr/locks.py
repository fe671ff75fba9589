"""One writer at a time: an exclusive lock on a folder that a command writes (a run directory, a store being
prepared), held for as long as the command writes it.

The lock is ``flock`` on ``FOLDER/.lock``: the kernel releases it when the holder's process ends, however it ends
(a kill, a crash), so a stale lock never blocks the next run. The file also says who holds it (pid, host, since
when), for the message a second writer gets. The lock is as wide as the file system's ``flock``: every process of
one machine, and every machine where the shared file system supports it (NFSv4, Lustre with ``flock``); where it
is refused, the command goes on with a warning.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from pathlib import Path

logger = logging.getLogger("expr.locks")


class LockedError(RuntimeError):
    """Another process writes this folder now."""


class FolderLock:
    """``with FolderLock(folder, "training run"):`` or ``lock = FolderLock(...).acquire()`` ... ``lock.release()``."""

    def __init__(self, folder: str | Path, what: str, hint: str = "wait for it to finish, or stop it", beside=False):
        """``beside``: the lock file is ``.NAME.lock`` next to the folder (for a folder that is replaced whole, as a
        store is when it is assembled), not ``FOLDER/.lock``."""
        self.folder, self.what, self.hint = Path(folder), what, hint
        self.path = self.folder.with_name(f".{self.folder.name}.lock") if beside else self.folder / ".lock"
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockedError(
                f"{self.folder}: this {self.what} is being written by {holder} ({self.path}); {self.hint}. Two "
                f"writers at once would mix their files"
            ) from None
        except OSError as e:  # a file system without flock (some network mounts): go on, unprotected, and say so
            os.close(fd)
            logger.warning("%s: cannot lock %s (%s): nothing stops a second writer of this %s", self.folder, self.path,
                           e.strerror or e, self.what)  # fmt: skip
            return self
        try:
            os.ftruncate(fd, 0)
            when = time.strftime("%Y-%m-%d %H:%M:%S")
            os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {when}\n".encode(), 0)
        except OSError:
            pass  # the note of who holds it is for messages only; the lock holds without it
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["FolderLock", "LockedError"]
