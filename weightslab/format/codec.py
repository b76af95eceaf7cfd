"""Lossless compression of tensor bytes: byte grouping of multi-byte elements, then zstd.

A float's bytes are not alike: the byte holding the sign and most of the exponent takes a few
dozen values across a trained weight matrix (about 2.6 bits of entropy out of 8), while the
low mantissa bytes are close to random. Plain zstd sees them interleaved and saves little
(about 8% on float32, 22% on bfloat16 weights); split into byte planes (all first bytes, then all
second bytes...) the exponent plane shrinks to about a third and the mantissa planes are stored
raw, which costs nothing to "decompress" (the ZipNN approach). On a small trained GPT-2
(``benchmarks/bench_compression.py``) that saves 32% on bfloat16 weights, 16% on float32 and
float16 weights and 16-18% on AdamW's moments, against 6-9% (22% on bfloat16) for plain zstd.
Planes are taken in memory order, so a blob holds exactly the tensor's bytes on any machine.

A blob is self-describing, so a reader needs nothing but the blob::

    header  "<4sBBBBQQ": magic b"WLZT", format version, codec id (1: zstd), element size,
            flags (bit 0: byte-grouped), raw length, xxh3-64 of everything after this field
            plus the header's first 16 bytes
    table   one "<BQ" per segment: mode (0: stored raw, 1: one zstd frame), stored length
    payload the segments, back to back

Grouped blobs have one segment per byte plane (``raw length // element size`` bytes each) and,
when the length is not a multiple of the element size, a last segment with the odd tail; other
blobs have one segment. Each segment is compressed with zstd and stored raw instead when that
does not save at least 2% of it (an incompressible plane then decompresses at memcpy speed).

Byte planes are not compressed with the level's own parameters. An exponent plane has few long
repeats: short matches cost more than the Huffman-coded literals they replace, and the lazier
match finders of higher levels only spend time finding them. Measured on trained bfloat16 and
float32 weights, exponent plane alone: level 1 (fast strategy, minimum match 7) gives 0.36 of
its size at about 180 MB/s, level 3 gives 0.41 at 75 MB/s, level 6 0.39 at 30 MB/s, level 19
0.33 at 1 MB/s. So levels 1 to :data:`PLANE_OWN_PARAMETERS_FROM` - 1 all compress planes with
level 1's parameters, higher levels with their own but a minimum match of at least 7, and
negative levels (no Huffman coding of literals: faster, larger) as they are. The odd tail and
ungrouped data use the level as given.

zstd releases the GIL while it compresses and decompresses, so callers may compress several
tensors in parallel threads; each thread gets its own zstd contexts (they are not thread-safe).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import xxhash

from weightslab.errors import CompressedBlobError

try:
    import zstandard
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "compressed tensors need the zstandard package, which is not installed; "
        "run `pip install 'weightslab[compression]'` (or pass compression=None)"
    ) from exc

MAGIC = b"WLZT"
FORMAT_VERSION = 1
CODEC_ZSTD = 1
FLAG_GROUPED = 1

MODE_RAW = 0
MODE_ZSTD = 1

_HEADER = struct.Struct("<4sBBBBQQ")
_SEGMENT = struct.Struct("<BQ")
HEADER_SIZE = _HEADER.size
"""Bytes of the fixed header (the segment table follows it)."""

GROUPED_SIZES = (2, 4, 8)
"""Element sizes split into byte planes; other sizes (1, odd ones) are compressed as they are."""
MIN_GROUPED_ELEMENTS = 64
"""Below this many elements a blob is compressed ungrouped: the table would outweigh the gain."""
KEEP_IF_BELOW = 0.98
"""A segment is stored compressed only when that makes it smaller than this fraction of its raw size."""
PLANE_MIN_MATCH = 7
"""Shortest match zstd looks for in a byte plane."""
PLANE_OWN_PARAMETERS_FROM = 10
"""The lowest level whose own parameters are used for byte planes (below it: level 1's, see above)."""
MIN_LEVEL = -7
"""The fastest zstd level accepted (negative levels trade ratio for speed)."""

_local = threading.local()
_T = TypeVar("_T")


def _compressor(level: int, grouped: bool) -> Any:
    """This thread's ZstdCompressor for ``level``, or for byte planes at ``level`` (see the module doc)."""
    cache: dict[tuple[int, bool], Any] = _local.__dict__.setdefault("compressors", {})
    found = cache.get((level, grouped))
    if found is None:
        if grouped:
            effective = 3 if level == 0 else level  # zstd reads level 0 as its default, 3
            plane_level = 1 if 1 <= effective < PLANE_OWN_PARAMETERS_FROM else effective
            base = zstandard.ZstdCompressionParameters.from_level(plane_level)
            params = zstandard.ZstdCompressionParameters(
                strategy=base.strategy,
                window_log=base.window_log,
                hash_log=base.hash_log,
                chain_log=base.chain_log,
                search_log=base.search_log,
                target_length=base.target_length,
                min_match=max(base.min_match, PLANE_MIN_MATCH),
                write_content_size=True,
                write_checksum=False,
            )
            found = zstandard.ZstdCompressor(compression_params=params)
        else:
            found = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
        cache[(level, grouped)] = found
    return found


def _decompressor() -> Any:
    found = _local.__dict__.get("decompressor")
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor()
    return found


def _check_arguments(element_size: object, level: object) -> None:
    if isinstance(element_size, bool) or not isinstance(element_size, int) or not 1 <= element_size <= 255:
        raise ValueError(
            f"element_size must be the tensor's bytes per element (an int from 1 to 255, e.g. "
            f"tensor.element_size()), got {element_size!r}"
        )
    low, high = MIN_LEVEL, zstandard.MAX_COMPRESSION_LEVEL
    if isinstance(level, bool) or not isinstance(level, int) or not low <= level <= high:
        raise ValueError(
            f"level must be a zstd compression level, an int from {low} to {high} (3 is zstd's default), "
            f"got {level!r}"
        )


def _segment(raw: memoryview, compressor: Any) -> tuple[int, bytes | memoryview]:
    """``(mode, stored bytes)`` for one segment: zstd when it saves enough, else the bytes themselves."""
    size = raw.nbytes
    if size == 0:
        return MODE_RAW, memoryview(b"")
    packed = compressor.compress(raw)
    if len(packed) < KEEP_IF_BELOW * size:
        return MODE_ZSTD, packed
    return MODE_RAW, raw


def compress_tensor_bytes(data: bytes | memoryview, element_size: int, level: int = 3) -> bytes:
    """Compress a tensor's raw bytes losslessly into a self-describing blob.

    Args:
        data: the tensor's bytes in memory order (e.g. ``memoryview(t.numpy())`` of a contiguous
            CPU tensor viewed as uint8); any C-contiguous buffer.
        element_size: bytes per element (``tensor.element_size()``): 2, 4 and 8 are byte-grouped
            (one plane per byte of the element), other sizes are compressed as they are.
        level: zstd level (-7 to 22) for ungrouped data; byte planes use level 1's match finder
            for levels 1 to 9 (faster and smaller on them, see the module doc).

    Returns the blob that :func:`decompress_tensor_bytes` turns back into ``data``, bit for bit.

    Raises:
        ValueError: ``element_size`` or ``level`` out of range, or ``data`` not a contiguous buffer.
    """
    _check_arguments(element_size, level)
    try:
        view = memoryview(data).cast("B")
    except TypeError as exc:
        raise ValueError(
            f"data must be a C-contiguous bytes-like object (bytes, bytearray, memoryview of a contiguous "
            f"array); got {type(data).__name__} ({exc}): pass tensor.contiguous() viewed as uint8"
        ) from exc
    raw_length = view.nbytes
    count = raw_length // element_size
    grouped = element_size in GROUPED_SIZES and count >= MIN_GROUPED_ELEMENTS
    segments: list[tuple[int, bytes | memoryview]]
    if grouped:
        compressor = _compressor(level, True)
        body = np.frombuffer(view, dtype=np.uint8, count=count * element_size)
        # one copy: row i of the (element_size, count) array is byte plane i
        planes = np.ascontiguousarray(body.reshape(count, element_size).T)
        segments = [_segment(plane.data, compressor) for plane in planes]
        tail = view[count * element_size :]
        if tail.nbytes:
            segments.append(_segment(tail, _compressor(level, False)))
    else:
        segments = [_segment(view, _compressor(level, False))]
    flags = FLAG_GROUPED if grouped else 0
    table = b"".join(_SEGMENT.pack(mode, len(stored)) for mode, stored in segments)
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, CODEC_ZSTD, element_size, flags, raw_length, 0)[:16]
    hasher = xxhash.xxh3_64(head)
    hasher.update(table)
    for _, stored in segments:
        hasher.update(stored)
    header = _HEADER.pack(
        MAGIC, FORMAT_VERSION, CODEC_ZSTD, element_size, flags, raw_length, hasher.intdigest()
    )
    return b"".join([header, table, *(stored for _, stored in segments)])


