"""Bytes to durable storage.

The manager talks to a :class:`Storage`; it never calls ``os`` itself. :class:`LocalStorage` writes
atomically: a temporary file in the destination folder, flush, fsync, rename over the destination,
then fsync of the folder, so a crash leaves either the old file or the new one, never half of one.
The xxh3_128 checksum is computed on the bytes as they are written (no second read).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import xxhash

from weightslab.format.layout import TMP_MARKER

READ_CHUNK = 8 << 20


@dataclass(frozen=True)
class WrittenFile:
    """What a durable write produced."""

    path: Path
    bytes: int
    xxh3_128: str


class HashingWriter:
    """A binary file-like object that writes through to ``raw`` and hashes what passes.

    A write error is sticky and never raised from ``write``: torch's zip writer calls ``write`` from
    C++, and an exception unwinding through it makes its destructor write again and abort the whole
    process. The first error is kept in :attr:`error`, later writes are dropped, and the caller
    raises it once the serialiser has returned (``write_atomic`` does).
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = xxhash.xxh3_128()
        self.bytes = 0
        self.error: OSError | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        if self.error is None:
            try:
                self._raw.write(view)
            except OSError as exc:
                self.error = exc
        self._hash.update(view)
        self.bytes += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        if self.error is None:
            try:
                self._raw.flush()
            except OSError as exc:
                self.error = exc

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    # torch.save checks for these on file-like objects
    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.bytes


class Storage(Protocol):
    """The few operations the manager needs from a storage backend."""

    def write_atomic(self, path: Path, produce: Callable[[HashingWriter], None]) -> WrittenFile: ...

    def read_bytes(self, path: Path) -> bytes: ...

    def checksum(self, path: Path) -> tuple[int, str]: ...

    def exists(self, path: Path) -> bool: ...

    def listdir(self, path: Path) -> list[str]: ...

    def remove(self, path: Path) -> None: ...

    def makedirs(self, path: Path) -> None: ...


def fsync(path: str | os.PathLike[str]) -> None:
    """fsync a file, or a folder (which makes a rename or unlink inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}")


class LocalStorage:
    """A POSIX filesystem with durable atomic writes."""

    def __init__(self, *, durable: bool = True, buffer_size: int = 1 << 20) -> None:
        self.durable = durable
        self.buffer_size = buffer_size

    def write_atomic(self, path: Path, produce: Callable[[HashingWriter], None]) -> WrittenFile:
        """Write ``path`` atomically; ``produce`` writes the content into the writer it is given."""
        tmp = tmp_path_for(path)
        try:
            # large tensor records bypass the buffer; small pickle records are coalesced
            with open(tmp, "wb", buffering=self.buffer_size) as raw:
                writer = HashingWriter(raw)
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
        if self.durable:
            fsync(path.parent)
        return WrittenFile(path=path, bytes=writer.bytes, xxh3_128=writer.hexdigest())

    def write_bytes_atomic(self, path: Path, data: bytes) -> WrittenFile:
        def produce(writer: HashingWriter) -> None:
            writer.write(data)

        return self.write_atomic(path, produce)

    def read_bytes(self, path: Path) -> bytes:
        return path.read_bytes()

    def checksum(self, path: Path) -> tuple[int, str]:
        """(size, xxh3_128) of the file as it is on disk now."""
        h = xxhash.xxh3_128()
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
