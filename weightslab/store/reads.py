"""Reading committed checkpoints: entries, "latest" and "best", verified loads.

A mixin of :class:`~weightslab.store.manager.CheckpointManager` (the methods keep their names there).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from weightslab.errors import CheckpointNotFoundError
from weightslab.format.journal import last_active_experiment, read_events, unreadable_checkpoints
from weightslab.format.layout import SHARD_STATE
from weightslab.format.manifest import CheckpointEntry
from weightslab.policy.retention import RetentionPolicy
from weightslab.store.parts import ManagerParts
from weightslab.store.verify import verify_entry
from weightslab.util.names import is_hash

log = logging.getLogger("weightslab")

Which = int | Literal["latest", "best"]


class Reading(ManagerParts):
    """The manager's methods that find and load committed checkpoints."""

    # -- reading --------------------------------------------------------------------------------
    def checkpoints(self, exp_hash: str) -> list[CheckpointEntry]:
        return list(self.manifest(exp_hash).checkpoints)

    def last_active(self) -> str | None:
        """The experiment that was active last, from the journal (falls back to the newest manifest)."""
        active = last_active_experiment(self.layout.events_file, self.storage)
        if active is not None and self.has_experiment(active):
            return active
        exps = self.experiments()
        return exps[-1] if exps else None

    def events(self) -> list[dict[str, Any]]:
        return list(read_events(self.layout.events_file, self.storage))

    def unreadable(self) -> set[tuple[str, int]]:
        """(experiment, step) of the checkpoints the journal records as having failed a load or check."""
        return unreadable_checkpoints(self.layout.events_file, self.storage)

    def entry(
        self,
        exp_hash: str,
        which: Which = "latest",
        *,
        monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
    ) -> CheckpointEntry:
        """The manifest entry for ``which``: "latest", "best" (by ``monitor``/``mode``) or a step."""
        m = self.manifest(exp_hash)
        if not m.checkpoints:
            raise CheckpointNotFoundError(f"experiment {exp_hash} in {self.root} has no committed checkpoint")
        if which == "latest":
            latest = m.latest()
            assert latest is not None  # checked above
            return latest
        if which == "best":
            if not monitor:
                raise ValueError("loading the best checkpoint needs monitor=<metric name>")
            best = RetentionPolicy(keep_best=1, monitor=monitor, mode=mode).best(m.checkpoints, 1)
            if not best:
                raise CheckpointNotFoundError(f"no checkpoint of {exp_hash} recorded metric {monitor!r}")
            found = m.entry(best[0])
        else:
            if isinstance(which, bool) or not isinstance(which, int):
                raise ValueError(f"which must be 'latest', 'best' or a step number, got {which!r}")
            found = m.entry(which)
        if found is None:
            raise CheckpointNotFoundError(
                f"experiment {exp_hash} has no checkpoint at step {which}; committed steps: {m.steps()}"
            )
        return found

    def verify_entry(self, exp_hash: str, entry: CheckpointEntry) -> Path:
        """Check the size and xxh3_128 of a step file; returns its path or raises CheckpointCorruptedError."""
        return verify_entry(self.storage, self.experiment(exp_hash), entry)

    def load(
        self,
        exp_hash: str | None = None,
        which: Which = "latest",
        *,
        monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
        map_location: Any = "cpu",
        verify: bool = True,
        mmap: bool = True,
    ) -> dict[str, Any]:
        """Load one committed checkpoint (verified) as the step dict.

        ``exp_hash`` defaults to the experiment active last; it may be a unique prefix.
        Raises CheckpointNotFoundError, CheckpointCorruptedError, CheckpointFormatError.
        """
        if exp_hash is None:
            exp_hash = self.last_active()
            if exp_hash is None:
                raise CheckpointNotFoundError(f"{self.root} holds no experiment yet")
        exp_hash = exp_hash if is_hash(exp_hash) else self.resolve_hash(exp_hash)
        entry = self.entry(exp_hash, which, monitor=monitor, mode=mode)
        return self.load_entry(exp_hash, entry, map_location=map_location, verify=verify, mmap=mmap)

    def load_entry(
        self,
        exp_hash: str,
        entry: CheckpointEntry,
        *,
        map_location: Any = "cpu",
        verify: bool = True,
        mmap: bool = True,
        consolidate: bool = True,
    ) -> dict[str, Any]:
        """The step dict of ``entry`` (verified unless told otherwise).

        A sharded checkpoint is consolidated into full tensors in this process; with
        ``consolidate=False`` its ``state.pt`` alone is returned (its ``sharded`` record says what
        DCP holds, for a resume that loads into sharded objects).
        """
        from weightslab.format import sharded  # torch: imported by loads only, not by the read-only CLI
        from weightslab.format.stepfile import load_step_file

        path = self.verify_entry(exp_hash, entry) if verify else self.experiment(exp_hash).resolve(entry.file)
        if not entry.shards:  # a dedup step file's blobs are checked too when verifying
            return load_step_file(
                path, map_location=map_location, mmap=mmap, storage=self.storage, verify_blobs=verify
            )
        state = load_step_file(path / SHARD_STATE, map_location=map_location, mmap=mmap, storage=self.storage)
        if not consolidate:
            return state
        return sharded.consolidate(state, self.storage.dcp_reader(path))