def _parse(blob: memoryview) -> tuple[int, bool, int, list[tuple[int, int, int]]]:
    """``(element_size, grouped, raw_length, [(mode, start, stored length)])`` of a checked blob."""
    if blob.nbytes < HEADER_SIZE:
        raise CompressedBlobError(f"{blob.nbytes} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, version, codec, element_size, flags, raw_length, digest = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise CompressedBlobError(
            f"magic {bytes(magic)!r} is not {MAGIC!r}: not a weightslab compressed tensor"
        )
    if version != FORMAT_VERSION:
        raise CompressedBlobError(
            f"format version {version}, this weightslab reads version {FORMAT_VERSION}: upgrade weightslab"
        )
    if codec != CODEC_ZSTD:
        raise CompressedBlobError(f"codec id {codec} is unknown (1 is zstd)")
    grouped = bool(flags & FLAG_GROUPED)
    if element_size < 1 or flags & ~FLAG_GROUPED or (grouped and element_size not in GROUPED_SIZES):
        raise CompressedBlobError(f"element size {element_size} with flags {flags:#x} is not valid")
    nseg = (element_size + (1 if raw_length % element_size else 0)) if grouped else 1
    table_end = HEADER_SIZE + nseg * _SEGMENT.size
    if blob.nbytes < table_end:
        raise CompressedBlobError(f"{blob.nbytes} bytes, too short for its {nseg}-segment table")
    hasher = xxhash.xxh3_64(blob[:16])
    hasher.update(blob[HEADER_SIZE:])
    if hasher.intdigest() != digest:
        raise CompressedBlobError(
            f"xxh3-64 of the blob is {hasher.intdigest():016x}, its header records {digest:016x}"
        )
    segments: list[tuple[int, int, int]] = []
    start = table_end
    for i in range(nseg):
        mode, length = _SEGMENT.unpack_from(blob, HEADER_SIZE + i * _SEGMENT.size)
        if mode not in (MODE_RAW, MODE_ZSTD):
            raise CompressedBlobError(f"segment {i} has mode {mode} (0: raw, 1: zstd)")
        segments.append((mode, start, length))
        start += length
    if start != blob.nbytes:
        raise CompressedBlobError(f"the segments add up to {start} bytes, the blob holds {blob.nbytes}")
    return element_size, grouped, raw_length, segments


