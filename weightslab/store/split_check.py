"""Checking a step file's blocks in two parts, copying the model out of each piece as it is hashed.

A resume loads a step file through torch's memory map, so every tensor of the step dict lies at a
known place in the file. :func:`plan` finds those places and splits the file's block digests
(:attr:`CheckpointEntry.blocks`) in two:

- the *eager* blocks: every block with a byte of anything a restore reads at once or that places
  the tensors in the file (the pickled structure, the zip's index and each record's header, the
  models, schedulers, other state, the RNG);
- the *deferred* blocks: the ones holding nothing but optimizer state tensors (AdamW's moments),
  which ``load_state_dict`` keeps mapped and only the optimizer's ``step()`` reads.

:meth:`SplitCheck.eager` hashes the eager blocks on every core and, in the same pass, copies each
model tensor it is given out of the piece just hashed, while that piece is still in the CPU's cache:
the model's bytes are read from memory once, for both. :meth:`SplitCheck.rest` hashes the deferred
blocks; ``resume()`` runs it on a helper thread behind the gates of :mod:`weightslab.system.verifying`.
A file the plan cannot place (blob references, a layout torch did not write) gets no plan: the
caller checks it whole.
"""

from __future__ import annotations

import ctypes
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from weightslab.errors import CheckpointCorruptedError, FileChangedError
from weightslab.format.manifest import BlockDigests, CheckpointEntry
from weightslab.storage.local import LocalStorage
from weightslab.store.verify import check_block
from weightslab.util.digests import Xxh3Stream, address, high64, releases_gil, run_parallel

PIECE_BYTES = 4 << 20
"""How much of a block is hashed before the model bytes in it are copied (a piece stays in cache)."""

HEADER_BYTES = 4096
"""Bytes before a small tensor's data that may hold its zip header (name, alignment padding)."""


@dataclass(frozen=True)
class _Copy:
    """Bytes ``start``-``end`` of the file go to address ``dst``, the memory of ``keep`` (held alive
    for as long as the copy is planned)."""

    start: int
    end: int
    dst: int
    keep: torch.UntypedStorage

    def part(self, mapped_at: int, lo: int, hi: int) -> None:
        """Copy file bytes ``lo``-``hi`` (within this copy's range) from the map of the file at
        address ``mapped_at``: the pages the hash just faulted in, not torch's own map of them
        (ctypes releases the GIL)."""
        ctypes.memmove(self.dst + (lo - self.start), mapped_at + lo, hi - lo)


