"""The manager of a rank other than 0: it reads the root that rank 0 writes and writes nothing.

The system runs the same code on every rank, so that each makes the same decisions from its own
state (the save decision, the change detection, the experiment hash) and the ranks can agree on
them. On rank 0 the manager writes; here every method that would write the root is a no-op and
returns what the caller needs to go on, and the reads see what rank 0 committed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from weightslab.errors import RootError
from weightslab.format.manifest import CheckpointEntry, Manifest, ParentRef
from weightslab.policy.retention import RetentionPolicy
from weightslab.storage.base import HashingWriter
from weightslab.store.manager import CheckpointManager
from weightslab.system.distributed import Group


class FollowerManager(CheckpointManager):
    """A read-only :class:`CheckpointManager` whose write methods do nothing (not a second writer)."""

    def __init__(self, root: str | Path, *, storage_options: Mapping[str, Any] | None = None) -> None:
        super().__init__(root, mode="r", storage_options=storage_options)

    def event(self, name: str, **fields: Any) -> None:
        return None

    def create_experiment(
        self,
        *,
        exp_hash: str,
        architecture_hash: str,
        hyperparams_hash: str,
        parent: ParentRef | None,
        **_rank0_only: Any,
    ) -> tuple[Manifest, bool]:
        if self.has_experiment(exp_hash):
            return self.manifest(exp_hash), False
        return Manifest(exp_hash, architecture_hash, hyperparams_hash, time.time(), parent=parent), True

    def record_retention(self, exp_hash: str, retention: Mapping[str, Any]) -> None:
        return None

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
        raise AssertionError("only rank 0 saves")  # the system never calls it on a follower

    def annotate(
        self,
        exp_hash: str,
        step: int,
        *,
        tags: Iterable[str] = (),
        description: str | None = None,
        metrics: Mapping[str, float | None] | None = None,
    ) -> CheckpointEntry:
        raise AssertionError("only rank 0 annotates")  # the system's tag() skips it on a follower

    def rewind(self, exp_hash: str, step: int) -> list[int]:
        return []

    def apply_retention(
        self, exp_hash: str, policy: RetentionPolicy, protected: Iterable[int] = ()
    ) -> list[int]:
        return []


def open_manager(
    root: str | Path,
    *,
    durable: bool,
    group: Group,
    storage_options: Mapping[str, Any] | None = None,
    storage_mode: str = "files",
    compression: str | None = None,
) -> CheckpointManager:
    """The writer of ``root`` on rank 0 (and in one process), a :class:`FollowerManager` elsewhere.

    Rank 0 opens the root first (taking its lock, cleaning crash leftovers) and tells the others
    whether it could; they then read it. A failure on rank 0 is raised on every rank.
    ``storage_mode``/``compression``: how rank 0 writes new checkpoints ("files" or "dedup").
    """
    options: dict[str, Any] = {
        "durable": durable,
        "storage_options": storage_options,
        "storage_mode": storage_mode,
        "compression": compression,
    }
    if not group.distributed:
        return CheckpointManager(root, mode="w", **options)
    manager: CheckpointManager | None = None
    failure: BaseException | None = None
    if group.is_main:
        try:
            manager = CheckpointManager(root, mode="w", **options)
        except Exception as exc:
            failure = exc
    got = group.steps.exchange(
        "opening the root", None if failure is None else f"{type(failure).__name__}: {failure}"
    )
    if failure is not None:
        raise failure
    if got[0] is not None:
        raise RootError(f"rank 0 could not open the checkpoint root {root}: {got[0]}")
    return manager if manager is not None else FollowerManager(root, storage_options=storage_options)
