"""The local writer lock, one writer per root: an exclusive, non-blocking ``flock`` on ``logs/writer.lock``.

The kernel drops the lock when the process dies, so a crash never leaves a stale lock behind. A
``fork()`` child (a DataLoader worker, a multiprocessing pool) would share the locked descriptor and
keep the lock alive after the trainer is killed, so children close their copy at once (closing, not
unlocking: the parent's lock stays). Exec'd children never get it: Python's descriptors are not
inheritable.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import weakref
from pathlib import Path

from weightslab.errors import RootLockedError

_HELD: weakref.WeakSet[RootLock] = weakref.WeakSet()


def _close_in_child() -> None:
    for lock in list(_HELD):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


os.register_at_fork(after_in_child=_close_in_child)


class RootLock:
    """Holds the writer lock of one root until :meth:`release` (a :class:`~weightslab.storage.base.WriterLock`)."""

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.root = root
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another writer"
            os.close(fd)
            raise RootLockedError(self.root, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        _HELD.add(self)

    def held_elsewhere(self) -> bool:
        """True when another open file description holds the lock (a writer is running)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the shared lock if we got it
        return False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD.discard(self)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