def _expand(blob: memoryview, segment: tuple[int, int, int], expected: int, what: str) -> bytes | memoryview:
    """One segment's raw bytes, checked to be ``expected`` bytes long."""
    mode, start, length = segment
    stored = blob[start : start + length]
    if mode == MODE_RAW:
        out: bytes | memoryview = stored
    else:
        try:
            out = _decompressor().decompress(stored, max_output_size=expected)
        except zstandard.ZstdError as exc:
            raise CompressedBlobError(f"{what} does not decompress ({exc})") from exc
    if len(out) != expected:
        raise CompressedBlobError(f"{what} holds {len(out)} bytes, the header records {expected}")
    return out


def _ungroup(
    blob: memoryview, parsed: tuple[int, bool, int, list[tuple[int, int, int]]], target: np.ndarray
) -> None:
    """Decompress a grouped blob's planes into ``target`` (uint8, raw length), interleaving them."""
    element_size, _, raw_length, segments = parsed
    count = raw_length // element_size
    body = target[: count * element_size].reshape(count, element_size)
    for i in range(element_size):
        # a strided column write: numpy copies each plane into every element_size-th byte in one pass
        body[:, i] = np.frombuffer(_expand(blob, segments[i], count, f"byte plane {i}"), np.uint8)
    if len(segments) > element_size:
        tail = raw_length - count * element_size
        target[count * element_size :] = np.frombuffer(
            _expand(blob, segments[element_size], tail, "the odd tail"), np.uint8
        )


