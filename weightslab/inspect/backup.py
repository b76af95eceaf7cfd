"""``weightslab backup``: copy the checkpoints that matter to a second root.

By default the critical checkpoints of every experiment are copied: the newest of the live run and
the best by the monitor the experiment's retention records (``monitor``/``mode`` override it);
``all_checkpoints`` copies every committed one, ``experiments`` limits the experiments and
``checkpoints`` names single ones. The destination (a folder or ``s3://bucket/prefix``) becomes a
weightslab root of its own: ``weightslab verify``, ``ls``, ``compare`` and ``export`` read it, and a
checkpoint system opened on it resumes. Restoring is opening it: point ``root_log_dir`` at the
backup (or back it up again to a new place).

Order, so that an interrupted backup never leaves a checkpoint without its bytes:

1. every file is read from the source and checked against its manifest entry (a corrupt source
   file is reported, never copied), written to ``logs/backup-staging/`` of the destination, where no
   reader looks, and read back from there and checked again;
2. per experiment, a new one first gets its config and architecture files, then the staged files
   are renamed into ``model/`` (a step the destination holds in another version is first marked as
   being replaced, so either version verifies meanwhile);
3. only then is the experiment's manifest committed with the new entries, through the manager's
   :meth:`~weightslab.store.commits.Committing.commit_copied` (which checks each placed file's size
   first, and journals the commit).

With ``prune``, once every experiment is committed, the copies that are no longer chosen are deleted
(entry first), except the checkpoints a child experiment in the destination continued from; a run
in which any checkpoint could not be copied prunes nothing (the old copies may be the best there is).

A run killed in step 1 leaves no trace a reader sees: the destination verifies as before, and the
next run clears the staging folder and copies again. Killed in step 2, the renamed files of an
experiment new to the destination are invisible too (it has no manifest yet: the next run's open
rebuilds one from them, as after any crash, and completes it); in an experiment the destination
already had, ``weightslab verify`` reports them as orphaned until the next run (or any writer)
opens the destination and removes them, exactly as for a training save killed between its file and
its commit. Step 2 is renames only, so that window is short.

Copies already in the destination with the same checksum and size are skipped (an interrupted run
resumes where it stopped); with ``verify_existing`` their bytes are read again, and one that does not
match is copied again. The destination's writer lock (an flock, or the lease on an object store) is
held for the whole run, so a second backup or a training on it gets RootLockedError; the source is
only read and needs no lock, so a training may keep writing it. What is copied is what the plan read
from the source's manifests: a checkpoint its retention deletes meanwhile is a ``failed`` item (and
nothing is pruned), and a step saved again meanwhile is copied in its new version.

What is chosen, and the dry run, are :mod:`weightslab.inspect.backup_plan`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import xxhash

from weightslab.errors import (
    CheckpointCorruptedError,
    CheckpointNotFoundError,
    ConfigError,
    ManifestError,
    RootError,
    UnsafePathError,
)
from weightslab.format.layout import ExperimentLayout
from weightslab.format.manifest import CheckpointEntry, Manifest, PendingReplacement
from weightslab.inspect import NullTracker, Tracker, backup_plan
from weightslab.inspect.backup_plan import DAMAGED, Action, BackupItem, BackupResult, Planned
from weightslab.inspect.experiments import Mode
from weightslab.storage.base import Storage
from weightslab.storage.open import display, open_storage
from weightslab.store.blob_copy import copy_referenced_blobs
from weightslab.store.manager import CheckpointManager

STAGING = "backup-staging"
"""The folder under the destination's ``logs/`` where copies wait until they are placed."""


