"""Checking a root: each committed checkpoint's size and xxh3-128, and files no manifest lists.

:func:`verify_entry` is the one check every verified load goes through; :func:`verify_root` is what
``CheckpointManager.verify`` (and ``weightslab verify``) reports. A step file whose entry records
block digests (files over one block, written by this version) is checked block by block on every
core of a local root; any other file by its whole xxh3-128 on one core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from weightslab.errors import CheckpointCorruptedError, ManifestError, UnsafePathError
from weightslab.format.layout import TMP_MARKER, ExperimentLayout, parse_shard_dir, parse_step_file
from weightslab.format.manifest import BlockDigests, CheckpointEntry
from weightslab.storage.base import Storage
from weightslab.store.blob_check import BlobChecker
from weightslab.store.manifests import ManifestStore
from weightslab.util.digests import releases_gil


@dataclass(frozen=True)
class Problem:
    """One finding of :meth:`CheckpointManager.verify`."""

    kind: Literal["corrupt", "missing", "orphaned", "manifest", "unreadable", "unsafe"]
    exp_hash: str
    path: str
    step: int | None = None
    detail: str = ""


@dataclass
class VerifyReport:
    """What :meth:`CheckpointManager.verify` checked and found."""

    checked: int = 0
    ok: int = 0
    problems: list[Problem] = field(default_factory=list)
    writer_active: bool = False  # orphans are not reported while another process writes the root

    @property
    def healthy(self) -> bool:
        return not self.problems


def verify_entry(storage: Storage, exp: ExperimentLayout, entry: CheckpointEntry) -> Path:
    """Check the size and xxh3_128 of a step file (of every file of a sharded checkpoint); returns its
    path (the folder of a sharded one) or raises CheckpointCorruptedError naming the file."""
    if entry.shards:
        folder = exp.resolve(entry.file)
        for record in entry.shards:
            _verify_file(
                storage, exp.resolve(record.file), {(record.bytes, record.xxh3_128)}, record.xxh3_128
            )
        return folder
    path = exp.resolve(entry.file)
    blocks = entry.usable_blocks()
    by_blocks = getattr(storage, "block_checksums", None)  # a backend that can hash in parallel
    if blocks is not None and by_blocks is not None:
        _verify_blocks(storage, path, entry, blocks, by_blocks)
    else:
        _verify_file(storage, path, _accepted(entry), entry.xxh3_128)
    return path


BLOCK_MISMATCH = "<not computed>: a mismatch in block"
"""How a CheckpointCorruptedError's ``actual`` starts when one block's digest differed."""


def _verify_blocks(
    storage: Storage,
    path: Path,
    entry: CheckpointEntry,
    blocks: BlockDigests,
    by_blocks: Callable[[Path, int], tuple[int, list[str]]],
) -> None:
    """Raise CheckpointCorruptedError unless every block of the file at ``path`` has its recorded digest.

    The blocks cover every byte and the size is checked first, so this accepts what the whole
    file's xxh3-128 accepts (up to a 64-bit collision in a block), on every core at once.
    """
    _check_size(storage, path, _accepted(entry), entry.xxh3_128)
    try:
        size, found = by_blocks(path, blocks.block_bytes)
    except FileNotFoundError:  # deleted between the two looks (a writer's retention)
        raise CheckpointCorruptedError(path, entry.xxh3_128, "<missing>", "the file is gone") from None
    if size != entry.bytes:  # then ``found`` has one digest per recorded block (``usable_blocks``)
        raise CheckpointCorruptedError(
            path, entry.xxh3_128, "<not computed>", f"size is {size} bytes, manifest says {entry.bytes}"
        )
    for i, got in enumerate(found):
        check_block(path, entry, blocks, i, got)


def check_block(path: Path, entry: CheckpointEntry, blocks: BlockDigests, i: int, got: str) -> None:
    """Raise CheckpointCorruptedError naming block ``i`` (and its bytes) unless ``got`` is its digest."""
    want = blocks.xxh3_128_hi64[i]
    if want != got:
        start = i * blocks.block_bytes
        end = min(start + blocks.block_bytes, entry.bytes)
        raise CheckpointCorruptedError(
            path,
            entry.xxh3_128,
            f"{BLOCK_MISMATCH} {i + 1} of {len(blocks.xxh3_128_hi64)}",
            f"bytes {start}-{end} hash to {got}, the manifest records {want}",
        )


def verifies_in_parallel(storage: Storage, entry: CheckpointEntry) -> bool:
    """Whether :func:`verify_entry` checks ``entry``'s step file on several cores (its block digests
    on a backend that hashes blocks in parallel, with more than one core to hash on)."""
    if entry.usable_blocks() is None or getattr(storage, "block_checksums", None) is None:
        return False
    threads = getattr(storage, "hash_threads", None)
    return threads is not None and threads() > 1 and releases_gil()


def check_size(storage: Storage, path: Path, entry: CheckpointEntry) -> None:
    """The cheap half of :func:`verify_entry` for a step file at ``path``: its size alone.

    Raises CheckpointCorruptedError when the file is gone or its size is not one the entry accepts.
    """
    _check_size(storage, path, _accepted(entry), entry.xxh3_128)


def _accepted(entry: CheckpointEntry) -> set[tuple[int, str]]:
    """The (size, xxh3_128) pairs a step file of ``entry`` may have (two while it is being replaced)."""
    accepted = {(entry.bytes, entry.xxh3_128)}
    if entry.pending is not None:
        accepted.add((entry.pending.bytes, entry.pending.xxh3_128))
    return accepted


def _check_size(storage: Storage, path: Path, accepted: set[tuple[int, str]], digest_expected: str) -> None:
    expected = min(b for b, _ in accepted)
    try:
        size = storage.size(path)
    except FileNotFoundError:
        raise CheckpointCorruptedError(path, digest_expected, "<missing>", "the file is gone") from None
    if size not in {b for b, _ in accepted}:
        raise CheckpointCorruptedError(
            path, digest_expected, "<not computed>", f"size is {size} bytes, manifest says {expected}"
        )


def _verify_file(storage: Storage, path: Path, accepted: set[tuple[int, str]], digest_expected: str) -> None:
    """Raise CheckpointCorruptedError unless the file's (size, xxh3_128) is one of ``accepted``."""
    _check_size(storage, path, accepted, digest_expected)
    try:
        size, digest = storage.checksum(path)
    except FileNotFoundError:  # deleted between the two looks (a writer's retention)
        raise CheckpointCorruptedError(path, digest_expected, "<missing>", "the file is gone") from None
    if (size, digest) not in accepted:
        raise CheckpointCorruptedError(path, digest_expected, digest)


