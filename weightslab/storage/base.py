"""The storage seam: every byte of a checkpoint root goes through a :class:`Storage`.

The manager, the recovery rules, the journal and the readers above them name files by
:class:`~pathlib.Path` but never open, list, rename or delete one themselves; a backend does. Today
there is :class:`~weightslab.storage.local.LocalStorage` (a POSIX file system); an object store needs
the same few operations, which is why the list is short and each one says what it guarantees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from weightslab.util.digests import BLOCK_BYTES, FileHasher, as_bytes, releases_gil

if TYPE_CHECKING:  # imported where a hash thread starts: the read-only commands never start one
    from concurrent.futures import ThreadPoolExecutor

TMP_MARKER = ".tmp-"
"""In the name of every temporary file a write leaves until its rename (a crash leftover once found)."""


@dataclass(frozen=True)
class WrittenFile:
    """What a durable write produced: where, how many bytes, their xxh3-128 and block digests.

    ``blocks``: the digest of each ``block_bytes`` block (see :class:`~weightslab.util.digests.FileHasher`),
    empty where the writer did not compute them.
    """

    path: Path
    bytes: int
    xxh3_128: str
    blocks: tuple[str, ...] = ()
    block_bytes: int = BLOCK_BYTES


PARALLEL_HASH_MIN = 1 << 20
"""Writes at least this large are hashed on a second thread while the calling thread writes them."""


class HashingWriter:
    """A binary file-like object that writes through to ``raw`` and hashes what passes.

    A write error is sticky and never raised from ``write``: torch's zip writer calls ``write`` from
    C++, and an exception unwinding through it makes its destructor write again and abort the whole
    process. The first error is kept in :attr:`error`, later writes are dropped, and the caller
    raises it once the serialiser has returned (``write_atomic`` does).

    A large write (tensor storages: :data:`PARALLEL_HASH_MIN` bytes or more) is hashed on a helper
    thread while this thread passes it to ``raw``: both the hash (libxxhash, see
    :mod:`weightslab.util.digests`) and the write syscall release the GIL, so the hash costs no time
    on the save's path when a core is free. ``write`` waits for both before it returns, because
    torch's buffer is only valid during the call. Call :meth:`close` when done (the helper thread
    also ends when the writer is garbage collected).
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = FileHasher()
        self._pool: ThreadPoolExecutor | None = None
        self._hash_failure: BaseException | None = None
        self.bytes = 0
        self.error: OSError | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Pass ``data`` on and hash it; returns its length even after an error (see the class)."""
        view = as_bytes(data)
        pending = None
        if view.nbytes >= PARALLEL_HASH_MIN and releases_gil() and self._hash_failure is None:
            try:
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weightslab-hash")
                pending = self._pool.submit(self._hash.update, view)
            except Exception:  # no new thread at interpreter exit (an atexit flush): hash it here
                pending = None
        if self.error is None:
            try:
                self._raw.write(view)
            except OSError as exc:
                self.error = exc
        try:
            if pending is None:
                self._hash.update(view)
            else:
                pending.result()
        except BaseException as exc:  # kept like a write error: never raised through torch's C++
            self._hash_failure = exc
        self.bytes += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        """Flush ``raw``; an error is kept like a write error."""
        if self.error is None:
            try:
                self._raw.flush()
            except OSError as exc:
                self.error = exc

    def raise_error(self) -> None:
        """Raise the first write or flush error (or a failure of the hash), if there was one."""
        if self.error is not None:
            raise self.error
        if self._hash_failure is not None:
            raise self._hash_failure

    def hexdigest(self) -> str:
        """The xxh3-128 of every byte written so far."""
        if self._hash_failure is not None:
            raise self._hash_failure
        return self._hash.hexdigest()

    def blocks(self) -> tuple[str, ...]:
        """The digest of each :data:`~weightslab.util.digests.BLOCK_BYTES` block written so far."""
        if self._hash_failure is not None:
            raise self._hash_failure
        return self._hash.blocks()

    def close(self) -> None:
        """End the hashing thread (the digest stays readable); idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    # torch.save checks for these on file-like objects
    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.bytes