# Over 60 lines on purpose: the plan, the dry run and the real run share the plan and the result.
def backup_root(
    source: CheckpointManager,
    destination: str | os.PathLike[str],
    *,
    experiments: Iterable[str] | None = None,
    all_checkpoints: bool = False,
    checkpoints: Iterable[tuple[str, int]] | None = None,
    tagged: str | None = None,
    prune: bool = False,
    monitor: str | None = None,
    mode: Mode | None = None,
    dry_run: bool = False,
    verify_existing: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    durable: bool = True,
    tracker: Tracker | None = None,
) -> BackupResult:
    """Back the critical checkpoints of ``source`` up to the root ``destination``.

    ``experiments``: hashes or prefixes (default: all); ``checkpoints``: (hash, step) pairs to copy
    instead of the critical ones (exactly those); ``tagged``: also copy every checkpoint carrying this
    tag; ``prune``: delete copies in the destination (of the experiments backed up) that are no longer
    chosen, once everything is committed (never one carrying ``tagged``, never a branch point, and not
    at all when a copy failed); ``verify_existing``: re-read the copies already there and copy again
    those that do not match. ``storage_options`` are the destination's (an ``s3://`` one). Raises
    ConfigError when the destination is the source or lies inside it (or the reverse), RootError when
    it is a non-empty folder that is not a weightslab root, RootLockedError when another process
    writes it; a source checkpoint that cannot be copied is a ``failed`` item, not an exception.
    """
    tracker = tracker or NullTracker()
    if not isinstance(destination, str):
        destination = Path(destination)
    dest_root, dest_storage = open_storage(destination, storage_options=storage_options, durable=durable)
    result = BackupResult(
        source=display(source.storage, source.root),
        destination=display(dest_storage, dest_root),
        dry_run=dry_run,
    )
    _check_apart(source, dest_root, dest_storage)
    is_root = _check_destination(dest_root, dest_storage)
    plan = backup_plan.plan(source, experiments, all_checkpoints, checkpoints, tagged, monitor, mode, result)
    if dry_run:
        dest = CheckpointManager(destination, mode="r", storage_options=storage_options) if is_root else None
        for exp_hash, planned in plan.items():
            backup_plan.dry_run(dest, exp_hash, planned, (prune, tagged, verify_existing), result)
        return result
    with CheckpointManager(
        destination, mode="w", durable=durable, storage_options=storage_options
    ) as dest:  # the writer lock for the whole run
        staging = dest.layout.logs_dir / STAGING
        _clear(dest.storage, staging)  # what an interrupted run staged: copied again if still wanted
        for planned in plan.values():
            _backup_experiment(source, dest, planned, staging, verify_existing, result, tracker)
        _clear(dest.storage, staging)
        if prune:
            _prune(dest, plan, tagged, result)
        active = source.last_active()
        if active is not None and active in plan and dest.has_experiment(active):
            # a system opened on the backup resumes the experiment the source was training last
            dest.event("experiment_activated", exp_hash=active, reason="backup")
        dest.event(
            "backup_completed",
            source=result.source,
            copied=[[i.exp_hash, i.step] for i in result.items if i.action == "copied"],
            skipped=result.count("skipped"),
            pruned=result.count("pruned"),
            failed=[[i.exp_hash, i.step, i.detail] for i in result.failed],
        )
    return result


def _check_apart(source: CheckpointManager, dest_root: Path, dest_storage: Storage) -> None:
    """Refuse a destination that is the source, or inside it, or that holds it."""
    a = display(source.storage, source.root).rstrip("/")
    b = display(dest_storage, dest_root).rstrip("/")
    if "://" not in a and "://" not in b:
        a, b = os.path.realpath(a), os.path.realpath(b)
    if a == b or b.startswith(a + "/") or a.startswith(b + "/"):
        raise ConfigError(
            f"the backup destination {b} must lie outside the source root {a} (and not hold it); "
            "pass a sibling folder, for example <root>-backup"
        )


def _check_destination(root: Path, storage: Storage) -> bool:
    """Whether the destination is already a weightslab root; refuses a non-empty folder that is not one."""
    if storage.is_file(root):
        raise RootError(f"backup destination {display(storage, root)} is a file; pass a folder")
    names = storage.listdir(root)
    if "checkpoints" in names:
        return True
    if names:
        raise RootError(
            f"backup destination {display(storage, root)} is not empty and is not a weightslab root "
            f"(it holds {', '.join(names[:5])}); pass a new or empty folder, or an earlier backup"
        )
    return False


