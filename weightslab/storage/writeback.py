"""Early writeback: start the disk writing a file's first bytes while its last ones are produced.

A durable save ends with an fsync. Without help, the kernel keeps every page of a 1 GB checkpoint
dirty in memory (the background threshold is 10% of RAM) and the fsync then writes all of it: the
serialisation, the hash and the copy into the page cache all happen before the disk starts. Asking
the kernel to start writing each window as soon as it is in the page cache
(``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which only queues the I/O) overlaps the disk with the
rest of the save, so the final fsync waits for little more than the last window.

``sync_file_range`` is Linux's; elsewhere (or without libc through ctypes) :class:`WritebackFile`
only counts, and the fsync does all the work as before. Durability never depends on it: the file
is fsynced before its rename either way.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, BinaryIO

WINDOW = 32 << 20
"""Bytes written between two writeback requests."""

_SYNC_FILE_RANGE_WRITE = 2


def _load() -> Any:
    if not sys.platform.startswith("linux"):
        return None  # pragma: no cover - other systems
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # pragma: no cover - unusual libc
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _load()
AVAILABLE = _SYNC_FILE_RANGE is not None
"""Whether early writeback is used on this system."""


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Queue the dirty pages of ``[offset, offset + length)`` of ``fd`` for writing; never waits for them.

    Returns False when the system cannot (the caller's fsync then writes them). Errors are not
    raised: a page that fails to write here fails the fsync, which the caller checks.
    """
    if _SYNC_FILE_RANGE is None or length <= 0:
        return False
    return bool(_SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE) == 0)


class WritebackFile:
    """A write-only wrapper of a buffered file that starts writeback every :data:`WINDOW` bytes.

    The window that is still in the buffered file's own buffer is not dirty in the kernel yet; it is
    covered by the next request or by the fsync.
    """

    def __init__(self, raw: BinaryIO, *, window: int = WINDOW) -> None:
        self._raw = raw
        self._fd = raw.fileno()
        self._window = window
        self._written = 0
        self._started = 0
        self._enabled = AVAILABLE

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` whole (a short write raises OSError), then maybe start writeback."""
        n = self._raw.write(data)
        self._written += n
        if self._enabled and self._written - self._started >= self._window:
            self._enabled = start_writeback(self._fd, self._started, self._written - self._started)
            self._started = self._written
        return n

    def flush(self) -> None:
        self._raw.flush()

    def fileno(self) -> int:
        return self._fd


__all__ = ["AVAILABLE", "WINDOW", "WritebackFile", "start_writeback"]
