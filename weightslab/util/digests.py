"""xxh3-128 digests that release the GIL: libxxhash through ctypes, python ``xxhash`` as the fallback.

Every checkpoint byte is hashed on the way to disk and again before a resume trusts it, so the
hash is on both critical paths. The ``xxhash`` module holds the GIL while it hashes (two threads
hash no faster than one) and uses the SSE2 code path. The system's ``libxxhash.so.0``, called
through ctypes, releases the GIL for the call, and its ``*_dispatch`` entry points pick the widest
vector unit at run time (AVX2 here: about 3x the SSE2 speed on data in cache). That lets a write
syscall and the hash of the same bytes run on two cores, and several threads hash parts of a file
at once. The digests are the same bits either way (xxh3-128, seed 0, canonical hex as
``xxhash.xxh3_128().hexdigest()``); without the library everything still works, only slower.

A streaming digest of a whole file is sequential: one core computes it, at most at the memory
bandwidth one core reaches. :class:`FileHasher` also keeps a digest of every block of
:data:`BLOCK_BYTES` (the high 64 bits of each block's xxh3-128, its first 16 hex digits; not an xxh3-64), computed on the same bytes while
they are still in the core's cache, so that a reader can check the blocks of a file on every core at
once (:func:`block_digests`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import xxhash

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class _Lib:
    """The libxxhash entry points used here, their prototypes set."""

    one_shot: Any
    update: Any
    create: Any
    free: Any
    reset: Any
    digest: Any


@cache
def _lib() -> _Lib | None:
    """libxxhash's functions, or None where it (or a needed symbol) is absent.

    Loaded at the first hash, not at import: the read-only commands import this module and most of
    them never hash (ctypes and its ``find_library``, which imports subprocess, cost milliseconds).
    """
    import ctypes
    import ctypes.util

    class _Hash128(ctypes.Structure):
        _fields_ = [("low64", ctypes.c_uint64), ("high64", ctypes.c_uint64)]

    def names() -> Iterator[str | None]:
        yield "libxxhash.so.0"
        yield ctypes.util.find_library("xxhash")  # only when the usual name did not load

    for name in names():
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            found = _Lib(
                one_shot=getattr(lib, "XXH3_128bits_dispatch", None) or lib.XXH3_128bits,
                update=getattr(lib, "XXH3_128bits_update_dispatch", None) or lib.XXH3_128bits_update,
                create=lib.XXH3_createState,
                free=lib.XXH3_freeState,
                reset=lib.XXH3_128bits_reset,
                digest=lib.XXH3_128bits_digest,
            )
        except (OSError, AttributeError):
            continue
        pointer, size = ctypes.c_void_p, ctypes.c_size_t
        found.one_shot.argtypes, found.one_shot.restype = [pointer, size], _Hash128
        found.update.argtypes, found.update.restype = [pointer, pointer, size], ctypes.c_int
        found.create.argtypes, found.create.restype = [], pointer
        found.free.argtypes, found.free.restype = [pointer], ctypes.c_int
        found.reset.argtypes, found.reset.restype = [pointer], ctypes.c_int
        found.digest.argtypes, found.digest.restype = [pointer], _Hash128
        if _hex(found.one_shot(None, 0)) != xxhash.xxh3_128(b"").hexdigest():  # pragma: no cover
            continue  # a build that does not compute xxh3-128 as the xxhash module does
        return found
    return None  # pragma: no cover - depends on the machine


def _hex(h: Any) -> str:
    return f"{h.high64:016x}{h.low64:016x}"


if TYPE_CHECKING:
    RELEASES_GIL: bool  # computed on first use, by __getattr__


def __getattr__(name: str) -> Any:
    """``RELEASES_GIL``, the constant this module had before the library loaded lazily."""
    if name == "RELEASES_GIL":
        return releases_gil()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def releases_gil() -> bool:
    """Whether hashing runs outside the GIL (libxxhash found); False: python ``xxhash``, one core at a time."""
    return _lib() is not None


def address(view: memoryview) -> int:
    """The address of a C-contiguous buffer's first byte (read-only buffers included).

    The caller keeps ``view`` alive (and unchanged) while the address is used.
    """
    if view.nbytes == 0:
        return 0
    import numpy as np  # here: the read-only CLI imports this module and never hashes a large file

    return int(np.frombuffer(view.cast("B") if view.format != "B" else view, dtype=np.uint8).ctypes.data)


def as_bytes(data: Buffer) -> memoryview:
    """``data`` as a flat byte view (what the hashers take)."""
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class Xxh3Stream:
    """A streaming xxh3-128: :meth:`update` in order, then :meth:`hexdigest`.

    With libxxhash, an :meth:`update` releases the GIL while it hashes; not thread-safe (one
    stream, one thread at a time).
    """

    def __init__(self) -> None:
        self._lib = _lib()
        self._state: int | None = self._lib.create() if self._lib is not None else None
        self._py: Any = None
        if self._lib is None or not self._state:
            self._lib, self._state = None, None
            self._py = xxhash.xxh3_128()
        else:
            self._lib.reset(self._state)

    def update(self, data: Buffer) -> None:
        """Hash ``data`` next."""
        view = as_bytes(data)
        if self._lib is None:
            self._py.update(view)
        elif view.nbytes:
            self._lib.update(self._state, address(view), view.nbytes)

    def update_span(self, view: memoryview, base: int, start: int, end: int) -> None:
        """Hash ``view[start:end]`` next, ``base`` being ``address(view)`` (any value without
        libxxhash): no address lookup per call, for loops over the pieces of one buffer."""
        if self._lib is None:
            self._py.update(view[start:end])
        elif end > start:
            self._lib.update(self._state, base + start, end - start)

    def hexdigest(self) -> str:
        """The digest of everything hashed so far (more updates may follow)."""
        if self._lib is None:
            return str(self._py.hexdigest())
        return _hex(self._lib.digest(self._state))

    def __del__(self) -> None:
        lib, state = getattr(self, "_lib", None), getattr(self, "_state", None)
        self._lib, self._state = None, None
        if lib is not None and state:
            lib.free(state)


def digest(data: Buffer) -> str:
    """The xxh3-128 hex digest of ``data`` (releases the GIL with libxxhash)."""
    view = as_bytes(data)
    lib = _lib()
    if lib is None:
        return str(xxhash.xxh3_128(view).hexdigest())
    return _hex(lib.one_shot(address(view), view.nbytes))


BLOCK_BYTES = 64 << 20
"""The block size of :class:`FileHasher`'s block digests (a manifest records it with them)."""

