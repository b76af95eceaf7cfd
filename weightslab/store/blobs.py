"""The root's content-addressed blob store: write each tensor once, collect blobs nothing references.

Saving (``storage="dedup"``): :meth:`BlobStore.externalize` digests every large tensor of a step dict
(xxh3-128 on the writer thread), writes the blobs this root does not hold yet, each atomically and
durably, and returns the step dict with reference records in their place. The step file that holds
them is written and committed after that, so a committed checkpoint never names a blob that is not
durable. A save that crashes before its commit leaves orphan blobs, never a dangling reference.

Collecting: a blob may be deleted once no committed checkpoint of ANY experiment of the root
references it (branches share blobs). The reference sets live in the step files themselves (their
``"blobs"`` list), so the manifest entry stays as small as it was. The writer keeps, in memory, a
count of references per blob, built once from the committed step files the first time a dedup
checkpoint is deleted and kept up to date by each commit and delete after that (O(changed
checkpoints) per save). Order: the manifest entry goes first, its step file next, the blobs whose
count fell to zero last; a crash in between leaves orphans, which the next sweep (the first
collection of a writer, or ``weightslab gc``) removes. One writer per root (the root lock) keeps
these counts true; blobs of a save still in flight are "pending" and never collected.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightslab.errors import ConfigError, ManifestError, WeightslabError
from weightslab.format.blobs import (
    REFS_KEY,
    BlobRef,
    Codec,
    blob_path,
    blobs_dir,
    codec_module,
    digest_of,
    externalizable,
    map_tensors,
    parse_blob_name,
    referenced_digests,
    tensor_bytes,
)
from weightslab.format.layout import RootLayout
from weightslab.format.manifest import CheckpointEntry
from weightslab.storage.base import TMP_MARKER, HashingWriter, Storage

log = logging.getLogger("weightslab")

BLOB_WRITERS = 4
"""Threads that write one save's new blobs (the first save of a model writes hundreds of small files)."""


def check_modes(storage_mode: str, compression: str | None) -> None:
    """Raise ConfigError unless ``storage_mode``/``compression`` is a combination a root can be written in."""
    if storage_mode not in ("files", "dedup"):
        raise ConfigError(f"storage must be 'files' or 'dedup', got {storage_mode!r}")
    if compression not in (None, "zstd"):
        raise ConfigError(f"compression must be 'zstd' or None, got {compression!r}")
    if compression is not None and storage_mode != "dedup":
        raise ConfigError(f"compression={compression!r} needs storage='dedup'; pass storage='dedup' too")
    if compression == "zstd":
        codec_module()  # ConfigError now, not at the first save, when the codec cannot be imported


@dataclass
class SaveStats:
    """What the last :meth:`BlobStore.externalize` did (the benchmark and the tests read it)."""

    tensors: int = 0
    blobs_written: int = 0
    blobs_reused: int = 0
    bytes_written: int = 0  # blob bytes as stored (compressed when compressed)
    raw_bytes_written: int = 0  # the same blobs' raw bytes
    bytes_referenced: int = 0  # raw bytes of every referenced tensor


@dataclass
class SweepResult:
    """What a collection removed: each blob's path and stored size."""

    removed: list[tuple[Path, int]] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(b for _, b in self.removed)