def verify_root(
    manifests: ManifestStore,
    hashes: list[str],
    *,
    writer_elsewhere: bool,
    on_entry: Callable[[CheckpointEntry], None] | None = None,
) -> VerifyReport:
    """Verify the experiments ``hashes``; see :meth:`CheckpointManager.verify` for the problem kinds."""
    report = VerifyReport(writer_active=writer_elsewhere)
    blobs = BlobChecker(manifests.storage, manifests.layout.root)
    for h in hashes:
        exp = manifests.layout.experiment(h)
        try:
            m = manifests.read(h)
        except ManifestError as exc:
            report.problems.append(Problem("manifest", h, str(exp.manifest), None, exc.reason))
            continue
        except OSError as exc:  # it exists (experiments() saw it) but cannot be opened
            report.problems.append(Problem("unreadable", h, str(exp.manifest), None, _os_detail(exc)))
            continue
        for entry in m.checkpoints:
            report.checked += 1
            problem = _entry_problem(manifests.storage, exp, entry)
            found = blobs.problem(exp, entry) if problem is None else None
            if found is not None:  # a dedup step file verifies, one of its blobs does not
                problem = Problem(found[0], h, found[1], entry.step, found[2])  # type: ignore[arg-type]
            if problem is None:
                report.ok += 1
            else:
                report.problems.append(problem)
            if on_entry is not None:
                on_entry(entry)
        escaping = exp.escaping_folders()
        for folder, real in escaping.items():
            report.problems.append(
                Problem(
                    "unsafe",
                    h,
                    str(folder),
                    None,
                    f"a symlink leads it to {real}, outside the experiment folder; gc refuses the root",
                )
            )
        if writer_elsewhere or exp.model_dir in escaping:
            # a temp or unlisted step file may be a write in flight, not a leftover; and the files of
            # a folder elsewhere are not this experiment's leftovers
            continue
        report.problems += _orphans(manifests.storage, exp, {e.file for e in m.checkpoints})
    return report


def _entry_problem(storage: Storage, exp: ExperimentLayout, entry: CheckpointEntry) -> Problem | None:
    """What is wrong with one committed checkpoint, or None when it verifies."""
    h = exp.exp_hash
    try:
        verify_entry(storage, exp, entry)
    except UnsafePathError as exc:
        return Problem("unsafe", h, str(exp.dir / entry.file), entry.step, f"refused: {exc.reason}")
    except CheckpointCorruptedError as exc:
        missing = exc.actual == "<missing>"
        detail = "file missing" if missing else _corrupt_detail(storage, exc, entry.bytes)
        return Problem("missing" if missing else "corrupt", h, exc.path, entry.step, detail)
    except OSError as exc:  # FileNotFoundError became "missing" above; this is the rest
        return Problem("unreadable", h, str(exp.dir / entry.file), entry.step, _os_detail(exc))
    return None


def _orphans(storage: Storage, exp: ExperimentLayout, listed: set[str]) -> list[Problem]:
    """Temp files and step files of ``exp`` without a manifest entry."""
    try:
        names = storage.listdir(exp.model_dir)
    except OSError as exc:
        return [Problem("unreadable", exp.exp_hash, str(exp.model_dir), None, _os_detail(exc))]
    found = []
    for name in names:
        parsed = parse_step_file(name) or parse_shard_dir(name)
        if TMP_MARKER in name:
            detail = "interrupted write"
        elif parsed and f"model/{name}" not in listed:
            detail = "no manifest entry"
        else:
            continue
        found.append(
            Problem("orphaned", exp.exp_hash, str(exp.model_dir / name), parsed and parsed[1], detail)
        )
    return found


def _os_detail(exc: OSError) -> str:
    """``cannot be read (PermissionError: Permission denied)``: a verify detail (the path has its own column)."""
    return f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})"


def _corrupt_detail(storage: Storage, exc: CheckpointCorruptedError, expected_bytes: int) -> str:
    if exc.actual == "<not computed>":  # the size alone already differs
        try:
            size = storage.size(Path(exc.path))
        except OSError:
            return "size differs from the manifest"
        return f"size {size} bytes, expected {expected_bytes}"
    if exc.actual.startswith(BLOCK_MISMATCH):
        return f"checksum mismatch in block {exc.actual[len(BLOCK_MISMATCH) :].strip()}: {getattr(exc, 'detail', '')}"
    return "checksum mismatch"