# Over 60 lines on purpose: the three steps of the module docstring, in order, for one experiment.
def _backup_experiment(
    source: CheckpointManager,
    dest: CheckpointManager,
    planned: Planned,
    staging: Path,
    verify_existing: bool,
    result: BackupResult,
    tracker: Tracker,
) -> None:
    """Copy the planned entries of one experiment (as the plan read them: the source is not re-read)."""
    src_m = planned.manifest
    exp_hash, reasons = src_m.exp_hash, planned.reasons
    try:
        dest_m = dest.manifest(exp_hash) if dest.has_experiment(exp_hash) else None
    except ManifestError as exc:  # a writer's open rebuilt what it could; this one it could not
        result.notes.append(f"experiment {exp_hash} not backed up: the destination's {exc}")
        return
    states = {
        s: backup_plan.existing_copy(dest, exp_hash, e, verify=verify_existing)
        for s, e in planned.entries.items()
    }
    todo = [e for s, e in planned.entries.items() if states[s] != "there"]
    kept = [backup_plan.as_copied(e, dest_m) for s, e in planned.entries.items() if states[s] == "there"]
    # 1. read, check and stage
    tracker.start(f"copying {exp_hash[:8]}", sum(e.bytes for e in todo))
    staged: list[CheckpointEntry] = []
    for entry in todo:
        try:
            staged.append(_stage_current(source, dest, exp_hash, entry, staging, tracker))
        except (CheckpointCorruptedError, UnsafePathError, OSError) as exc:
            result.items.append(
                BackupItem(exp_hash, entry.step, "failed", reasons[entry.step], entry.bytes, _why(exc))
            )
    if dest_m is None and not staged:
        return  # nothing to create the experiment for
    # 2. place: a new experiment's own files first, then the checkpoints (renames: read back in staging)
    exp = dest.experiment(exp_hash)
    if dest_m is None:
        _copy_experiment_files(source, dest, exp_hash, src_m, result)
    tracker.start(f"placing {exp_hash[:8]}", len(staged))
    for entry in staged:
        old = dest_m.entry(entry.step) if dest_m is not None else None
        if old is not None and (entry.shards or old.shards):  # a folder: never rewritten in place
            dest.delete(exp_hash, entry.step, reason="replaced by backup")
        elif old is not None:  # another version of this step: either verifies while it is swapped
            dest.mark_replacing(exp_hash, entry.step, PendingReplacement(entry.bytes, entry.xxh3_128))
        for relative in _files(entry):
            target = exp.dir.joinpath(*relative.split("/"))
            dest.storage.makedirs(target.parent)
            dest.storage.replace(staging / exp_hash / relative, target)
        tracker.advance()
    # 3. commit: the source's record of each checkpoint, with the bytes that were copied; a placed file
    # of another size raises CheckpointCorruptedError and stops the run (the storage is broken)
    dest.commit_copied(src_m, [*kept, *staged], placed=[e.step for e in staged], backup_of=result.source)
    for entry in staged:
        detail = DAMAGED + "; copied again" if states[entry.step] == "damaged" else ""
        result.items.append(
            BackupItem(exp_hash, entry.step, "copied", reasons[entry.step], entry.bytes, detail)
        )
    for entry in kept:
        result.items.append(BackupItem(exp_hash, entry.step, "skipped", reasons[entry.step], entry.bytes))


def _stage_current(
    source: CheckpointManager,
    dest: CheckpointManager,
    exp_hash: str,
    entry: CheckpointEntry,
    staging: Path,
    tracker: Tracker,
) -> CheckpointEntry:
    """:func:`_stage` the planned ``entry``, or the source's newer version of its step when the source
    saved it again meanwhile. Raises what :func:`_stage` raises, and CheckpointNotFoundError when the
    source deleted the step after the plan read it (a running training's retention)."""
    try:
        return _stage(source, dest, exp_hash, entry, staging, tracker)
    except (CheckpointCorruptedError, FileNotFoundError) as exc:
        try:
            now = source.manifest(exp_hash).entry(entry.step)
        except ManifestError:
            raise exc from None
        if now is None:
            raise CheckpointNotFoundError(
                f"{exp_hash}@{entry.step} was removed from the source meanwhile (a running training's "
                "retention); it is not in the backup"
            ) from None
        if (now.bytes, now.xxh3_128) == (entry.bytes, entry.xxh3_128):
            raise  # the file is not what its unchanged entry says: the source is damaged
        return _stage(source, dest, exp_hash, now, staging, tracker)


def _why(exc: Exception) -> str:
    """The detail of a ``failed`` item."""
    if isinstance(exc, FileNotFoundError) and not isinstance(exc, CheckpointNotFoundError):
        return (
            f"the source file {exc.filename} is missing, though its manifest entry is not; "
            "run `weightslab verify` on the source"
        )
    return str(exc)


