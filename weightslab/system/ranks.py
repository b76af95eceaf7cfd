"""Saving with more than one rank, and sharded state with any number of ranks.

Replicated state (one process, or DDP): rank 0 writes the step file as in one process; before it
does, every rank agrees on the save (experiment hash, step, trigger) and sends its RNG states, which
the step file keeps per rank (``rng_ranks``) so that a resume at the same world size gives each rank
its own. The other ranks write nothing.

Sharded state (any model holding DTensors): every rank writes its shards through DCP into the step's
folder (``dcp.async_save`` with an async stager that reuses its CPU copies between saves, or
``dcp.save``), then each hashes the files it wrote and sends the records to rank 0, which writes
``state.pt`` and commits one manifest entry listing them all. Nothing is committed unless every
rank's files are durable.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightslab.errors import CheckpointSaveError, DistributedError
from weightslab.format.manifest import FileRecord
from weightslab.store.manager import CheckpointManager
from weightslab.system.commit import CommitJob, Committer
from weightslab.system.distributed import Group
from weightslab.system.parts import SystemParts
from weightslab.system.sharded import capture, is_sharded
from weightslab.system.snapshot import capture_rng

log = logging.getLogger("weightslab")


@dataclass(frozen=True)
class ShardJob:
    """One sharded save in flight on this rank: DCP's future, and rank 0's rest of the step dict."""

    exp_hash: str
    step: int
    folder: Path
    future: Any  # DCP's async save (None when it already ran synchronously)
    state: dict[str, Any] | None  # rank 0 only
    trigger: str
    metrics: dict[str, float | None]
    notes: tuple[tuple[str, ...], str] = ((), "")


def own_files(manager: CheckpointManager, exp_hash: str, folder: Path, rank: int) -> list[FileRecord]:
    """The files of ``folder`` that DCP wrote on ``rank`` (rank 0 also writes ``.metadata``), checksummed."""
    mine = re.compile(rf"^__{rank}_\d+\.distcp$")
    exp = manager.experiment(exp_hash)
    out = []
    for name in manager.storage.listdir(folder):
        if mine.match(name) or (rank == 0 and name == ".metadata"):
            size, digest = manager.storage.checksum(folder / name)
            out.append(FileRecord(exp.relative(folder / name), size, digest))
    return out


@dataclass(frozen=True)
class ShardCommitter:
    """Finishes a sharded save on the writer thread of every rank; rank 0 commits it."""

    manager: CheckpointManager
    group: Group
    committer: Committer

    def __call__(self, job: ShardJob) -> None:
        t0 = time.perf_counter()
        try:
            error: str | None = None
            records: list[FileRecord] = []
            try:
                if job.future is not None:
                    job.future.result()
                records = own_files(self.manager, job.exp_hash, job.folder, self.group.rank)
            except Exception as exc:  # told to the other ranks, then raised here
                error = f"{type(exc).__name__}: {exc}"
            got = self.group.writes.exchange(
                f"the shards of step {job.step}", (error, [r.to_dict() for r in records])
            )
            failed = {r: e for r, (e, _) in enumerate(got) if e is not None}
            if failed:
                raise CheckpointSaveError(
                    f"the sharded save of {job.exp_hash} step {job.step} failed on ranks {sorted(failed)}: "
                    f"{failed}; nothing was committed",
                    path=job.folder,
                    step=job.step,
                )
            if not self.group.is_main or job.state is None:
                return
            shards = [FileRecord(d["file"], d["bytes"], d["xxh3_128"]) for _, files in got for d in files]
            entry = self.manager.save_sharded(
                job.exp_hash,
                job.step,
                job.state,
                shards,
                trigger=job.trigger,
                metrics=job.metrics,
                tags=job.notes[0],
                description=job.notes[1],
            )
            log.info(
                "weightslab: saved %s step %d (%s, %d files from %d ranks, %.1f MB, %.2fs)",
                job.exp_hash,
                job.step,
                job.trigger,
                len(entry.shards),
                self.group.world,
                entry.bytes / 1e6,
                time.perf_counter() - t0,
            )
            self.committer.retain_after(job.exp_hash, job.step)
        except Exception as exc:
            self.committer.errors.failed(exc, job.exp_hash, job.step)
            raise


def agree_on_save(group: Group, exp_hash: str, step: int, trigger: str, sharded: bool, rng: Any) -> list[Any]:
    """Every rank's RNG states, once all ranks agree that this save is the same one on each.

    Raises DistributedError naming the ranks that differ from rank 0 (another step, trigger, hash or
    sharding) or that never got here.
    """
    got = group.steps.exchange("a checkpoint", ((exp_hash, step, trigger, sharded), rng))
    mine = got[0][0]
    differ = [r for r, (what, _) in enumerate(got) if what != mine]
    if differ:
        shown = {r: got[r][0] for r in (0, *differ)}
        raise DistributedError(
            f"the ranks disagree about the checkpoint (experiment hash, step, trigger, sharded): ranks {differ} "
            f"differ from rank 0: {shown}; every rank must register the same model and hyperparameters and "
            "call checkpoint_on_step with the same steps",
            ranks=differ,
        )
    return [r for _, r in got]


class RankedSaving(SystemParts):
    """The save of the system when there are several ranks or sharded state."""

    def _save_ranked(self, exp_hash: str, step: int, trigger: str, metrics: dict[str, float | None]) -> None:
        """Agree with the other ranks, then save replicated state on rank 0 or sharded state on all."""
        group = self._group
        sharded = is_sharded(self.ledger.items("model"))
        payload: dict[str, Any] | None = None
        event: Any = None
        failure: str | None = None
        if group.is_main:  # before the exchange, so that a failure here stops every rank
            try:
                if sharded:
                    self.manager.prepare_shard_dir(exp_hash, step)
                payload, event = self._payload(exp_hash, step, trigger, metrics, tensors=not sharded)
            except Exception as exc:
                failure = f"{type(exc).__name__}: {exc}"
                self._errors.failed(exc, exp_hash, step)
        rng = capture_rng() if self.config.save_rng else None
        self._submitted.add((exp_hash, step))  # a failure below is reported once, not retried at close
        got = agree_on_save(group, exp_hash, step, trigger, sharded, (rng, failure))
        main_failure = got[0][1]
        if main_failure is not None:
            error = CheckpointSaveError(
                f"rank 0 could not prepare the save of {exp_hash} step {step}: {main_failure}", step=step
            )
            if not group.is_main:
                self._errors.failed(error, exp_hash, step)
            self._errors.report([error])
            return
        if payload is not None and self.config.save_rng:
            payload["rng_ranks"] = [r for r, _ in got]
        if not sharded:
            if payload is not None:
                self._submit(CommitJob(exp_hash, step, payload, trigger, metrics, event, self._notes))
            else:
                self._submit_nothing(exp_hash, step)
            return
        self._save_shards(exp_hash, step, trigger, metrics, payload)

    def _save_shards(
        self,
        exp_hash: str,
        step: int,
        trigger: str,
        metrics: dict[str, float | None],
        payload: dict[str, Any] | None,
    ) -> None:
        from torch.distributed.checkpoint.state_dict_saver import async_save, save

        group = self._group
        tensors, record = capture(self.ledger, group.world)
        folder = self.manager.experiment(exp_hash).shard_dir(step)
        writer = self.manager.storage.dcp_writer(folder)
        future: Any = None
        try:
            if self._writer is not None:
                future = async_save(
                    tensors,
                    storage_writer=writer,
                    process_group=group.save_group,
                    async_stager=self._stager(),
                )
            else:
                save(tensors, storage_writer=writer, process_group=group.save_group)
        except Exception as exc:  # DCP raises on every rank when one fails
            self._errors.failed(exc, exp_hash, step)
            self._errors.report([exc])
            return
        if payload is not None:
            payload["sharded"] = record
        self._submit(ShardJob(exp_hash, step, folder, future, payload, trigger, metrics, self._notes))

    def _submit_nothing(self, exp_hash: str, step: int) -> None:
        """A rank other than 0 with replicated state: the save is rank 0's; keep the same bookkeeping."""
        branch = self._exp.branch_from
        if branch is not None and branch[0] == exp_hash:
            self._exp.branch_from = None

    def _stager(self) -> Any:
        """DCP's stager, kept for the life of the system: it reuses its CPU copies from save to save."""
        stager = getattr(self, "_dcp_stager", None)
        if stager is None:
            import torch
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

            cuda = torch.cuda.is_available()
            stager = DefaultStager(
                StagingOptions(
                    use_pinned_memory=cuda,
                    use_shared_memory=False,
                    use_async_staging=False,
                    use_non_blocking_copy=cuda,
                )
            )
            self._dcp_stager = stager
        return stager