_PIECE = 512 << 10  # hashed twice in a row, the second time from the core's cache


def high64(hexdigest: str) -> str:
    """A block's digest from its xxh3-128: the high 64 bits (the first 16 hex digits; not an xxh3-64)."""
    return hexdigest[:16]


class FileHasher:
    """The xxh3-128 of a stream of bytes, and the digest of each of its blocks (the high 64 bits of
    the block's xxh3-128).

    Blocks are ``block_bytes`` long, counted from the first byte; the last one may be shorter.
    :meth:`update` feeds both in pieces of 512 KiB, each hashed for the file and for its block
    while it is in the cache, so the second digest costs computation, not another pass over memory.
    """

    def __init__(self, block_bytes: int = BLOCK_BYTES) -> None:
        if block_bytes <= 0:
            raise ValueError(f"block_bytes must be positive, got {block_bytes}")
        self.block_bytes = block_bytes
        self._file = Xxh3Stream()
        self._block = Xxh3Stream()
        self._in_block = 0
        self._blocks: list[str] = []
        self.bytes = 0

    def update(self, data: Buffer) -> None:
        """Hash ``data`` next."""
        view = as_bytes(data)
        n = view.nbytes
        # ``view`` stays alive (and unchanged) for the whole call
        base = address(view) if n and _lib() is not None else 0
        start = 0
        while start < n:
            room = self.block_bytes - self._in_block
            end = min(n, start + _PIECE, start + room)
            self._file.update_span(view, base, start, end)
            self._block.update_span(view, base, start, end)
            self._in_block += end - start
            if self._in_block == self.block_bytes:
                self._blocks.append(high64(self._block.hexdigest()))
                self._block = Xxh3Stream()
                self._in_block = 0
            start = end
        self.bytes += n

    def hexdigest(self) -> str:
        """The xxh3-128 of every byte hashed so far."""
        return self._file.hexdigest()

    def blocks(self) -> tuple[str, ...]:
        """The digest of each block so far, the last (shorter) one included."""
        if self._in_block:
            return (*self._blocks, high64(self._block.hexdigest()))
        return tuple(self._blocks)


def block_digests(view: memoryview, block_bytes: int, threads: int) -> list[str]:
    """The digest of each ``block_bytes`` block of ``view`` (as :class:`FileHasher` computes them), on
    up to ``threads`` threads."""
    view = as_bytes(view)
    parts = [view[i : i + block_bytes] for i in range(0, view.nbytes, block_bytes)]
    try:
        return [high64(d) for d in digests_parallel(parts, threads)]
    finally:
        for part in parts:
            part.release()


def digests_parallel(parts: Sequence[memoryview], threads: int) -> list[str]:
    """The digest of each of ``parts``, computed by up to ``threads`` threads (in order of ``parts``).

    Parallel only with libxxhash (the fallback holds the GIL, so it hashes in this thread). An
    exception in a worker is raised here.
    """
    out: list[str] = [""] * len(parts)

    def one(i: int) -> None:
        out[i] = digest(parts[i])

    run_parallel(len(parts), one, threads if _lib() is not None else 1)
    return out


def run_parallel(count: int, fn: Callable[[int], None], threads: int) -> None:
    """Call ``fn(i)`` for every ``i`` in ``range(count)``, in order, on up to ``threads`` threads (this
    one included); returns once every call ended, raising the first exception one raised.

    For work that releases the GIL on buffers the caller frees afterwards: an interrupt (Ctrl-C)
    stops handing out work and waits for every running call before it is re-raised.
    """
    if threads <= 1 or count <= 1:
        for i in range(count):
            fn(i)
        return
    errors: list[BaseException] = []
    cursor = iter(range(count))
    lock = threading.Lock()
    stop = threading.Event()

    def work() -> None:
        try:
            while not stop.is_set():
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                fn(i)
        except BaseException as exc:  # reported below
            errors.append(exc)
            stop.set()

    workers = [threading.Thread(target=work, daemon=True) for _ in range(min(threads, count) - 1)]
    interrupted: BaseException | None = None
    try:
        for w in workers:
            w.start()
        work()
    except BaseException as exc:  # a KeyboardInterrupt: the workers still hash through raw pointers
        interrupted = exc
        stop.set()
    for w in workers:  # the caller frees the buffers once this returns: wait for every worker
        while w.is_alive():
            try:
                w.join()
            except BaseException as exc:
                interrupted = interrupted or exc
                stop.set()
    if interrupted is not None:
        raise interrupted
    if errors:
        raise errors[0]


__all__ = [
    "BLOCK_BYTES",
    "RELEASES_GIL",
    "FileHasher",
    "Xxh3Stream",
    "address",
    "as_bytes",
    "block_digests",
    "digest",
    "digests_parallel",
    "high64",
    "releases_gil",
    "run_parallel",
]