def _prune(dest: CheckpointManager, plan: backup_plan.Plan, tagged: str | None, result: BackupResult) -> None:
    """Delete the copies no longer chosen (see :func:`~weightslab.inspect.backup_plan.prune_candidates`)."""
    if result.failed:
        result.notes.append(
            f"nothing pruned: {len(result.failed)} checkpoint(s) could not be copied, and the older "
            "copies may be the best the backup has; run the backup again"
        )
        return
    for exp_hash, planned in plan.items():
        for e in backup_plan.prune_candidates(dest, exp_hash, planned.reasons, tagged):
            dest.delete(exp_hash, e.step, reason="backup prune")
            result.items.append(BackupItem(exp_hash, e.step, "pruned", (), e.bytes))


def _files(entry: CheckpointEntry) -> list[str]:
    """The files of a checkpoint, relative to its experiment folder (every shard of a sharded one)."""
    return [r.file for r in entry.shards] if entry.shards else [entry.file]


def _stage(
    source: CheckpointManager,
    dest: CheckpointManager,
    exp_hash: str,
    entry: CheckpointEntry,
    staging: Path,
    tracker: Tracker,
) -> CheckpointEntry:
    """Copy the files of ``entry`` into ``staging``, each checked against the source's manifest first.

    Returns the entry as it will be committed (the size and checksum of the version copied, when the
    source was mid-replacement). Raises CheckpointCorruptedError for a source file that does not match.
    """
    src_exp = source.experiment(exp_hash)
    if entry.shards:
        checks = [(r.file, {(r.bytes, r.xxh3_128)}) for r in entry.shards]
    else:
        accepted = {(entry.bytes, entry.xxh3_128)}
        if entry.pending is not None:
            accepted.add((entry.pending.bytes, entry.pending.xxh3_128))
        checks = [(entry.file, accepted)]
    copied = entry
    for relative, accepted_versions in checks:
        path = src_exp.resolve(relative)
        data = source.storage.read_bytes(path)  # whole: the Storage protocol has no streaming read
        digest = xxhash.xxh3_128(data).hexdigest()
        if (len(data), digest) not in accepted_versions:
            raise CheckpointCorruptedError(
                path,
                entry.xxh3_128,
                digest,
                "the source file does not match its manifest entry, so it was not copied; "
                "run `weightslab verify` on the source",
            )
        target = staging / exp_hash / relative
        dest.storage.makedirs(target.parent)
        dest.storage.write_bytes_atomic(target, data)
        size, back = dest.storage.checksum(target)  # read back, as it is stored now
        if (size, back) != (len(data), digest):
            raise CheckpointCorruptedError(target, digest, back, "the copy read back differs from the source")
        if not entry.shards:
            copied = dataclasses.replace(entry, bytes=len(data), xxh3_128=digest)
            # a storage="dedup" step file: the blobs it references go first, durable before the commit
            copy_referenced_blobs(source, dest, target)
        tracker.advance(len(data))
    return copied


def _copy_experiment_files(
    source: CheckpointManager, dest: CheckpointManager, exp_hash: str, m: Manifest, result: BackupResult
) -> None:
    """The config YAML and the architecture files of a new experiment (the pickle checked against its record)."""
    src, dst = source.experiment(exp_hash), dest.experiment(exp_hash)
    for folder in (dst.model_dir, dst.hp_dir, dst.data_dir):
        dest.storage.makedirs(folder)
    for path in _experiment_files(src):
        try:
            data = source.storage.read_bytes(path)
        except FileNotFoundError:
            if path == src.config_yaml or (path == src.architecture_pickle and m.architecture is not None):
                result.notes.append(f"{exp_hash}: {path.name} is missing in the source; not copied")
            continue
        if path == src.architecture_pickle and m.architecture is not None:
            digest = xxhash.xxh3_128(data).hexdigest()
            if (len(data), digest) != (m.architecture.bytes, m.architecture.xxh3_128):
                result.notes.append(f"{exp_hash}: {path.name} does not match its manifest record; not copied")
                continue
        dest.storage.write_bytes_atomic(dst.dir / src.relative(path), data)


def _experiment_files(exp: ExperimentLayout) -> list[Path]:
    return [exp.config_yaml, exp.architecture_json, exp.architecture_text, exp.architecture_pickle]


def _clear(storage: Storage, folder: Path) -> None:
    """Remove ``folder`` (the staging area) and everything under it."""
    for name in storage.listdir(folder):
        path = folder / name
        if storage.is_dir(path):
            _clear(storage, path)
        else:
            storage.remove(path)
    with contextlib.suppress(OSError):
        storage.remove_dir(folder)


__all__ = ["STAGING", "Action", "BackupItem", "BackupResult", "backup_root"]
