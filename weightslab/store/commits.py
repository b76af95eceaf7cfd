"""Saving, replacing, annotating, going back, deleting and copying in checkpoints: the commit side.

A mixin of :class:`~weightslab.store.manager.CheckpointManager` (the methods keep their names there):
every change of a manifest entry happens here, after the bytes it names are durable.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from weightslab.errors import CheckpointCorruptedError, CheckpointNotFoundError, ConfigError
from weightslab.format.layout import TMP_MARKER, ExperimentLayout
from weightslab.format.manifest import BlockDigests, CheckpointEntry, Manifest, PendingReplacement
from weightslab.policy.retention import RetentionPolicy
from weightslab.storage.base import HashingWriter, Storage, WrittenFile
from weightslab.storage.local import LocalStorage
from weightslab.store import retention
from weightslab.store.blobs import committed_entries
from weightslab.store.recovery import _with_pending
from weightslab.store.sharded_commits import ShardedCommitting, journal_saved, torch_save_into

log = logging.getLogger("weightslab")


class Committing(ShardedCommitting):
    """The manager's methods that write checkpoints and their manifest entries."""

    # -- saving ---------------------------------------------------------------------------------
    def save(
        self,
        exp_hash: str,
        step: int,
        payload: Mapping[str, Any] | Callable[[HashingWriter], None],
        *,
        trigger: str,
        metrics: Mapping[str, float | None] | None = None,
        tags: Iterable[str] = (),
        description: str = "",
    ) -> CheckpointEntry:
        """Write the step file durably, then commit its manifest entry; returns the entry.

        ``payload`` is the step dict (serialised with ``torch.save``) or a function that writes the
        bytes. Saving a step that is already committed replaces it crash-safely: the entry records the
        pending replacement before the file is renamed over, so either version verifies.
        """
        journal = self._require_writer()
        exp = self.experiment(exp_hash)
        digests: list[str] = []
        if not callable(payload) and self.blobs.storage_mode == "dedup":
            # the blobs are durable before the step file that references them is written
            payload, digests = self.blobs.externalize(payload)
        try:
            entry, old, abandoned = self._write_and_commit(
                exp, step, payload, trigger, metrics, tags, description
            )
        except BaseException:
            self.blobs.abandoned(digests)
            raise
        swept = self.blobs.committed((exp_hash, step), digests)
        stats = self.blobs.last_save if digests else None
        journal_saved(
            journal,
            exp_hash,
            entry,
            trigger,
            abandoned,
            replaced=old is not None,
            **(
                {"blobs_written": stats.blobs_written, "blob_bytes": stats.bytes_written}
                if stats is not None
                else {}
            ),
            **({"blobs_removed": len(swept.removed)} if swept.removed else {}),
        )
        return entry

    def _write_and_commit(
        self,
        exp: ExperimentLayout,
        step: int,
        payload: Mapping[str, Any] | Callable[[HashingWriter], None],
        trigger: str,
        metrics: Mapping[str, float | None] | None,
        tags: Iterable[str],
        description: str,
    ) -> tuple[CheckpointEntry, CheckpointEntry | None, list[int]]:
        """Write the step file durably and commit its entry; returns (entry, replaced entry, abandoned steps)."""
        exp_hash = exp.exp_hash
        final = exp.step_file(step)
        produce = payload if callable(payload) else torch_save_into(payload)
        with self._lock:
            m = self.manifest(exp_hash)
            old = m.entry(step)
        if old is None:
            written = self.storage.write_atomic(final, produce)
        else:
            written = self._replace(exp, m, old, produce)
        entry = CheckpointEntry(
            step=step,
            file=exp.relative(final),
            bytes=written.bytes,
            xxh3_128=written.xxh3_128,
            created=time.time(),
            trigger=trigger,
            metrics=dict(metrics or {}),
            tags=tuple(tags),
            description=description,
            blocks=block_digests_of(written),
        )
        with self._lock:
            current = self.manifest(exp_hash)
            abandoned = current.abandoned_after(step)
            committed = current.committing(entry)
            self._write_manifest(committed)
            entry = committed.entry(step) or entry
        return entry, old, abandoned

    def _replace(
        self,
        exp: ExperimentLayout,
        m: Manifest,
        old: CheckpointEntry,
        produce: Callable[[HashingWriter], None],
    ) -> WrittenFile:
        """Replace the committed step file of ``old`` crash-safely; returns what was written."""
        # 1. the new bytes, durable, beside the old file
        staging = exp.model_dir / f".{exp.step_file_name(old.step)}{TMP_MARKER}replace"
        written = self.storage.write_atomic(staging, produce)
        # 2. the entry accepts either version while the file is swapped
        pending = PendingReplacement(bytes=written.bytes, xxh3_128=written.xxh3_128)
        with self._lock:
            cur = self.manifest(exp.exp_hash)
            self._write_manifest(cur.with_entry(_with_pending(old, pending)))
        # 3. swap; the caller commits the new entry (which drops the pending mark)
        self.storage.replace(staging, exp.step_file(old.step))  # fsyncs the folder
        return written

    def annotate(
        self,
        exp_hash: str,
        step: int,
        *,
        tags: Iterable[str] = (),
        description: str | None = None,
        metrics: Mapping[str, float | None] | None = None,
    ) -> CheckpointEntry:
        """Add tags to (and, unless None, set the description of) a committed checkpoint.

        ``metrics`` are merged into the entry's (a validation that reports after the step was saved);
        retention ranks by them from the next commit on. Raises CheckpointNotFoundError.
        """
        journal = self._require_writer()
        with self._lock:
            m = self.manifest(exp_hash)
            entry = m.entry(step)
            if entry is None:
                raise CheckpointNotFoundError(
                    f"experiment {exp_hash} has no checkpoint at step {step}; committed steps: {m.steps()}"
                )
            updated = dataclasses.replace(
                entry,
                tags=tuple(dict.fromkeys((*entry.tags, *tags))),
                description=entry.description if description is None else description,
                metrics={**entry.metrics, **(metrics or {})},
            )
            self._write_manifest(m.with_entry(updated))
        journal.append(
            "checkpoint_tagged",
            exp_hash=exp_hash,
            step=step,
            tags=list(updated.tags),
            description=updated.description,
            **({"metrics": dict(metrics)} if metrics else {}),
        )
        return updated

    def rewind(self, exp_hash: str, step: int) -> list[int]:
        """Go back to ``step``: the live checkpoints after it are marked abandoned; returns their steps.

        The checkpoint at ``step`` (if any) becomes the newest of the live run, even if it was itself
        abandoned before. Recorded in the manifest at once (and journalled as ``rewound``), so that a
        crash before the continued run's first commit still resumes the continued run.
        """
        journal = self._require_writer()
        with self._lock:
            m = self.manifest(exp_hash)
            abandoned = m.abandoned_after(step)
            target = m.entry(step)
            latest = m.latest()
            revive = target is not None and (
                target.abandoned or (latest is not None and latest.seq > target.seq)
            )
            if not abandoned and not revive:
                return []
            updated = m.with_abandoned(set(abandoned))
            if target is not None and revive:
                updated = updated.with_entry(dataclasses.replace(target, abandoned=False, seq=m.next_seq()))
            self._write_manifest(updated)
        journal.append("rewound", exp_hash=exp_hash, step=step, abandoned=abandoned)
        return abandoned

    def delete(self, exp_hash: str, step: int, *, reason: str = "retention") -> None:
        """Remove a checkpoint: the manifest entry first, then the file.

        On a local root without blobs the step file is renamed aside and unlinked on a background
        thread (:class:`~weightslab.store.reaper.Reaper`): the caller does not wait for the kernel to
        free a large file. ``close`` waits for those unlinks.

        Raises UnsafePathError, changing nothing, when the entry names anything but a real step file
        of the experiment (``..``, a symlink out of the folder, the manifest, config or architecture).
        """
        journal = self._require_writer()
        with self._lock:
            m = self.manifest(exp_hash)
            entry = m.entry(step)
            if entry is None:
                raise CheckpointNotFoundError(f"experiment {exp_hash} has no checkpoint at step {step}")
            # checked before the entry goes: a refused entry stays, so the refusal is seen again
            exp = self.experiment(exp_hash)
            path = exp.resolve(entry.file)
            files = [exp.resolve(r.file) for r in entry.shards] if entry.shards else [path]
            # the reference counts include this checkpoint until its entry goes
            first_count = self.blobs.has_blobs() and self.blobs.ensure_index(
                committed_entries(self.manifests)
            )
            self._write_manifest(m.without_steps({step}))
        if not entry.shards and isinstance(self.storage, LocalStorage) and not self.blobs.has_blobs():
            self.reaper.discard(self.storage, path)  # renamed aside now, unlinked in the background
        else:
            for file in files:
                self.storage.remove(file)
        if entry.shards:
            for leftover in list(self.storage.files_under(path)):  # a shard written but never listed
                self.storage.remove(leftover)
            self.storage.remove_dir(path)
        # blobs last: a crash before this leaves orphans (swept later), never a dangling reference
        swept = self.blobs.deleted((exp_hash, step))
        if first_count:  # the writer's first collection also removes the orphans of earlier crashes
            swept.removed += self.blobs.sweep(committed_entries(self.manifests)).removed
        journal.append(
            "checkpoint_deleted",
            exp_hash=exp_hash,
            step=step,
            file=entry.file,
            reason=reason,
            **({"blobs_removed": len(swept.removed), "blob_bytes": swept.bytes} if swept.removed else {}),
        )

    # -- copies from another root (a backup) -----------------------------------------------------
    def mark_replacing(self, exp_hash: str, step: int, pending: PendingReplacement) -> CheckpointEntry:
        """Record that committed ``step``'s file is about to be swapped for ``pending``'s version.

        Call it once the new bytes are durable, before the rename: until the step's next commit either
        version verifies, and a writer's open keeps the one the file holds. Not journalled (as in
        :meth:`save`): the commit that follows is. Raises CheckpointNotFoundError for a step that is
        not committed, ConfigError for a sharded one (delete it and commit the new version instead).
        """
        self._require_writer()
        with self._lock:
            m = self.manifest(exp_hash)
            entry = m.entry(step)
            if entry is None:
                raise CheckpointNotFoundError(
                    f"experiment {exp_hash} has no checkpoint at step {step}; committed steps: {m.steps()}"
                )
            if entry.shards:
                raise ConfigError(
                    f"checkpoint {exp_hash}@{step} is sharded and is never rewritten in place; "
                    "delete it, then commit the new version"
                )
            marked = _with_pending(entry, pending)
            self._write_manifest(m.with_entry(marked))
        return marked

    def commit_copied(
        self,
        record: Manifest,
        entries: Iterable[CheckpointEntry],
        *,
        placed: Iterable[int] = (),
        backup_of: str,
    ) -> Manifest:
        """Commit checkpoints copied from another root, as that root records them; returns the manifest.

        ``record``: the other root's manifest of the experiment; its header (hashes, parent, retention,
        architecture) replaces this one's, or creates the experiment (the caller wrote its config and
        architecture files first). ``entries`` are committed as they are (seq, tags, metrics; pending
        dropped) over any entry of their step. ``placed``: the steps whose files were just copied in,
        each checked for its size and journalled as ``checkpoint_saved`` with ``backup_of``. Raises
        CheckpointCorruptedError, committing nothing, for a placed file missing or of another size.
        """
        journal = self._require_writer()
        copied = [dataclasses.replace(e, pending=None) for e in entries]
        new = [e for e in copied if e.step in set(placed)]
        for entry in new:
            _check_placed(self.storage, self.experiment(record.exp_hash), entry)
        with self._lock:
            current = self.manifest(record.exp_hash) if self.has_experiment(record.exp_hash) else None
            committed = dataclasses.replace(
                record,
                retention=dict(record.retention),
                checkpoints=[] if current is None else list(current.checkpoints),
            )
            for entry in copied:
                committed = committed.with_entry(entry)
            self._write_manifest(committed)
            self.blobs.invalidate_index()  # the copies may reference blobs: count them afresh when needed
        if current is None:
            journal.append(
                "experiment_created",
                exp_hash=record.exp_hash,
                parent=None if record.parent is None else record.parent.to_dict(),
                reason=None if record.parent is None else record.parent.reason,
                architecture_hash=record.architecture_hash,
                hyperparams_hash=record.hyperparams_hash,
                retention=dict(record.retention),
                backup_of=backup_of,
            )
        for entry in new:
            journal.append(
                "checkpoint_saved",
                exp_hash=record.exp_hash,
                step=entry.step,
                trigger=entry.trigger,
                file=entry.file,
                bytes=entry.bytes,
                xxh3_128=entry.xxh3_128,
                metrics=entry.metrics,
                replaced=current is not None and current.entry(entry.step) is not None,
                backup_of=backup_of,
            )
        return committed

    def branch_points(self, exp_hash: str) -> set[int]:
        """Checkpoints of ``exp_hash`` that a child experiment continued from (its ``parent.checkpoint``)."""
        return retention.branch_points(self.manifests, exp_hash)

    def apply_retention(
        self, exp_hash: str, policy: RetentionPolicy, protected: Iterable[int] = ()
    ) -> list[int]:
        """Delete what ``policy`` does not keep (branch points and ``protected`` always kept); returns the steps.

        A checkpoint whose manifest entry is refused as unsafe (see :meth:`delete`) is kept; the others
        are deleted, then RetentionRefusedError names the refused entries (its ``deleted`` lists the rest).
        """
        return retention.apply_retention(self.manifests, self.delete, exp_hash, policy, protected)


def block_digests_of(written: WrittenFile) -> BlockDigests | None:
    """The block digests of a step file just written, for its entry; None under two blocks (one
    block is the whole file: its xxh3-128 is checked)."""
    if len(written.blocks) < 2:
        return None
    return BlockDigests(written.block_bytes, written.xxh3_128, written.blocks)


def _check_placed(storage: Storage, exp: ExperimentLayout, entry: CheckpointEntry) -> None:
    """Each file of ``entry`` is where the entry says, with its size; else CheckpointCorruptedError."""
    for relative, expected in [(r.file, r.bytes) for r in entry.shards] or [(entry.file, entry.bytes)]:
        path = exp.resolve(relative)
        try:
            size = storage.size(path)
        except FileNotFoundError:
            raise CheckpointCorruptedError(path, entry.xxh3_128, "<missing>", "not there") from None
        if size != expected:
            raise CheckpointCorruptedError(
                path, entry.xxh3_128, "<not computed>", f"size is {size} bytes, expected {expected}"
            )