class SplitCheck:
    """The plan for one step file: which blocks are eager, which deferred, where each tensor lies."""

    def __init__(
        self,
        storage: LocalStorage,
        path: Path,
        entry: CheckpointEntry,
        blocks: BlockDigests,
        base: int,
        eager_blocks: list[int],
        deferred_blocks: list[int],
        threads: int,
        *,
        structure_end: int = 0,
        identity: tuple[int, int] | None = None,
    ) -> None:
        self._storage = storage
        self.path = path
        self.entry = entry
        self.blocks = blocks
        self._base = base  # the address torch's map of this file starts at
        self.eager_blocks = eager_blocks
        self._eager = frozenset(eager_blocks)
        self.deferred_blocks = deferred_blocks
        self._threads = threads
        self._structure_end = structure_end  # the pickled structure and the zip headers before the data
        self._identity = identity
        self._verified: set[int] = set()
        self.touched: set[tuple[str, str]] = set()  # objects copied into before all their blocks passed

    def verify_for(self, tensors: Iterable[torch.Tensor]) -> None:
        """Check now the blocks of the pickled structure, and the eager blocks holding ``tensors``
        with the zip index placing them (all eager blocks if one cannot be placed): for state read
        before :meth:`eager` copies the model."""
        size = self.blocks.block_bytes
        wanted = set(_blocks_of([(0, self._structure_end)], size, len(self.blocks.xxh3_128_hi64)))
        found = list(tensors)
        if any(t.numel() for t in found):
            wanted.add(len(self.blocks.xxh3_128_hi64) - 1)  # the zip index, at the end
        for t in found:
            s = t.untyped_storage()
            if s.nbytes() == 0:
                continue
            start = s.data_ptr() - self._base
            if start < 0 or start + s.nbytes() > self.entry.bytes:
                wanted = set(self._eager)
                break
            wanted.update(_blocks_of([(max(0, start - HEADER_BYTES), start + s.nbytes())], size, 1 << 62))
        self._check(sorted((wanted & self._eager) - self._verified), [])

    def offset(self, t: torch.Tensor) -> int | None:
        """Where in the file ``t``'s bytes start, when all of them lie in eager blocks; else None."""
        if not plain_tensor(t) or t.numel() == 0:
            return None
        start = t.data_ptr() - self._base
        end = start + t.numel() * t.element_size()
        if start < 0 or end > self.entry.bytes:
            return None
        size = self.blocks.block_bytes
        first, last = start // size, (end - 1) // size
        return start if all(b in self._eager for b in range(first, last + 1)) else None

    def eager(self, copies: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> None:
        """Check every eager block, copying each ``(src, dst)`` pair out of the pieces it hashes.

        ``src`` is a tensor of the loaded step dict whose :meth:`offset` is not None, ``dst`` a tensor
        of the same number of bytes (contiguous, on the CPU). Raises CheckpointCorruptedError naming
        the block when one differs; ``dst`` may then hold some of its unverified bytes.
        """
        planned = []
        for src, dst in copies:
            start = self.offset(src)
            if (
                start is None
                or not plain_tensor(dst)
                or dst.numel() * dst.element_size() != src.numel() * src.element_size()
            ):
                raise ValueError(f"a tensor of {self.path} cannot be copied while it is checked")
            end = start + src.numel() * src.element_size()
            planned.append(_Copy(start, end, dst.data_ptr(), dst.untyped_storage()))
        before = set(self._verified)
        self._check(
            [b for b in self.eager_blocks if b not in before], sorted(planned, key=lambda c: c.start), before
        )

    def rest(self) -> None:
        """Check the deferred blocks (CheckpointCorruptedError naming the block when one differs)."""
        self._check(self.deferred_blocks, [])

    def _check(self, which: list[int], copies: list[_Copy], before: Collection[int] = ()) -> None:
        """Hash the blocks ``which`` (copying the parts of ``copies`` in them), then copy the parts of
        ``copies`` in the blocks ``before`` (checked earlier), and compare the digests."""
        if not which and not copies:
            return
        size = self.blocks.block_bytes
        per_block: list[list[_Copy]] = [[] for _ in which]
        index = {b: i for i, b in enumerate(which)}
        for c in copies:
            for b in range(c.start // size, (c.end - 1) // size + 1):
                if b in index:
                    per_block[index[b]].append(c)
        found: list[str] = [""] * len(which)
        try:
            with self._storage.mapped(self.path, self.entry.bytes, identity=self._identity) as view:
                at = address(view)

                def one(i: int) -> None:
                    start = which[i] * size
                    found[i] = _hash_block(view, at, start, min(start + size, self.entry.bytes), per_block[i])

                run_parallel(len(which), one, self._threads)
                for c in copies:  # the parts in blocks checked before (by verify_for)
                    for b in range(c.start // size, (c.end - 1) // size + 1):
                        if b in before:
                            c.part(at, max(c.start, b * size), min(c.end, (b + 1) * size))
        except FileChangedError as exc:  # the bytes torch loaded are no longer these: not checked
            raise CheckpointCorruptedError(
                self.path, self.entry.xxh3_128, "<not computed>", str(exc)
            ) from exc
        for b, got in zip(which, found, strict=True):
            check_block(self.path, self.entry, self.blocks, b, got)
            self._verified.add(b)


def _hash_block(view: memoryview, at: int, start: int, end: int, copies: list[_Copy]) -> str:
    """The block digest of ``view[start:end]``, copying the bytes of ``copies`` piece by piece."""
    stream = Xxh3Stream()
    pending = iter(copies)  # sorted by start
    nxt = next(pending, None)
    active: list[_Copy] = []
    for lo in range(start, end, PIECE_BYTES):
        hi = min(lo + PIECE_BYTES, end)
        stream.update_span(view, at, lo, hi)
        while nxt is not None and nxt.start < hi:
            active.append(nxt)
            nxt = next(pending, None)
        for c in active:
            a, b = max(c.start, lo), min(c.end, hi)
            if a < b:
                c.part(at, a, b)
        active = [c for c in active if c.end > hi]
    return high64(stream.hexdigest())


def plan(
    storage: LocalStorage,
    path: Path,
    entry: CheckpointEntry,
    data: dict[str, Any],
    *,
    threads: int,
    defer_optimizers: bool,
    identity: tuple[int, int] | None = None,
) -> SplitCheck | None:
    """The split check of the step file ``path`` (local, its size checked) whose loaded step dict is
    ``data`` (``torch.load(mmap=True)``), or None when its tensors cannot all be placed in the file.

    A block is deferred only when every byte of it belongs to an optimizer state tensor that nothing
    else in ``data`` shares, or to the zip header right before one; every other block is eager,
    also one holding bytes no tensor of ``data`` accounts for. Without ``defer_optimizers`` every
    block is eager (all checked before the restore goes on, the model still copied as it is hashed).
    ``identity`` ((device, inode) of the file torch loaded) is checked again whenever the file is
    mapped: a file replaced meanwhile is an error, not a check of other bytes.
    """
    blocks = entry.usable_blocks()
    if blocks is None:
        return None
    try:
        return _plan(storage, path, entry, blocks, data, threads, defer_optimizers, identity)
    except Exception:  # a tensor or a layout this plan cannot place (sparse, another container): none
        return None


def _plan(
    storage: LocalStorage,
    path: Path,
    entry: CheckpointEntry,
    blocks: BlockDigests,
    data: dict[str, Any],
    threads: int,
    defer_optimizers: bool,
    identity: tuple[int, int] | None,
) -> SplitCheck | None:
    states = _optimizer_states(data) if defer_optimizers else []
    eager_ptrs = {s.data_ptr() for s in _storages(data, {id(state) for state in states})}
    storages = {s.data_ptr(): s.nbytes() for s in _storages(data) if s.nbytes() > 0}
    if not storages:
        return None
    deferred_ptrs = set(storages) - eager_ptrs  # only in optimizer states (a storage in both is eager)
    reader = torch._C.PyTorchFileReader(str(path))
    names = [n for n in reader.get_all_records() if n.startswith("data/")]
    records = sorted({reader.get_record_offset(n) for n in names})  # type: ignore[attr-defined]  # in torch, not its stubs
    if not records:
        return None
    base = min(storages) - records[0]
    size = entry.bytes
    ends: dict[int, int] = {}  # record offset -> the end of its data, for the records data holds
    for ptr, nbytes in storages.items():
        start = ptr - base
        if start + nbytes > size:
            return None
        ends[start] = start + nbytes
    known = set(records)
    if not set(ends) <= known:
        return None  # a storage not at a record of this file (blob references): no plan
    # each deferred record's span: from the end of the record before it (its header lies between)
    spans = []
    for i, offset in enumerate(records):
        if offset + base not in deferred_ptrs:
            continue
        before = ends.get(records[i - 1]) if i else None
        spans.append((before if before is not None else offset, ends[offset]))
    count = len(blocks.xxh3_128_hi64)
    deferred = {
        b
        for b in range(1, count - 1)
        if _covered(spans, b * blocks.block_bytes, (b + 1) * blocks.block_bytes)
    }
    hashing = max(1, threads) if releases_gil() else 1
    return SplitCheck(
        storage,
        path,
        entry,
        blocks,
        base,
        [b for b in range(count) if b not in deferred],
        sorted(deferred),
        hashing,
        structure_end=records[0],
        identity=identity,
    )


def _covered(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    """Whether the sorted, non-overlapping ``spans`` cover every byte of ``start``-``end``."""
    at = start
    for lo, hi in spans:
        if hi <= at:
            continue
        if lo > at:
            return False
        at = hi
        if at >= end:
            return True
    return False


def plain_tensor(t: torch.Tensor) -> bool:
    """Whether ``t``'s value is exactly its bytes at ``data_ptr()``: a dense, contiguous CPU tensor
    of torch's own classes, not quantized, conjugated or negated lazily."""
    return (
        type(t) in (torch.Tensor, torch.nn.Parameter)
        and t.layout == torch.strided
        and t.device.type == "cpu"
        and not t.is_quantized
        and not t.is_conj()
        and not t.is_neg()
        and t.is_contiguous()
    )


def _blocks_of(ranges: list[tuple[int, int]], block_bytes: int, count: int) -> Iterator[int]:
    for start, end in ranges:
        if end > start:
            yield from range(start // block_bytes, min(count, (end - 1) // block_bytes + 1))


def _optimizer_states(data: dict[str, Any]) -> list[Any]:
    """The ``state`` of every optimizer state dict in ``data`` (what only ``step()`` reads)."""
    out = []
    for state in (data.get("optimizers") or {}).values():
        if isinstance(state, dict) and isinstance(state.get("state"), dict):
            out.append(state["state"])
    return out


def _storages(obj: Any, skip: Collection[int] = ()) -> Iterator[torch.UntypedStorage]:
    return (t.untyped_storage() for t in tensors_in(obj, skip))


def tensors_in(obj: Any, skip: Collection[int] = ()) -> Iterator[torch.Tensor]:
    """Every tensor in ``obj`` (nested dicts, lists and tuples), but in the containers whose ``id``
    is in ``skip``."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in skip:
            continue
        if isinstance(o, torch.Tensor):
            yield o
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