class WriterLock(Protocol):
    """The one-writer-per-root guarantee: an flock locally, a lease on an object store."""

    def acquire(self) -> None:
        """Take the lock or raise RootLockedError naming the holder."""
        ...

    def release(self) -> None:
        """Give the lock up (a no-op when not held)."""
        ...

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock now (a writer is running)."""
        ...

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        ...


class Storage(Protocol):
    """What the layers above need from a backend; paths are absolute, under one root.

    Missing files raise FileNotFoundError, like the built-ins, so callers can tell "absent" from
    "unreadable" (any other OSError).
    """

    durable: bool
    """Whether writes are made durable (fsync) before they return; tests may turn it off."""

    # -- reading ---------------------------------------------------------------------------------
    def read_bytes(self, path: Path) -> bytes:
        """The whole content of ``path``."""
        ...

    def listdir(self, path: Path) -> list[str]:
        """The sorted names in folder ``path``; [] when it does not exist."""
        ...

    def files_under(self, path: Path) -> Iterator[Path]:
        """Every file below ``path``, recursively (nothing when it does not exist)."""
        ...

    def exists(self, path: Path) -> bool:
        """Whether anything is at ``path`` (a file that cannot be read still exists)."""
        ...

    def is_file(self, path: Path) -> bool:
        """Whether ``path`` is a file."""
        ...

    def is_dir(self, path: Path) -> bool:
        """Whether ``path`` is a folder."""
        ...

    def size(self, path: Path) -> int:
        """The size of file ``path`` in bytes."""
        ...

    def mtime(self, path: Path) -> float:
        """When file ``path`` was last written (unix time)."""
        ...

    def checksum(self, path: Path) -> tuple[int, str]:
        """(size, xxh3_128) of the file as it is stored now."""
        ...

    def local_file(self, path: Path) -> Path:
        """A local file holding the content of ``path``, for readers that memory-map it.

        ``torch.load(..., mmap=True)`` needs a real file; a local backend returns ``path`` itself, an
        object store would return a cached download.
        """
        ...

    # -- writing ---------------------------------------------------------------------------------
    def write_atomic(self, path: Path, produce: Callable[[HashingWriter], None]) -> WrittenFile:
        """Write ``path`` atomically from what ``produce`` streams into the writer it is given.

        A crash leaves the old content or the new one, never part of it; on return the new content
        is durable (when :attr:`durable`).
        """
        ...

    def write_bytes_atomic(self, path: Path, data: bytes) -> WrittenFile:
        """:meth:`write_atomic` of bytes already in memory."""
        ...

    def create_exclusive(self, path: Path, data: bytes) -> bool:
        """Create ``path`` holding ``data`` only if nothing is there yet; False when something was.

        Atomic create-if-absent: of two racing callers exactly one gets True. This is the primitive
        that a commit record on an object store (a conditional put) is built on.
        """
        ...

    def read_versioned(self, path: Path) -> tuple[bytes, str | None]:
        """The content of ``path`` and its version (an object store's ETag; None where the backend
        has no versions, as a local file system: its writer lock alone keeps one writer)."""
        ...

    def write_if_version(self, path: Path, data: bytes, version: str | None) -> str | bool | None:
        """Replace ``path`` only if it is still at ``version`` (None: only if absent), atomically.

        Returns the new version, or False when another writer changed it meanwhile (nothing was
        written). A backend without versions writes unconditionally and returns None. This is the
        commit record of a manifest: on an object store, a writer that lost the root cannot
        overwrite its successor's commits.
        """
        ...

    def append_line(self, path: Path, line: bytes) -> None:
        """Append one line (ending in a newline) whole or not at all, creating the file if needed.

        A torn earlier line (a crash mid-append) is first ended, so this line is never glued to it.
        Raises OSError when the line could not be appended; the file is then as it was.
        """
        ...

    def replace(self, source: Path, target: Path) -> None:
        """Rename ``source`` over ``target`` atomically (both under the same root)."""
        ...

    def remove(self, path: Path) -> None:
        """Delete file ``path``; absent is fine."""
        ...

    def remove_dir(self, path: Path) -> None:
        """Delete folder ``path`` if it is empty; raises OSError when it is not, absent is fine."""
        ...

    def makedirs(self, path: Path) -> None:
        """Create folder ``path`` and its parents; existing is fine."""
        ...

    def dcp_writer(self, path: Path) -> Any:
        """A ``torch.distributed.checkpoint`` StorageWriter that writes the folder ``path``.

        Every rank writes its shards through it; each file is durable (when :attr:`durable`) before
        DCP's save returns. DCP is the engine: a backend only says where its bytes go.
        """
        ...

    def dcp_reader(self, path: Path) -> Any:
        """A ``torch.distributed.checkpoint`` StorageReader of the folder ``path``."""
        ...

    def lock(self, root: Path, path: Path) -> WriterLock:
        """The writer lock of ``root``, kept at ``path`` (not taken yet: call ``acquire``)."""
        ...
