"""What the system's mixins (:mod:`.lifecycle`, :mod:`.rewinding`, :mod:`.views`) use of it.

Declarations for the type checker only: :class:`~weightslab.system.automatic.AutomaticCheckpointSystem`
defines all of it, and the mixins are never used without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Mapping
    from contextlib import AbstractContextManager

    import torch

    from weightslab.policy.retention import RetentionPolicy
    from weightslab.policy.save import EveryNSeconds
    from weightslab.registry.ledger import Ledger
    from weightslab.store.manager import CheckpointManager
    from weightslab.system.changes import ChangeDetector
    from weightslab.system.commit import CommitJob, Committer, ResumeProtection
    from weightslab.system.config import CheckpointConfig
    from weightslab.system.distributed import Group
    from weightslab.system.errors_policy import ErrorPolicy
    from weightslab.system.experiments import ExperimentTracker
    from weightslab.system.identity import ExperimentIdentity
    from weightslab.system.preemption import SignalTrap
    from weightslab.system.ranks import ShardCommitter, ShardJob
    from weightslab.system.snapshot import SnapshotBuffers, StagedCopy
    from weightslab.system.verifying import PendingCheck
    from weightslab.system.writer import BackgroundWriter


class SystemParts:
    """The attributes and methods of the system that its mixins call."""

    if TYPE_CHECKING:
        config: CheckpointConfig
        ledger: Ledger
        manager: CheckpointManager
        retention: RetentionPolicy
        _lock: threading.RLock
        _writer: BackgroundWriter | None
        _errors: ErrorPolicy
        _detector: ChangeDetector
        _exp: ExperimentTracker
        _protection: ResumeProtection
        _signals: SignalTrap
        _unlisten: Callable[[], None]
        _on_close: list[Callable[[Any], None]]
        _submitted: set[tuple[str, int]]
        _pending: list[tuple[str, dict[str, float | None]]]
        _last_step: int | None
        _last_metrics: Mapping[str, Any] | None
        _closed: bool
        _resume_floor: int | None
        _verifying: PendingCheck | None
        _monitor_seen: bool
        _warned_backwards: bool
        _warned_rewind: bool
        _monitor_warned: bool
        _buffers: SnapshotBuffers
        _early: StagedCopy | None
        _walk: list[tuple[str, str, torch.nn.Parameter]] | None
        _clock: Callable[[], float]
        _committer: Committer
        _shard_committer: ShardCommitter
        _group: Group
        _notes: tuple[tuple[str, ...], str]
        _timer: EveryNSeconds | None

        @property
        def root(self) -> Any: ...
        @property
        def exp_hash(self) -> str | None: ...
        def flush(self) -> None: ...
        def _surface_errors(self) -> None: ...
        def _check_open(self) -> None: ...
        def _settle_verification(self) -> bool: ...
        def _gate(self) -> None: ...
        def _drop_check(self, pending: PendingCheck | None) -> None: ...
        def _begin(self, step: int) -> None: ...
        def _save(self, step: int, trigger: str, metrics: dict[str, float | None]) -> None: ...
        def _save_announced(
            self,
            step: int,
            pending: list[tuple[str, dict[str, float | None]]],
            metrics: dict[str, float | None],
        ) -> None: ...
        def _payload(
            self,
            exp_hash: str,
            step: int,
            trigger: str,
            metrics: dict[str, float | None],
            *,
            tensors: bool = True,
        ) -> tuple[dict[str, Any], Any]: ...
        def _submit(self, job: CommitJob | ShardJob) -> None: ...
        def _save_ranked(
            self, exp_hash: str, step: int, trigger: str, metrics: dict[str, float | None]
        ) -> None: ...
        def _switch(self, ident: ExperimentIdentity, reason: str, step: int) -> None: ...
        def _record_changes(
            self, step: int, metrics: dict[str, float | None], announced: str | None
        ) -> bool: ...
        def _staging_early(self, step: int) -> AbstractContextManager[None]: ...
