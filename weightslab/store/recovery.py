"""Crash recovery for a checkpoint root: leftovers, lost or broken manifests, interrupted replacements.

Functions over a :class:`~weightslab.store.manager.CheckpointManager`, which exposes
them as methods; a writer runs :func:`clean_leftovers` when it opens a root. Every rule about what a crash can leave behind lives here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightslab.errors import CheckpointFormatError, CheckpointNotFoundError, ManifestError
from weightslab.format.journal import read_events
from weightslab.format.layout import TMP_MARKER, parse_step_file
from weightslab.format.manifest import CheckpointEntry, Manifest, ParentRef, PendingReplacement
from weightslab.format.stepfile import load_step_file
from weightslab.util.names import is_hash

if TYPE_CHECKING:
    from weightslab.store.manager import CheckpointManager

log = logging.getLogger("weightslab")


def find_leftovers(manager: CheckpointManager) -> tuple[list[Path], list[str]]:
    """What a writer cleans on opening, found without touching anything: (files, manifests to rebuild).

    Leftovers are temp files, step files without a manifest entry, and, in a folder without a
    manifest and without step files (a crash while creating an experiment), the files named after
    its hash. A broken manifest, or a lost one next to step files, is rebuilt from the step files
    that verify; for those only temp files are listed, since which step files verify is known
    only once they are read.
    """
    found: list[Path] = []
    rebuild: list[str] = []
    for name in manager.storage.listdir(manager.layout.checkpoints_dir):
        if not is_hash(name) or not (manager.layout.checkpoints_dir / name).is_dir():
            continue
        exp = manager.experiment(name)
        escaping = exp.escaping_folders()
        if escaping:
            # cleaning deletes files in these folders: never follow a symlink out of the experiment
            log.error(
                "weightslab: %s is left as it is: %s",
                name,
                "; ".join(f"{folder} is a symlink to {real}" for folder, real in escaping.items()),
            )
            continue
        has_steps = any(parse_step_file(f) for f in manager.storage.listdir(exp.model_dir))
        try:
            # exists(), not is_file(): a manifest that cannot be read (permissions, not a file) is an
            # error for the user to fix, never a reason to rebuild it over
            m: Manifest | None = manager.manifest(name) if exp.manifest.exists() else None
            # step files are written only once the manifest exists: it was lost, not never written
            broken = m is None and has_steps
        except ManifestError:
            m, broken = None, True
        if broken:
            rebuild.append(name)
            found += [exp.model_dir / f for f in manager.storage.listdir(exp.model_dir) if TMP_MARKER in f]
            continue
        listed = {e.file for e in m.checkpoints} if m else set()
        for sub in (exp.model_dir, exp.hp_dir, exp.dir):
            for fname in manager.storage.listdir(sub):
                path = sub / fname
                if not path.is_file():
                    continue
                ours = TMP_MARKER in fname or parse_step_file(fname) is not None
                if m is None and sub != exp.dir:
                    ours = ours or fname.startswith(name)
                if ours and exp.relative(path) not in listed:
                    found.append(path)
    return found, rebuild


def clean_leftovers(manager: CheckpointManager) -> list[Path]:
    """Rebuild lost or broken manifests, finish interrupted replacements, remove crash leftovers."""
    journal = manager._require_writer()
    _, rebuild = find_leftovers(manager)
    for name in rebuild:
        log.error(
            "weightslab: the manifest of %s is missing or broken; rebuilding it from the step files that verify",
            name,
        )
        rebuild_manifest(manager, name)
    for name in manager.experiments():
        with contextlib.suppress(ManifestError):
            settle_pending(manager, manager.manifest(name))
    removed, _ = find_leftovers(manager)
    for path in removed:
        manager.storage.remove(path)
    for name in manager.storage.listdir(manager.layout.checkpoints_dir):
        exp_dir = manager.layout.checkpoints_dir / name
        if is_hash(name) and exp_dir.is_dir() and not (exp_dir / "manifest.json").exists():
            exp = manager.experiment(name)
            for d in (exp.model_dir, exp.hp_dir, exp.data_dir, exp.dir):
                with contextlib.suppress(OSError):
                    d.rmdir()  # only empty folders go
    if removed:
        journal.append("leftovers_removed", files=[str(p.relative_to(manager.root)) for p in removed])
        log.info("weightslab: removed %d crash leftover(s) under %s", len(removed), manager.root)
    return removed


def settle_pending(manager: CheckpointManager, m: Manifest) -> Manifest:
    """Finish or undo replacements that a crash interrupted."""
    changed = False
    for entry in m.checkpoints:
        if entry.pending is None:
            continue
        path = manager.experiment(m.exp_hash).resolve(entry.file)
        try:
            size, digest = manager.storage.checksum(path)
        except FileNotFoundError:
            continue
        if (size, digest) == (entry.pending.bytes, entry.pending.xxh3_128):
            fixed = _with_pending(entry, None, bytes=size, xxh3_128=digest)
        else:
            fixed = _with_pending(entry, None)
        m = m.with_entry(fixed)
        changed = True
    if changed:
        with manager._lock:
            manager._write_manifest(m)
    return m


def rebuild_manifest(manager: CheckpointManager, exp_hash: str) -> Manifest:
    """Rebuild a lost or broken manifest from the step files that load and match.

    Each step file is opened with ``weights_only=True`` and kept when its format, hash and step
    agree with its name; its entry gets a fresh checksum. Parent and hashes come from the journal.
    The broken file is kept beside it as ``manifest.json.broken-<time>``; nothing is silently emptied.
    """
    journal = manager._require_writer()
    exp = manager.experiment(exp_hash)
    created = None
    journalled: dict[int, str] = {}  # step -> the checksum its last save recorded
    commit_rank: dict[int, int] = {}  # step -> the position of its last save in the journal
    for index, record in enumerate(read_events(manager.layout.events_file)):
        if record.get("exp_hash") != exp_hash:
            continue
        if record["event"] == "experiment_created":
            created = record
        elif record["event"] == "checkpoint_saved" and isinstance(record.get("xxh3_128"), str):
            journalled[int(record["step"])] = record["xxh3_128"]
            commit_rank[int(record["step"])] = index
    parent = None
    if created and isinstance(created.get("parent"), dict):
        p = created["parent"]
        parent = ParentRef.from_dict(p)
    entries: list[CheckpointEntry] = []
    for fname in manager.storage.listdir(exp.model_dir):
        parsed = parse_step_file(fname)
        if parsed is None or parsed[0] != exp_hash:
            continue
        path = exp.model_dir / fname
        try:
            data = load_step_file(path, mmap=True)
            if data.get("exp_hash") != exp_hash or data.get("step") != parsed[1]:
                raise CheckpointFormatError(f"{path} holds {data.get('exp_hash')} step {data.get('step')}")
            size, digest = manager.storage.checksum(path)
            if parsed[1] in journalled and journalled[parsed[1]] != digest:
                raise CheckpointFormatError(
                    f"its xxh3_128 {digest} differs from the journalled {journalled[parsed[1]]}"
                )
        except (CheckpointFormatError, CheckpointNotFoundError, OSError) as exc:
            log.warning(
                "weightslab: %s does not verify and is left out of the rebuilt manifest: %s", path, exc
            )
            continue
        metrics = {
            k: (float(v) if v is not None else None) for k, v in dict(data.get("metrics") or {}).items()
        }
        entries.append(
            CheckpointEntry(
                step=parsed[1],
                file=exp.relative(path),
                bytes=size,
                xxh3_128=digest,
                created=float(data.get("created") or path.stat().st_mtime),
                trigger=str(data.get("trigger", "step")),
                metrics=metrics,
                description="recovered by rebuild_manifest",
            )
        )
    kept_as = None
    with manager._lock:
        if exp.manifest.exists():
            kept_as = exp.manifest.with_name(f"manifest.json.broken-{int(time.time())}")
            exp.manifest.replace(kept_as)
        m = Manifest(
            exp_hash=exp_hash,
            architecture_hash=str((created or {}).get("architecture_hash", "unknown")),
            hyperparams_hash=str((created or {}).get("hyperparams_hash", "unknown")),
            created=float((created or {}).get("time", time.time())),
            parent=parent,
            retention=dict((created or {}).get("retention") or {}),
            checkpoints=_in_journalled_order(entries, commit_rank),
        )
        manager._write_manifest(m)
    journal.append(
        "manifest_rebuilt",
        exp_hash=exp_hash,
        recovered=[e.step for e in m.checkpoints],
        kept_broken_as=None if kept_as is None else str(kept_as.relative_to(manager.root)),
    )
    log.warning("weightslab: rebuilt the manifest of %s with %d checkpoint(s)", exp_hash, len(m.checkpoints))
    return m


def _with_pending(
    entry: CheckpointEntry, pending: PendingReplacement | None, **changes: Any
) -> CheckpointEntry:
    return dataclasses.replace(entry, pending=pending, **changes)


def _in_journalled_order(entries: list[CheckpointEntry], rank: dict[int, int]) -> list[CheckpointEntry]:
    """Entries with their commit order from the journal (step order where it is silent); an entry that a
    later commit at a smaller step went back from is abandoned."""
    ordered = sorted(entries, key=lambda e: (rank.get(e.step, -1), e.step))
    out: list[CheckpointEntry] = []
    for seq, e in enumerate(ordered, start=1):
        later_steps = [x.step for x in ordered[seq:]]
        out.append(dataclasses.replace(e, seq=seq, abandoned=any(s < e.step for s in later_steps)))
    return sorted(out, key=lambda e: e.step)
