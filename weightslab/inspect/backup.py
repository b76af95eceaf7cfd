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
   are renamed into ``model/`` (their sizes checked there);
3. only then is the experiment's manifest committed with the new entries (and, with ``prune``, the
   copies that are no longer critical are deleted, entry first).

A run killed in step 1 leaves no trace a reader sees: the destination verifies as before, and the
next run clears the staging folder and copies again. Killed in step 2, the renamed files of an
experiment new to the destination are invisible too (it has no manifest yet: the next run's open
rebuilds one from them, as after any crash, and completes it); in an experiment the destination
already had, ``weightslab verify`` reports them as orphaned until the next run (or any writer)
opens the destination and removes them, exactly as for a training save killed between its file and
its commit. Step 2 is renames only, so that window is short. Copies already in the destination with
the same checksum are skipped (an interrupted run resumes where it stopped). The destination's writer lock
(an flock, or the lease on an object store) is held for the whole run, so a second backup or a
training on it gets RootLockedError; the source is only read and needs no lock, so a training may
keep writing it (a checkpoint its retention deletes meanwhile is reported, not copied).

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

from weightslab.errors import CheckpointCorruptedError, ConfigError, ManifestError, RootError, UnsafePathError
from weightslab.format.layout import ExperimentLayout
from weightslab.format.manifest import CheckpointEntry, Manifest, PendingReplacement
from weightslab.inspect import NullTracker, Tracker, backup_plan
from weightslab.inspect.backup_plan import Action, BackupItem, BackupResult
from weightslab.inspect.experiments import Mode
from weightslab.storage.base import Storage
from weightslab.storage.open import display, open_storage
from weightslab.store.manager import CheckpointManager, _with_pending

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
    storage_options: Mapping[str, Any] | None = None,
    durable: bool = True,
    tracker: Tracker | None = None,
) -> BackupResult:
    """Back the critical checkpoints of ``source`` up to the root ``destination``.

    ``experiments``: hashes or prefixes (default: all); ``checkpoints``: (hash, step) pairs to copy
    instead of the critical ones; ``tagged``: also copy every checkpoint carrying this tag;
    ``prune``: delete copies in the destination (of the experiments backed up) that are no longer
    chosen, after the new ones are committed (never one carrying ``tagged``). ``storage_options`` are
    the destination's (an ``s3://`` one). Raises ConfigError when the destination is the source or
    lies inside it (or the reverse), RootError when it is a non-empty folder that is not a weightslab
    root, RootLockedError when another process writes it; a source checkpoint that cannot be copied
    is a ``failed`` item, not an exception.
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
        for exp_hash, wanted in plan.items():
            backup_plan.dry_run(source, dest, exp_hash, wanted, prune, tagged, result)
        return result
    with CheckpointManager(
        destination, mode="w", durable=durable, storage_options=storage_options
    ) as dest:  # the writer lock for the whole run
        staging = dest.layout.logs_dir / STAGING
        _clear(dest.storage, staging)  # what an interrupted run staged: copied again if still wanted
        for exp_hash, wanted in plan.items():
            _backup_experiment(source, dest, exp_hash, wanted, staging, (prune, tagged), result, tracker)
        _clear(dest.storage, staging)
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
    exp_hash: str,
    wanted: dict[int, tuple[str, ...]],
    staging: Path,
    pruning: tuple[bool, str | None],
    result: BackupResult,
    tracker: Tracker,
) -> None:
    """Copy ``wanted`` of one experiment; ``pruning``: (prune, the tag that spares a copy from it)."""
    src_m = source.manifest(exp_hash)
    try:
        dest_m = dest.manifest(exp_hash) if dest.has_experiment(exp_hash) else None
    except ManifestError as exc:  # a writer's open rebuilt what it could; this one it could not
        result.notes.append(f"experiment {exp_hash} not backed up: the destination's {exc}")
        return
    entries = {step: e for step in wanted if (e := src_m.entry(step)) is not None}
    todo = [e for e in entries.values() if not backup_plan.already_there(dest, exp_hash, e)]
    kept = [backup_plan.as_copied(e, dest_m) for e in entries.values() if e not in todo]
    # 1. read, check and stage
    tracker.start(f"copying {exp_hash[:8]}", sum(e.bytes for e in todo))
    staged: list[CheckpointEntry] = []
    for entry in todo:
        try:
            staged.append(_stage(source, dest, exp_hash, entry, staging, tracker))
        except (CheckpointCorruptedError, UnsafePathError, OSError) as exc:
            detail = (
                "removed from the source meanwhile (a running training's retention)"
                if isinstance(exc, FileNotFoundError)
                else str(exc)
            )
            result.items.append(
                BackupItem(exp_hash, entry.step, "failed", wanted[entry.step], entry.bytes, detail)
            )
    if dest_m is None and not staged:
        return  # nothing to create the experiment for
    # 2. place: a new experiment's own files first, then the checkpoints (renames: read back in staging)
    exp = dest.experiment(exp_hash)
    if dest_m is None:
        _copy_experiment_files(source, dest, exp_hash, src_m, result)
    tracker.start(f"placing {exp_hash[:8]}", len(staged))
    replaced: set[int] = set()
    for entry in staged:
        old = dest_m.entry(entry.step) if dest_m is not None else None
        if dest_m is not None and old is not None:
            replaced.add(entry.step)
            if not entry.shards and not old.shards:
                # the destination holds another version of this step: either verifies while it is swapped
                dest_m = dest_m.with_entry(
                    _with_pending(old, PendingReplacement(entry.bytes, entry.xxh3_128))
                )
                dest.manifests.write(dest_m)
            else:  # a sharded checkpoint is a folder: never rewritten in place
                dest.delete(exp_hash, entry.step, reason="replaced by backup")
                dest_m = dest.manifest(exp_hash)
        for relative in _files(entry):
            target = exp.dir.joinpath(*relative.split("/"))
            dest.storage.makedirs(target.parent)
            dest.storage.replace(staging / exp_hash / relative, target)
        _check_sizes(dest, exp_hash, entry)  # CheckpointCorruptedError stops the run: the storage is broken
        tracker.advance()
    # 3. commit: the source's record of each checkpoint, with the bytes that were copied
    committed = _header(src_m, dest_m)
    for entry in [*kept, *staged]:
        committed = committed.with_entry(dataclasses.replace(entry, pending=None))
    created = dest_m is None
    dest.manifests.write(committed)
    if created:
        dest.event(
            "experiment_created",
            exp_hash=exp_hash,
            parent=None if src_m.parent is None else src_m.parent.to_dict(),
            reason=None if src_m.parent is None else src_m.parent.reason,
            architecture_hash=src_m.architecture_hash,
            hyperparams_hash=src_m.hyperparams_hash,
            retention=dict(src_m.retention),
            backup_of=result.source,
        )
    for entry in staged:
        dest.event(
            "checkpoint_saved",
            exp_hash=exp_hash,
            step=entry.step,
            trigger=entry.trigger,
            file=entry.file,
            bytes=entry.bytes,
            xxh3_128=entry.xxh3_128,
            metrics=entry.metrics,
            replaced=entry.step in replaced,
            backup_of=result.source,
        )
        result.items.append(BackupItem(exp_hash, entry.step, "copied", wanted[entry.step], entry.bytes))
    for entry in kept:
        result.items.append(BackupItem(exp_hash, entry.step, "skipped", wanted[entry.step], entry.bytes))
    prune, tagged = pruning
    if prune and not any(i.action == "failed" and i.exp_hash == exp_hash for i in result.items):
        # (after a failed copy the older copies stay: they may be the best the backup has)
        for e in committed.checkpoints:
            if backup_plan.prunable(e, wanted, tagged):
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
        data = source.storage.read_bytes(path)
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
        tracker.advance(len(data))
    return copied


def _check_sizes(dest: CheckpointManager, exp_hash: str, entry: CheckpointEntry) -> None:
    """After the renames: each file of ``entry`` is where its entry says, with its size."""
    exp = dest.experiment(exp_hash)
    records = [(r.file, r.bytes) for r in entry.shards] or [(entry.file, entry.bytes)]
    for relative, expected in records:
        path = exp.resolve(relative)
        size = dest.storage.size(path)
        if size != expected:
            raise CheckpointCorruptedError(
                path,
                entry.xxh3_128,
                "<not computed>",
                f"size is {size} bytes after the move, expected {expected}",
            )


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


def _header(src: Manifest, dest: Manifest | None) -> Manifest:
    """The destination's manifest with the source's record of the experiment (entries kept)."""
    return Manifest(
        exp_hash=src.exp_hash,
        architecture_hash=src.architecture_hash,
        hyperparams_hash=src.hyperparams_hash,
        created=src.created,
        parent=src.parent,
        retention=dict(src.retention),
        checkpoints=[] if dest is None else list(dest.checkpoints),
        architecture=src.architecture,
    )


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
