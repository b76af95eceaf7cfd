"""Committing sharded checkpoints: the folder every rank writes its DCP shards into, then one entry.

A mixin of :class:`~weightslab.store.manager.CheckpointManager` (through
:class:`~weightslab.store.commits.Committing`; the methods keep their names there).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import xxhash

from weightslab.format.journal import Journal
from weightslab.format.layout import SHARD_STATE
from weightslab.format.manifest import CheckpointEntry, FileRecord
from weightslab.storage.base import HashingWriter
from weightslab.store.parts import ManagerParts
from weightslab.util.canonical import canonical_json


class ShardedCommitting(ManagerParts):
    """The manager's methods that prepare and commit a sharded checkpoint."""

    def prepare_shard_dir(self, exp_hash: str, step: int) -> Path:
        """Empty the folder the ranks write the sharded checkpoint of ``step`` into; returns it.

        A committed checkpoint of that step is deleted first (a sharded one is never rewritten in
        place), and so are the leftovers of a save that crashed before its commit.
        """
        self._require_writer()
        exp = self.experiment(exp_hash)
        folder = exp.shard_dir(step)
        if self.manifest(exp_hash).entry(step) is not None:
            self.delete(exp_hash, step, reason="replaced")
        for path in list(self.storage.files_under(folder)):
            self.storage.remove(path)
        self.storage.makedirs(folder)
        return folder

    def save_sharded(
        self,
        exp_hash: str,
        step: int,
        state: Mapping[str, Any],
        shards: Iterable[FileRecord],
        *,
        trigger: str,
        metrics: Mapping[str, float | None] | None = None,
        tags: Iterable[str] = (),
        description: str = "",
    ) -> CheckpointEntry:
        """Commit the sharded checkpoint of ``step``: ``shards`` are the durable files every rank wrote
        through DCP (paths relative to the experiment); ``state`` (the rest of the step dict) is written
        beside them, then one manifest entry lists them all."""
        journal = self._require_writer()
        exp = self.experiment(exp_hash)
        folder = exp.shard_dir(step)
        written = self.storage.write_atomic(folder / SHARD_STATE, torch_save_into(state))  # fsyncs the folder
        records = sorted(
            [*shards, FileRecord(exp.relative(written.path), written.bytes, written.xxh3_128)],
            key=lambda r: r.file,
        )
        digest = xxhash.xxh3_128(canonical_json([r.to_dict() for r in records])).hexdigest()
        entry = CheckpointEntry(
            step=step,
            file=exp.relative(folder),
            bytes=sum(r.bytes for r in records),
            xxh3_128=digest,
            created=time.time(),
            trigger=trigger,
            metrics=dict(metrics or {}),
            tags=tuple(tags),
            description=description,
            shards=tuple(records),
        )
        with self._lock:
            current = self.manifest(exp_hash)
            abandoned = current.abandoned_after(step)
            committed = current.committing(entry)
            self._write_manifest(committed)
            entry = committed.entry(step) or entry
        journal_saved(journal, exp_hash, entry, trigger, abandoned, shards=len(records), replaced=False)
        return entry


def journal_saved(
    journal: Journal,
    exp_hash: str,
    entry: CheckpointEntry,
    trigger: str,
    abandoned: list[int],
    **fields: Any,
) -> None:
    """Journal a committed checkpoint (and the later steps its commit abandoned, if any)."""
    if abandoned:
        journal.append("rewound", exp_hash=exp_hash, step=entry.step, abandoned=abandoned)
    journal.append(
        "checkpoint_saved",
        exp_hash=exp_hash,
        step=entry.step,
        trigger=trigger,
        file=entry.file,
        bytes=entry.bytes,
        xxh3_128=entry.xxh3_128,
        metrics=entry.metrics,
        **fields,
    )


def torch_save_into(payload: Mapping[str, Any]) -> Callable[[HashingWriter], None]:
    """A producer that serialises the step dict ``payload`` into the writer it is given."""
    from weightslab.format.stepfile import save_state  # torch: imported by the first save, not the CLI

    def produce(writer: HashingWriter) -> None:
        save_state(dict(payload), writer)  # type: ignore[arg-type]

    return produce