def _located(step: Callable[..., _T], where: str | Path | None, *args: Any) -> _T:
    """``step(*args)``, its CompressedBlobError naming the blob's file ``where`` when one is given."""
    try:
        return step(*args)
    except CompressedBlobError as exc:
        if where is None:
            raise
        raise CompressedBlobError(exc.reason, where) from exc.__cause__


def decompressed_size(blob: bytes | memoryview) -> int:
    """The raw length a blob's header records (nothing is verified or decompressed).

    Raises:
        CompressedBlobError: the blob has no weightslab compressed-tensor header.
    """
    view = memoryview(blob).cast("B")
    if view.nbytes < HEADER_SIZE or bytes(view[:4]) != MAGIC:
        raise CompressedBlobError("no weightslab compressed-tensor header (magic WLZT)")
    return int(_HEADER.unpack_from(view)[5])


def decompress_tensor_into(blob: bytes | memoryview, out: Any, *, where: str | Path | None = None) -> int:
    """Decompress ``blob`` straight into the writable buffer ``out`` (no intermediate copy).

    ``out`` is C-contiguous and exactly :func:`decompressed_size` bytes: a ``bytearray``, or
    ``tensor.numpy()`` of an empty CPU tensor of the right dtype and shape. Returns the raw length.
    ``where`` (the blob's file) is named by the error when the blob is damaged.

    Raises:
        CompressedBlobError: (a CheckpointCorruptedError) the blob is damaged: wrong magic, version
            or table, a checksum mismatch, a segment that does not decompress or has the wrong length.
        ValueError: ``out`` is read-only, not contiguous, or not the blob's raw length.
    """
    view = memoryview(blob).cast("B")
    parsed = _located(_parse, where, view)
    raw_length = parsed[2]
    try:
        target = np.frombuffer(memoryview(out).cast("B"), dtype=np.uint8)
    except TypeError as exc:
        raise ValueError(
            f"out must be a C-contiguous writable buffer, got {type(out).__name__} ({exc})"
        ) from exc
    if target.nbytes != raw_length or not target.flags.writeable:
        state = "" if target.flags.writeable else ", read-only"
        raise ValueError(
            f"out must be a writable buffer of exactly {raw_length} bytes (the blob's raw length), "
            f"got {target.nbytes} bytes{state}: allocate it with decompressed_size(blob)"
        )
    if parsed[1]:
        _located(_ungroup, where, view, parsed, target)
    else:
        payload = _located(_expand, where, view, parsed[3][0], raw_length, "the payload")
        target[:] = np.frombuffer(payload, np.uint8)
    return raw_length


def decompress_tensor_bytes(blob: bytes | memoryview, *, where: str | Path | None = None) -> bytes:
    """The raw bytes that :func:`compress_tensor_bytes` compressed into ``blob``, bit for bit.

    The blob's checksum, table and every segment's decompressed length are verified first.
    ``where`` (the blob's file) is named by the error when the blob is damaged.

    Raises:
        CompressedBlobError: (a CheckpointCorruptedError) the blob is damaged or not a compressed
            tensor; its message names what is wrong.
    """
    view = memoryview(blob).cast("B")
    parsed = _located(_parse, where, view)
    if not parsed[1]:
        return bytes(_located(_expand, where, view, parsed[3][0], parsed[2], "the payload"))
    out = np.empty(parsed[2], dtype=np.uint8)
    _located(_ungroup, where, view, parsed, out)
    return out.tobytes()
