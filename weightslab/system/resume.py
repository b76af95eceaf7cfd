"""Finding what to resume: the walk up an experiment's parents, and the checkpoints to try, best first."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

from weightslab.errors import (
    CheckpointCorruptedError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    ConfigError,
    UnsafePathError,
)
from weightslab.format.manifest import CheckpointEntry, Manifest
from weightslab.format.stepfile import load_step_file
from weightslab.policy.retention import RetentionPolicy
from weightslab.storage.local import LocalStorage
from weightslab.store import split_check
from weightslab.store.manager import CheckpointManager
from weightslab.store.split_check import SplitCheck
from weightslab.store.verify import check_size, verifies_in_parallel, verify_entry
from weightslab.system.validation import check_step
from weightslab.system.verifying import Background

log = logging.getLogger("weightslab")

ResumeMode = Literal["latest", "best"] | int
Candidate = tuple[str, CheckpointEntry]


@dataclass(frozen=True)
class Link:
    """One experiment of a lineage, with the checkpoint its child branched from.

    ``branched_at`` is None for the experiment the walk started from; ``anchored`` is False for a
    parent the child branched from before that parent had any checkpoint.
    """

    exp_hash: str
    manifest: Manifest
    branched_at: int | None
    anchored: bool = True


def lineage(manager: CheckpointManager, exp_hash: str) -> Iterator[Link]:
    """``exp_hash``, then each parent in turn, while it exists (a cycle stops the walk)."""
    h: str | None = exp_hash
    upto: int | None = None
    anchored = True
    seen: set[str] = set()
    while h is not None and h not in seen and manager.has_experiment(h):
        seen.add(h)
        m = manager.manifest(h)
        yield Link(h, m, upto, anchored)
        h, upto = (m.parent.exp_hash, m.parent.checkpoint) if m.parent else (None, None)
        anchored = upto is not None


def chain_has_checkpoints(manager: CheckpointManager, exp_hash: str) -> bool:
    """Whether the experiment or any ancestor has a committed checkpoint."""
    return any(link.manifest.checkpoints for link in lineage(manager, exp_hash))


def latest_candidates(manager: CheckpointManager, exp_hash: str) -> list[Candidate]:
    """The live run of ``exp_hash`` newest first, then each ancestor from the checkpoint branched from."""
    out: list[Candidate] = []
    for link in lineage(manager, exp_hash):
        if not link.anchored:
            break  # the branch started before its parent had any checkpoint
        m, h = link.manifest, link.exp_hash
        if link.branched_at is None:  # the active experiment: its live run, newest commit first
            out += [(h, e) for e in reversed(m.live())]
        else:  # an ancestor: the checkpoint the branch continued from, and older ones
            out += [(h, e) for e in reversed(m.checkpoints) if e.step <= link.branched_at]
    return out


def candidates(
    manager: CheckpointManager,
    exp_hash: str,
    mode: ResumeMode,
    retention: RetentionPolicy,
    monitor: str | None,
) -> list[Candidate]:
    """The checkpoints to try for ``mode``, in order. ConfigError/CheckpointNotFoundError for "best"."""
    if mode == "latest":
        return latest_candidates(manager, exp_hash)
    if mode == "best":
        if not monitor:
            raise ConfigError("resume('best') needs monitor=<metric name> in the checkpoint system's options")
        m = manager.manifest(exp_hash)
        order = retention.best(m.checkpoints, len(m.checkpoints))
        found = [(exp_hash, e) for s in order if (e := m.entry(s)) is not None]
        if not found:
            raise CheckpointNotFoundError(
                f"no checkpoint of {exp_hash} recorded metric {monitor!r}; resume('latest') instead"
            )
        return found
    return [(exp_hash, manager.entry(exp_hash, check_step(mode)))]


class Restore(Protocol):
    """Puts a loaded step dict into the live objects: (data, its entry, its experiment), reading
    nothing before ``check`` verified the blocks holding it when one is given."""

    def __call__(
        self, data: dict[str, Any], entry: CheckpointEntry, exp_hash: str, /, check: SplitCheck | None = None
    ) -> None: ...


Defer = Callable[[Background[Any], CheckpointEntry, str], None]
"""Takes the checksum still running for a restored checkpoint: (the check, its entry, its experiment)."""


def load_first(
    manager: CheckpointManager,
    exp_hash: str,
    tried: list[Candidate],
    *,
    strict: bool,
    root: Path | Any,
    restore: Restore | None = None,
    defer: Defer | None = None,
    deferrable: tuple[str, int] | None = None,
    verify_first: Collection[tuple[str, int]] = (),
    split: bool = False,
) -> tuple[dict[str, Any], CheckpointEntry, str, list[str]]:
    """Load the first candidate that verifies: (data, entry, its experiment, files skipped).

    An unreadable file is journalled and skipped, or re-raised when ``strict`` (an explicit step).
    Raises CheckpointNotFoundError when none verifies.

    With ``restore``, the candidate is also restored, and its checksum is computed on a helper
    thread while its file is loaded and ``restore`` copies it into the live objects (see
    :func:`load_and_restore`). A mismatch found then is a skip like any other, and the next
    candidate is restored over the unverified state; if that candidate lacks the state of an object
    the unverified one wrote into, or none verifies, CheckpointNotFoundError says the live objects
    hold unverified state.

    With ``defer`` too, the candidate ``deferrable`` ((experiment, step)) is returned once restored,
    without waiting for its checksum, which is handed to ``defer``. The candidates in
    ``verify_first`` (journalled unreadable before) are verified before anything is restored, so a
    file that failed once is never restored unverified again. With ``split`` too, only the blocks
    of the optimizers' state tensors are left to ``defer``: everything else is verified before it is
    restored (:mod:`weightslab.store.split_check`).
    """
    skipped: list[str] = []
    unverified: str | None = None  # a file restored into the live objects that then failed its checksum
    covered: set[tuple[str, str]] = set()  # the objects it wrote into
    last: list[tuple[str, set[tuple[str, str]]]] = []  # the file restored last, and its objects

    def tracked(
        data: dict[str, Any], entry: CheckpointEntry, h: str, /, check: SplitCheck | None = None
    ) -> None:
        assert restore is not None
        lacking = covered - _objects(data)
        if lacking:  # they would keep the unverified bytes with only a warning: refuse instead
            names = ", ".join(f"{kind} {name!r}" for kind, name in sorted(lacking))
            raise CheckpointNotFoundError(
                f"{entry.file} of experiment {h} holds no state for {names}, which hold unverified state "
                f"from {unverified} (it failed its checksum after it was restored); do not train on "
                "them: resume() again once a checkpoint with their state verifies"
            )
        # before: a restore that fails part-way wrote some (through a split check: those it says)
        last.append((entry.file, _objects(data) if check is None else check.touched))
        restore(data, entry, h, check=check)

    for h, entry in tried:
        try:
            if restore is None:
                return manager.load_entry(h, entry, consolidate=False), entry, h, skipped
            # an explicit step (strict) is verified before anything is restored: its error then means
            # that nothing was touched, as the caller of resume(N) expects
            first = strict or (h, entry.step) in verify_first
            later = defer if (h, entry.step) == deferrable and not first else None
            data = load_and_restore(
                manager, h, entry, tracked, overlap=not first, defer=later, split=split or later is None
            )
            return data, entry, h, skipped
        except (CheckpointCorruptedError, CheckpointFormatError, UnsafePathError) as exc:
            if last and last[-1][0] == entry.file:
                unverified = entry.file
                covered |= last[-1][1]
            skipped.append(entry.file)
            log.warning("weightslab: skipping %s/%s: %s", h, entry.file, exc)
            manager.event("checkpoint_unreadable", exp_hash=h, step=entry.step, error=str(exc))
            if strict:
                raise
        except CheckpointNotFoundError:
            raise
        except Exception as exc:
            if unverified is None:
                raise
            raise CheckpointNotFoundError(
                f"{entry.file} of experiment {h} could not be restored ({type(exc).__name__}: {exc}) "
                f"after {unverified} failed its checksum: the registered objects hold unverified state "
                f"from {unverified}; do not train on them. Fix the cause above and resume() again"
            ) from exc
    held = (
        f"; the registered objects hold unverified state from {unverified}: do not train on them"
        if unverified is not None
        else ""
    )
    raise CheckpointNotFoundError(
        f"no checkpoint of experiment {exp_hash} in {root} verifies (tried {len(skipped)}: "
        f"{', '.join(skipped) or 'none'}); run `weightslab verify {root}` for details{held}"
    )


def _objects(data: dict[str, Any]) -> set[tuple[str, str]]:
    """(section, name) of every object whose state the step dict ``data`` holds."""
    sections = ("models", "optimizers", "schedulers", "extra", "hyperparams")
    return {(key, name) for key in sections for name in data.get(key, {}) or {}}


def load_and_restore(
    manager: CheckpointManager,
    exp_hash: str,
    entry: CheckpointEntry,
    restore: Restore,
    *,
    overlap: bool = True,
    defer: Defer | None = None,
    split: bool = True,
) -> dict[str, Any]:
    """Load ``entry``, restore it with ``restore`` and verify it, the checksum overlapping the rest.

    The step file's size is checked first (a truncated file is never parsed); its xxh3-128 is then
    computed on a helper thread (libxxhash releases the GIL) while this thread loads the file
    (``weights_only``: nothing in it runs) and ``restore`` copies it into the live tensors. The
    checksum is waited for before returning. Returns the step dict.

    Raises CheckpointCorruptedError when the checksum differs; if ``restore`` had run by then, the
    live objects hold the unverified bytes (the caller restores another checkpoint over them or
    says so). Any error of loading or restoring a file whose checksum differs is reported as that
    CheckpointCorruptedError. A sharded checkpoint is verified first and then restored (its DCP
    files are read by the restore itself), and so is a step file whose entry records block digests
    when the storage hashes them on several cores (every core checks its blocks, then the restore
    runs: quicker than one core's checksum beside the restore, which reads the same memory). With
    ``overlap=False`` the checksum is waited for before anything is restored. With ``defer``, the
    checksum starts on the helper thread once ``restore`` returned and is handed to ``defer``
    instead of waited for.

    With ``split`` (and ``overlap``), a step file with block digests on a local root goes through
    its split check (:mod:`weightslab.store.split_check`): the blocks ``restore`` reads are checked
    as it copies the model out of them, and only the blocks of optimizer state tensors are handed
    to ``defer`` (all checked before returning without it). A file that gets no split check is then
    checked whole before it is returned, even with ``defer``.
    """
    exp = manager.experiment(exp_hash)
    if split and overlap and not entry.shards and entry.usable_blocks() is not None:
        found = _split_restore(manager, exp_hash, entry, restore, defer)
        if found is not None:
            return found
    if split:
        defer = None  # a file without a split check is checked whole before it is restored or returned
    # a file with block digests is checked on every core first: faster than one core's checksum
    # beside the restore (both read the same memory), and nothing unverified is restored
    if entry.shards or not overlap or (defer is None and verifies_in_parallel(manager.storage, entry)):
        data = manager.load_entry(exp_hash, entry, consolidate=False)
        restore(data, entry, exp_hash)
        return data
    path = exp.resolve(entry.file)
    check_size(manager.storage, path, entry)
    check = partial(verify_entry, manager.storage, exp, entry)
    # deferred, the checksum starts once the restore is done: run beside it, both would fault in
    # pages of the same file and the restore, which resume() waits for, would take longer
    checking = Background(check) if defer is None else None
    try:
        data = load_step_file(path, mmap=True, storage=manager.storage, verify_blobs=True)
        restore(data, entry, exp_hash)
    except BaseException:
        # a checksum mismatch is the error to report, not what parsing it raised
        (checking.result if checking is not None else check)()
        raise
    if defer is not None:
        defer(Background(check), entry, exp_hash)
    elif checking is not None:
        checking.result()
    return data


def _split_restore(
    manager: CheckpointManager,
    exp_hash: str,
    entry: CheckpointEntry,
    restore: Restore,
    defer: Defer | None,
) -> dict[str, Any] | None:
    """Restore ``entry`` through its split check (see :func:`load_and_restore`); None, with nothing
    restored, on a backend without local block checks or for a file replaced while it was loaded. A
    file whose tensors the check cannot place (blob references) is checked whole, then restored.

    With ``defer``, the blocks holding nothing but optimizer state are handed to it, still to check;
    without, every block is checked before this returns. The model's tensors are copied while their
    blocks are hashed.
    """
    storage = manager.storage
    if not isinstance(storage, LocalStorage):
        return None  # an object store checks the whole file as it streams it
    exp = manager.experiment(exp_hash)
    path = exp.resolve(entry.file)
    check_size(storage, path, entry)
    whole = partial(verify_entry, storage, exp, entry)
    identity = storage.identity(path)
    try:
        data = load_step_file(path, mmap=True, storage=storage, verify_blobs=True)
    except Exception:
        whole()  # a checksum mismatch is the error to report, not what parsing it raised
        raise
    if storage.identity(path) != identity:
        return None  # replaced while torch opened it: which file it read is unknown
    check = split_check.plan(
        storage,
        path,
        entry,
        data,
        threads=storage.hash_threads(),
        defer_optimizers=defer is not None,
        identity=identity,
    )
    if check is None:  # tensors it cannot place (blob references): the whole file first, then the restore
        whole()
        restore(data, entry, exp_hash)
        return data
    try:
        restore(data, entry, exp_hash, check=check)
    except CheckpointCorruptedError:
        raise
    except Exception:
        whole()  # bytes not yet checked may explain the error: a mismatch is what to report
        raise
    if check.deferred_blocks:
        assert defer is not None  # plan() defers nothing without it
        defer(Background(check.rest), entry, exp_hash)
    return data
