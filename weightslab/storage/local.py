"""The local backend of the storage seam: a POSIX file system.

The layers above talk to a :class:`~weightslab.storage.base.Storage`; they never call ``os``
themselves. :class:`LocalStorage` writes
atomically: a temporary file in the destination folder, flush, fsync, rename over the destination,
then fsync of the folder, so a crash leaves either the old file or the new one, never half of one.
The xxh3_128 checksum is computed on the bytes as they are written (no second read).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from weightslab.errors import FileChangedError
from weightslab.storage.base import TMP_MARKER, HashingWriter, WrittenFile
from weightslab.storage.local_lock import RootLock
from weightslab.storage.writeback import WINDOW, WritebackFile
from weightslab.util.digests import Xxh3Stream, block_digests

READ_CHUNK = 8 << 20


def fsync(path: str | os.PathLike[str]) -> None:
    """fsync a file, or a folder (which makes a rename or unlink inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_threads() -> int:
    """How many threads hash the blocks of one file: the cores this process may run on, at most 8
    (beyond that one file's hashing is bound by memory bandwidth)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def tmp_path_for(path: Path) -> Path:
    """A unique temporary name beside ``path`` (same folder, so the final rename stays atomic)."""
    return path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}")


class LocalStorage:
    """A POSIX filesystem with durable atomic writes."""

    def __init__(
        self, *, durable: bool = True, buffer_size: int = 1 << 20, writeback_window: int = WINDOW
    ) -> None:
        self.durable = durable
        self.buffer_size = buffer_size
        self.writeback_window = writeback_window

    def write_atomic(self, path: Path, produce: Callable[[HashingWriter], None]) -> WrittenFile:
        """Write ``path`` atomically; ``produce`` writes the content into the writer it is given."""
        tmp = tmp_path_for(path)
        writer: HashingWriter | None = None
        try:
            # large tensor records bypass the buffer; small pickle records are coalesced
            with open(tmp, "wb", buffering=self.buffer_size) as raw:
                # a durable write starts the disk early (the fsync then waits for the last window only)
                sink = WritebackFile(raw, window=self.writeback_window) if self.durable else raw
                writer = HashingWriter(sink)  # type: ignore[arg-type]
                produce(writer)
                writer.flush()
                writer.raise_error()
                if self.durable:
                    os.fsync(raw.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        finally:
            if writer is not None:
                writer.close()
        if self.durable:
            fsync(path.parent)
        return WrittenFile(path=path, bytes=writer.bytes, xxh3_128=writer.hexdigest(), blocks=writer.blocks())

    def write_bytes_atomic(self, path: Path, data: bytes) -> WrittenFile:
        """:meth:`write_atomic` of bytes already in memory."""

        def produce(writer: HashingWriter) -> None:
            writer.write(data)

        return self.write_atomic(path, produce)

    def create_exclusive(self, path: Path, data: bytes) -> bool:
        """Create ``path`` with ``data`` unless it exists (``O_CREAT | O_EXCL``); False when it did.

        The name is taken atomically by the kernel; if writing the content then fails, the file is
        removed again so that no half record is left behind under the name.
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        os.close(fd)
        if self.durable:
            fsync(path.parent)
        return True

    def append_line(self, path: Path, line: bytes) -> None:
        """Append ``line`` whole or not at all (see :func:`append_whole_line`), fsynced when durable."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            append_whole_line(fd, line)
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def replace(self, source: Path, target: Path) -> None:
        """Rename ``source`` over ``target``; the folder is fsynced so the rename survives a crash."""
        os.replace(source, target)
        if self.durable:
            fsync(target.parent)

    def rename_aside(self, path: Path) -> Path | None:
        """Rename ``path`` to a temporary name beside it (a crash leftover, should nothing remove it);
        returns that name, or None when ``path`` is not there. Not fsynced: it is on the way out."""
        aside = tmp_path_for(path)
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            return None
        return aside

    def remove_dir(self, path: Path) -> None:
        """Remove an empty folder; OSError (ENOTEMPTY) when it holds anything."""
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(path)

    def lock(self, root: Path, path: Path) -> RootLock:
        """An flock on ``path``: the kernel drops it when the process dies (no stale locks)."""
        return RootLock(path, root)

    def read_bytes(self, path: Path) -> bytes:
        return path.read_bytes()

    def local_file(self, path: Path) -> Path:
        """``path`` itself: it is already a local file (the caller opens it and sees any error)."""
        return path

    def files_under(self, path: Path) -> Iterator[Path]:
        for folder, _dirs, names in os.walk(path):
            for name in sorted(names):
                yield Path(folder) / name

    def is_file(self, path: Path) -> bool:
        return path.is_file()

    def is_dir(self, path: Path) -> bool:
        return path.is_dir()

    def mtime(self, path: Path) -> float:
        return path.stat().st_mtime

    def checksum(self, path: Path) -> tuple[int, str]:
        """(size, xxh3_128) of the file as it is on disk now."""
        h = Xxh3Stream()  # libxxhash: faster than the xxhash module, and the GIL is released
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return 0, h.hexdigest()
            # hashing the page cache through a mapping avoids copying every byte into a read buffer
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                with contextlib.suppress(AttributeError, OSError):
                    mapped.madvise(mmap.MADV_SEQUENTIAL)
                view = memoryview(mapped)
                try:
                    for start in range(0, size, READ_CHUNK):
                        h.update(view[start : start + READ_CHUNK])
                finally:
                    view.release()
        return size, h.hexdigest()

    def block_checksums(self, path: Path, block_bytes: int) -> tuple[int, list[str]]:
        """(size, the block digest of each ``block_bytes`` block) of the file as it is on disk now.

        The blocks are hashed on every core this process may use (up to 8), through one mapping of
        the file: what :attr:`CheckpointEntry.blocks` lets a reader do instead of one sequential
        :meth:`checksum`.
        """
        with self.mapped(path) as view:
            return view.nbytes, block_digests(view, block_bytes, hash_threads())

    @contextlib.contextmanager
    def mapped(
        self, path: Path, size: int | None = None, *, identity: tuple[int, int] | None = None
    ) -> Iterator[memoryview]:
        """A read-only map of the first ``size`` bytes of the file at ``path`` (all of it as it
        measures when it is opened, without ``size``: a file that grows meanwhile is seen as it was
        measured), as a memoryview released (and unmapped) on exit. With ``identity`` (see
        :meth:`identity`), FileChangedError when the file opened is another one (replaced since)."""
        with open(path, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if identity is not None and (st.st_dev, st.st_ino) != identity:
                raise FileChangedError(f"{path} was replaced while it was read; read it again")
            length = st.st_size if size is None else size
            if length == 0:  # an empty file cannot be mapped
                yield memoryview(b"")
                return
            with mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ) as m:
                view = memoryview(m)
                try:
                    yield view
                finally:
                    view.release()

    def identity(self, path: Path) -> tuple[int, int]:
        """(device, inode) of the file at ``path``: the same while it is not replaced."""
        st = os.stat(path)
        return st.st_dev, st.st_ino

    def hash_threads(self) -> int:
        """How many threads :meth:`block_checksums` hashes on."""
        return hash_threads()

    def exists(self, path: Path) -> bool:
        return path.exists()

    def listdir(self, path: Path) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        if self.durable:
            with contextlib.suppress(FileNotFoundError):
                fsync(path.parent)

    def makedirs(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def size(self, path: Path) -> int:
        return path.stat().st_size

    def read_versioned(self, path: Path) -> tuple[bytes, str | None]:
        """The content of ``path``; no version (the root's flock keeps one writer)."""
        return self.read_bytes(path), None

    def write_if_version(self, path: Path, data: bytes, version: str | None) -> str | bool | None:
        """Write ``path`` atomically whatever its version (the flock keeps one writer); returns None."""
        self.write_bytes_atomic(path, data)
        return None

    def dcp_writer(self, path: Path) -> Any:
        """DCP's FileSystemWriter into ``path`` (each file fsynced when durable)."""
        from torch.distributed.checkpoint.filesystem import FileSystemWriter

        return FileSystemWriter(path, single_file_per_rank=True, sync_files=self.durable, overwrite=True)

    def dcp_reader(self, path: Path) -> Any:
        """DCP's FileSystemReader of ``path``."""
        from torch.distributed.checkpoint.filesystem import FileSystemReader

        return FileSystemReader(path)


def append_whole_line(fd: int, line: bytes) -> None:
    """Append ``line`` to the file open at ``fd`` whole or not at all.

    On a full disk ``os.write`` may write part of a line; a later event would then be glued to the
    half line and both lost to the readers. So: start on a fresh line when the file does not end
    with a newline (a torn write of an earlier process), write in a loop, and on failure cut the file
    back to where this line started.
    """
    start = os.fstat(fd).st_size
    if start and os.pread(fd, 1, start - 1) != b"\n":
        line = b"\n" + line
    written = 0
    try:
        while written < len(line):
            n = os.write(fd, line[written:])
            if n <= 0:
                raise OSError(errno.ENOSPC, "short write to the journal")
            written += n
    except OSError:
        if written:
            with contextlib.suppress(OSError):  # at worst a torn line stays, which readers skip
                os.ftruncate(fd, start)
        raise


__all__ = ["HashingWriter", "LocalStorage", "WrittenFile", "append_whole_line", "fsync", "tmp_path_for"]