class BlobStore:
    """The blobs of one root, for its writer (readers resolve references without it).

    ``storage``: a function returning the manager's current Storage (tests swap it for a faulty one).
    """

    def __init__(
        self,
        layout: RootLayout,
        storage: Callable[[], Storage],
        *,
        storage_mode: str = "files",
        compression: str | None = None,
        level: int = 3,
    ) -> None:
        check_modes(storage_mode, compression)
        self.layout = layout
        self._storage = storage
        self.storage_mode = storage_mode
        self.compression = compression
        self.level = level
        self.last_save = SaveStats()
        self._lock = threading.RLock()
        self._known: dict[str, Codec] | None = None  # digest -> codec of the stored blob
        self._pending: Counter[str] = Counter()  # blobs of saves not committed yet
        self._refs: dict[tuple[str, int], frozenset[str]] | None = None  # None: not built yet
        self._counts: Counter[str] = Counter()
        self._incomplete: set[tuple[str, int]] = set()  # committed checkpoints whose refs could not be read

    @property
    def root(self) -> Path:
        return self.layout.root

    @property
    def storage(self) -> Storage:
        return self._storage()

    # -- what is stored -------------------------------------------------------------------------
    def known(self) -> dict[str, Codec]:
        """Every blob stored under the root (listed once, then kept up to date): digest -> codec."""
        with self._lock:
            if self._known is None:
                found: dict[str, Codec] = {}
                for path in self.storage.files_under(blobs_dir(self.root)):
                    parsed = parse_blob_name(path.name)
                    if parsed is not None and path.parent.name == parsed[0][:2]:
                        found.setdefault(parsed[0], parsed[1])
                self._known = found
            return self._known

    def has_blobs(self) -> bool:
        """Whether the root holds any blob (a files-only root never pays for collection)."""
        return bool(self.known())

    # -- saving ---------------------------------------------------------------------------------
    def externalize(self, payload: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Write the blobs of ``payload``'s large tensors; returns (step dict with references, digests).

        Each tensor is digested (on the calling thread: the writer's, not training's); the blobs this
        root does not hold yet are written by up to :data:`BLOB_WRITERS` threads (fsync waits and zstd
        release the GIL), all durable before this returns. The digests are pending until
        :meth:`committed` or :meth:`abandoned` is called for them: call exactly one of the two once
        the step file's commit succeeded or failed (on an error here they are released already).
        """
        import torch

        stats = SaveStats()
        digests: list[str] = []
        new: dict[str, tuple[memoryview, int]] = {}
        new_codec: Codec = "zstd" if self.compression == "zstd" else "raw"

        def replace(obj: Any) -> Any | None:
            if not isinstance(obj, torch.Tensor) or not externalizable(obj):
                return None
            data = tensor_bytes(obj)
            digest = digest_of(data)
            with self._lock:
                self._pending[digest] += 1  # from here on no collection removes it
                digests.append(digest)
                codec = self.known().get(digest)
            if codec is None and digest not in new:
                new[digest] = (data, obj.element_size())
            elif codec is None:
                stats.blobs_reused += 1  # the same bytes twice in one save (tied weights)
            else:
                stats.blobs_reused += 1
            stats.tensors += 1
            stats.bytes_referenced += data.nbytes
            return BlobRef(digest, obj.dtype, tuple(obj.shape), data.nbytes, codec or new_codec).to_record()

        try:
            out: dict[str, Any] = map_tensors(dict(payload), replace)
            self._write_all(new, new_codec, stats)
        except BaseException:
            self.abandoned(digests)
            raise
        out[REFS_KEY] = sorted(set(digests))
        self.last_save = stats
        return out, digests

    def _write_all(self, new: dict[str, tuple[memoryview, int]], codec: Codec, stats: SaveStats) -> None:
        """Write the blobs ``new`` (digest -> raw bytes, element size), each atomically and durably."""
        if len(new) <= 1:
            sizes = [self._write_blob(d, data, size, codec) for d, (data, size) in new.items()]
        else:
            with ThreadPoolExecutor(max_workers=min(BLOB_WRITERS, len(new))) as pool:
                futures = [
                    pool.submit(self._write_blob, d, data, size, codec) for d, (data, size) in new.items()
                ]
                sizes = [f.result() for f in futures]  # every write finished (or failed) when the pool closes
        stats.blobs_written += len(new)
        stats.bytes_written += sum(sizes)
        stats.raw_bytes_written += sum(data.nbytes for data, _ in new.values())

    def _write_blob(self, digest: str, data: memoryview, element_size: int, codec: Codec) -> int:
        """Write one blob (compressed with ``codec``); returns the bytes stored."""
        body: bytes | memoryview = data
        if codec == "zstd":
            body = codec_module().compress_tensor_bytes(data, element_size, self.level)
        path = blob_path(self.root, digest, codec)
        self.storage.makedirs(path.parent)
        written = self.storage.write_atomic(path, _bytes_producer(body))
        with self._lock:
            self.known()[digest] = codec
        return written.bytes

    def committed(self, key: tuple[str, int], digests: Iterable[str]) -> SweepResult:
        """The checkpoint ``key`` (exp_hash, step) committed referencing ``digests``: count them, release
        the pending marks, and remove the blobs an earlier version of the same step alone referenced."""
        digests = list(digests)
        with self._lock:
            zeroed = self._set_refs(key, frozenset(digests))
            self._release(digests)
            return self._remove_unreferenced(zeroed)

    def abandoned(self, digests: Iterable[str]) -> None:
        """A save failed before its commit: its blobs are no longer pending (orphans until a sweep)."""
        with self._lock:
            self._release(list(digests))

    def _release(self, digests: list[str]) -> None:
        for d in digests:
            self._pending[d] -= 1
            if self._pending[d] <= 0:
                del self._pending[d]

    # -- references -----------------------------------------------------------------------------
    def ensure_index(self, entries: Callable[[], Iterable[tuple[str, CheckpointEntry | None]]]) -> bool:
        """Count the references of every committed checkpoint (once); True when that built the index.

        ``entries``: every committed (exp_hash, entry) of the root (entry None: an unreadable manifest).
        A step file or manifest that cannot be read marks the index incomplete: nothing is collected
        until the writer reopens (or the checkpoint is deleted).
        """
        with self._lock:
            if self._refs is not None:
                return False
            refs: dict[tuple[str, int], frozenset[str]] = {}
            counts: Counter[str] = Counter()
            incomplete: set[tuple[str, int]] = set()
            for exp_hash, entry in entries():
                if entry is None:  # an unreadable manifest: any blob may be its checkpoints'
                    log.warning(
                        "weightslab: the manifest of %s cannot be read; no blob is collected", exp_hash
                    )
                    incomplete.add((exp_hash, -1))
                    continue
                key = (exp_hash, entry.step)
                try:
                    found = frozenset(self._entry_refs(exp_hash, entry))
                except (OSError, WeightslabError) as exc:
                    log.warning(
                        "weightslab: cannot read the blob references of %s step %d (%s); no blob is "
                        "collected until it is readable or deleted",
                        exp_hash,
                        entry.step,
                        exc,
                    )
                    incomplete.add(key)
                    continue
                refs[key] = found
                counts.update(found)
            self._refs, self._counts, self._incomplete = refs, counts, incomplete
            return True

    def _entry_refs(self, exp_hash: str, entry: CheckpointEntry) -> list[str]:
        """The digests a committed checkpoint's step file references (none for a sharded one)."""
        from weightslab.format.stepfile import load_torch_file  # torch: only once blobs are collected

        if entry.shards:
            return []
        path = self.layout.experiment(exp_hash).resolve(entry.file)
        data = load_torch_file(self.storage.local_file(path), what="step file", mmap=True)
        return referenced_digests(data)

    def invalidate_index(self) -> None:
        """Forget the counts (checkpoints were committed from elsewhere); the next collection rebuilds them."""
        with self._lock:
            self._refs = None
            self._counts = Counter()
            self._incomplete = set()
            self._known = None

    def _set_refs(self, key: tuple[str, int], digests: frozenset[str]) -> list[str]:
        if self._refs is None:
            return []  # built from the committed files when first needed, this commit included
        old = self._refs.get(key, frozenset())
        self._refs[key] = digests
        self._incomplete.discard(key)
        self._counts.update(digests)
        return self._decrement(old)

    def _decrement(self, digests: Iterable[str]) -> list[str]:
        zeroed = []
        for d in digests:
            self._counts[d] -= 1
            if self._counts[d] <= 0:
                del self._counts[d]
                zeroed.append(d)
        return zeroed

    def deleted(self, key: tuple[str, int]) -> SweepResult:
        """Checkpoint ``key`` is gone (entry and step file): remove the blobs only it referenced."""
        with self._lock:
            if self._refs is None:
                return SweepResult()
            self._incomplete.discard(key)
            return self._remove_unreferenced(self._decrement(self._refs.pop(key, frozenset())))

    def _remove_unreferenced(self, digests: Iterable[str]) -> SweepResult:
        result = SweepResult()
        if self._incomplete:
            return result  # a checkpoint whose references are unknown may use any blob
        known = self.known()
        for d in digests:
            if self._counts.get(d, 0) > 0 or self._pending.get(d, 0) > 0 or d not in known:
                continue
            path = blob_path(self.root, d, known[d])
            try:
                size = self.storage.size(path)
            except FileNotFoundError:
                size = 0
            self.storage.remove(path)
            del known[d]
            result.removed.append((path, size))
        return result

    def sweep(self, entries: Callable[[], Iterable[tuple[str, CheckpointEntry | None]]]) -> SweepResult:
        """Remove every blob no committed checkpoint references (orphans of crashes included), and the
        temp files of blob writes a crash interrupted (only while no save is in flight here)."""
        with self._lock:
            self.ensure_index(entries)
            result = self._remove_unreferenced(list(self.known()))
            if not self._pending:
                for path in list(self.storage.files_under(blobs_dir(self.root))):
                    if TMP_MARKER in path.name:
                        try:
                            size = self.storage.size(path)
                        except FileNotFoundError:
                            continue
                        self.storage.remove(path)
                        result.removed.append((path, size))
            return result

    @property
    def complete(self) -> bool:
        """Whether every committed checkpoint's references are known (else nothing is collected)."""
        return not self._incomplete

    def referenced(self) -> set[str]:
        """The digests the committed checkpoints reference (empty before :meth:`ensure_index`)."""
        with self._lock:
            return set(self._counts)


def committed_entries(manifests: Any) -> Callable[[], Iterable[tuple[str, CheckpointEntry | None]]]:
    """Every committed (exp_hash, entry) of a root, from its :class:`ManifestStore`, read when called.

    An experiment whose manifest cannot be read yields (exp_hash, None): its references are unknown.
    """

    def entries() -> Iterable[tuple[str, CheckpointEntry | None]]:
        for h in manifests.experiments():
            try:
                m = manifests.read(h)
            except (ManifestError, OSError):
                yield h, None
                continue
            for entry in m.checkpoints:
                yield h, entry

    return entries


def _bytes_producer(data: bytes | memoryview) -> Callable[[HashingWriter], None]:
    def produce(writer: HashingWriter) -> None:
        writer.write(data)

    return produce
