"""The automatic checkpoint system: the orchestration of one writer per root, fed by the ledger.

It decides (with :mod:`weightslab.policy`) when to save, asks the :class:`ExperimentTracker` which
experiment the state belongs to (with the change detector of :mod:`.changes`), builds the step dict
on the training thread (:mod:`.payload`), and hands it to the :class:`Committer` on the background
writer. Closing and the preemption exit live in :mod:`.lifecycle`, resume and rewinds in
:mod:`.rewinding` (the search in :mod:`.resume`), the console views in :mod:`.views`, signals in
:mod:`.preemption`, the on_error policy in :mod:`.errors_policy`, and the process-wide singleton in
:mod:`.api`. Everything here runs under one lock, so the training thread, event triggers and other
threads may call it at once.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from typing import Any, cast

import torch

from weightslab.errors import (
    CheckpointNotFoundError,
    ConfigError,
    SystemConfigurationError,
)
from weightslab.policy.retention import RetentionPolicy
from weightslab.policy.save import EveryNEpochs, EveryNSeconds, EveryNSteps
from weightslab.registry.ledger import Ledger, LedgerEvent, get_ledger
from weightslab.system.changes import ChangeDetector
from weightslab.system.commit import Committer, ResumeProtection
from weightslab.system.config import CheckpointConfig
from weightslab.system.distributed import Channel, Group
from weightslab.system.errors_policy import ErrorPolicy
from weightslab.system.experiments import ExperimentTracker
from weightslab.system.follower import open_manager
from weightslab.system.identity import ExperimentIdentity
from weightslab.system.lifecycle import Lifecycle
from weightslab.system.preemption import SignalTrap
from weightslab.system.ranks import RankedSaving, ShardCommitter
from weightslab.system.resume import ResumeMode
from weightslab.system.rewinding import Rewinding
from weightslab.system.saving import Saving
from weightslab.system.scheduled import Scheduled
from weightslab.system.snapshot import SnapshotBuffers
from weightslab.system.validation import check_notes, check_step, clean_metrics
from weightslab.system.verifying import PendingCheck
from weightslab.system.views import Views
from weightslab.system.writer import BackgroundWriter

log = logging.getLogger("weightslab")

__all__ = ["AutomaticCheckpointSystem", "ResumeMode"]


class AutomaticCheckpointSystem(Lifecycle, Rewinding, Saving, RankedSaving, Scheduled, Views):
    """Saves registered training state on a step frequency and on every change.

    Build it through :func:`get_checkpoint_system` (one per process) or directly with an own
    :class:`~weightslab.registry.ledger.Ledger` for isolated use. Raises RootLockedError when another writer
    holds the root, ConfigError for invalid options.
    """

    def __init__(
        self,
        config: CheckpointConfig | None = None,
        *,
        ledger: Ledger | None = None,
        clock: Callable[[], float] = time.time,
        **options: Any,
    ):
        if config is not None and options:
            raise ConfigError("pass either a CheckpointConfig or keyword options, not both")
        self.config = config or CheckpointConfig.from_kwargs(**options)
        self.ledger = ledger or get_ledger()
        self._group = Group(timeout=self.config.distributed_timeout)
        self.manager = open_manager(
            self.config.root,
            durable=self.config.durable,
            group=self._group,
            storage_options=self.config.storage_options,
            storage_mode=self.config.storage,
            compression=self.config.compression,
        )
        self.retention = RetentionPolicy(**self.config.retention())
        self._lock = threading.RLock()
        self._writer = BackgroundWriter() if self.config.async_save else None
        self._buffers = SnapshotBuffers(
            copy_cpu=self.config.async_save, max_staging_bytes=self.config.max_staging_bytes
        )
        self._early = None  # a snapshot staged ahead of its save (Saving._staging_early)
        self._walk = None  # that save's walk of the parameters
        self._clock = clock  # the `created` stamp of step files (injectable for reproducible files)
        self._errors = ErrorPolicy(self.manager, self.config.on_error)
        self._detector = ChangeDetector(self.ledger)
        self._changed = self._detector.changed  # bound once: the check runs on every step
        self._exp = ExperimentTracker(self.manager, self.ledger, self.config, self._detector, self._errors)
        self.hasher = self._exp.hasher
        self._protection = ResumeProtection()
        self._committer = Committer(self.manager, self.retention, self._protection, self._errors)
        self._shard_committer = ShardCommitter(self.manager, self._group, self._committer)
        # bound once: the save decision runs on every step
        self._should_save = EveryNSteps(self.config.checkpoint_frequency).should_save
        every = self.config.every_n_epochs
        self._epochs = EveryNEpochs(every) if every is not None else None
        interval = self.config.train_time_interval
        # a timedelta was turned into seconds by the config's checks; an injected clock (tests) also
        # drives the interval, else the monotonic clock does, which wall-clock jumps do not move
        timer_clock = time.monotonic if clock is time.time else clock
        self._timer = EveryNSeconds(cast(float, interval), timer_clock) if interval is not None else None
        self._clock_channel = Channel(self._group, "clock")
        self._last_epoch: int | None = None
        self._submitted: set[tuple[str, int]] = set()
        self._last_step: int | None = None
        self._closed = False
        self._detect = self.config.detect_changes
        self._resume_floor: int | None = None
        self._verifying: PendingCheck | None = None  # a resume's checksum still running (verify="background")
        self._warned_backwards = False
        self._warned_rewind = False
        # announced changes without step=: saved at the next checkpoint_on_step, at its step
        self._pending: list[tuple[str, dict[str, float | None]]] = []
        self._last_metrics: Mapping[str, Any] | None = None
        self._monitor_seen = False
        self._monitor_warned = False
        self._notes: tuple[tuple[str, ...], str] = ((), "")  # tags and description of this call
        self._signals = SignalTrap()
        self._on_close: list[Callable[[AutomaticCheckpointSystem], None]] = []
        if self.config.handle_signals:
            self._signals.install()
        self.manager.event("system_opened", pid=os.getpid(), config=_config_record(self.config))
        self._unlisten = self.ledger.add_listener(self._on_ledger_event)
        atexit.register(self._close_at_exit)

    # -- properties -----------------------------------------------------------------------------
    @property
    def root(self) -> Any:
        return self.manager.root

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def exp_hash(self) -> str | None:
        """The hash of the active experiment (None before the first step or resume)."""
        return None if self._exp.identity is None else self._exp.identity.exp_hash

    @property
    def last_step(self) -> int | None:
        return self._last_step

    @property
    def failures(self) -> int:
        """Saves that failed since this system opened."""
        return self._errors.failures

    # -- the training-loop API ------------------------------------------------------------------
    def checkpoint_on_step(
        self,
        step: int,
        metrics: Mapping[str, Any] | None = None,
        *,
        tags: Iterable[str] | None = None,
        description: str | None = None,
    ) -> None:
        """Call once per training step: saves on the frequency and records detected changes.

        ``metrics``, ``tags`` and ``description`` are recorded with the checkpoints this call saves
        (to annotate one already saved, use :meth:`tag`). Raises CheckpointSaveError only with
        on_error="raise"; TypeError/ValueError for a bad step, metric or tag.
        """
        if tags is not None or description is not None:
            notes = check_notes(tags, description)
            with self._lock:  # another thread's save must not pick up this call's notes
                self._notes = notes
                try:
                    self.checkpoint_on_step(step, metrics)
                finally:
                    self._notes = ((), "")
            return
        with self._lock:
            # The common case, a step that neither saves nor changes anything, is one expression of
            # attribute reads: it runs on every training step (benchmarks/bench_step_overhead.py).
            last = self._last_step
            if (
                type(step) is int
                and last is not None
                and step >= last
                and self._resume_floor is None
                and not self._pending
                and self._signals.signal is None
                and self._timer is None
                and not self._closed
                and not self._should_save(step)
                and (self._writer is None or not self._writer.has_errors)
                and self._exp.identity is not None
            ):
                if not (self._detect and self._changed()):
                    self._last_step = step
                    self._last_metrics = metrics
                    return
                self._step(step, metrics, changed=True)
                return
            self._step(step, metrics, changed=None)

    def _step(self, step: int, metrics: Mapping[str, Any] | None, *, changed: bool | None) -> None:
        """``checkpoint_on_step`` when the step may save, record a change, or needs a check.

        ``changed``: what the change check already said this call (None: not asked yet).
        """
        if self._closed:
            self._check_open()
        if self._writer is not None and self._writer.has_errors:
            self._surface_errors()
        if type(step) is not int or step < 0:
            step = check_step(step)
        if self._resume_floor is not None:
            if step <= self._resume_floor:
                self._check_backwards(step)
        elif self._last_step is not None and step < self._last_step:
            self._check_backwards(step)
        if self._signals.signal is not None:
            self._preempt(step, metrics)
        if self._exp.identity is None:
            self._begin(step)
        if self._pending:
            pending, self._pending = self._pending, []
            self._save_announced(step, pending, clean_metrics(metrics))
        elif self._detect and (self._detector.changed() if changed is None else changed):
            self._record_changes(step, clean_metrics(metrics), announced=None)
        self._last_step = step
        self._last_metrics = metrics
        self._resume_floor = None
        trigger: str | None = "step" if self._should_save(step) else None
        if trigger is None and self._timer is not None and self._time_due():
            trigger = "time"
        if trigger is not None:
            clean = clean_metrics(metrics)
            # the state's copy starts first and runs while the full hash (and a read of every
            # parameter), which runs before every save whatever the cheap check said, is computed
            with self._staging_early(step):
                self._record_changes(step, clean, announced=None)
                assert self._exp.identity is not None
                if (self._exp.identity.exp_hash, step) not in self._submitted:
                    self._save(step, trigger, clean)

    def checkpoint_on_model_change(
        self, step: int | None = None, metrics: Mapping[str, Any] | None = None
    ) -> None:
        """Record a model change now (pruning, added layers, surgery): new experiment if the hash moved."""
        self._announced("model_change", step, metrics)

    def checkpoint_on_config_change(
        self, step: int | None = None, metrics: Mapping[str, Any] | None = None
    ) -> None:
        """Record a hyperparameter change now: new experiment if the hash moved."""
        self._announced("config_change", step, metrics)

    def checkpoint_on_state_change(
        self, label: str = "state_change", step: int | None = None, metrics: Mapping[str, Any] | None = None
    ) -> None:
        """Save now in the current experiment with ``trigger=label`` ("freeze", "reset", ...)."""
        if not isinstance(label, str) or not label or len(label) > 64:
            raise ValueError(
                f"state change label must be a non-empty string of at most 64 characters, got {label!r}"
            )
        self._announced(label, step, metrics)

    def _announced(self, reason: str, step: int | None, metrics: Mapping[str, Any] | None) -> None:
        """Without ``step``: saved by the next ``checkpoint_on_step(s)``, at s, with this trigger (the
        state labelled s is the state after step s's update). With ``step``: saved now, at that step."""
        with self._lock:
            self._check_open()
            self._surface_errors()
            clean = clean_metrics(metrics)
            if step is None:
                self._pending.append((reason, clean))
                return
            step = check_step(step)
            if self._exp.identity is None:
                self._begin(step)
            self._save_announced(step, [(reason, clean)], {})
            self._last_step = step

    def _save_announced(
        self, step: int, pending: list[tuple[str, dict[str, float | None]]], metrics: dict[str, float | None]
    ) -> None:
        """Save announcements at ``step``: one checkpoint, whose trigger is the announced model or
        config change if any, else the last state label; the metrics of the step's call win."""
        merged: dict[str, float | None] = {}
        for _, announced_metrics in pending:
            merged.update(announced_metrics)
        merged.update(metrics)
        reasons = [r for r, _ in pending]
        label = next((r for r in reasons if r in ("model_change", "config_change")), reasons[-1])
        if not self._record_changes(step, merged, announced=label):
            self._save(step, label, merged)

    def tag(
        self,
        step: int,
        *tags: str,
        description: str | None = None,
        exp_hash: str | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> None:
        """Add ``tags`` (and set ``description``, merge ``metrics``) on a committed checkpoint of the
        active experiment (or of ``exp_hash``). Raises CheckpointNotFoundError when that step is not
        committed, ValueError for a bad tag or metric."""
        clean_tags, clean_description = check_notes(tags, description)
        clean = clean_metrics(metrics) if metrics is not None else None
        with self._lock:
            self._check_open()
            self.flush()
            if not self._group.is_main:  # rank 0 writes the manifests; every rank may call this
                return
            h = exp_hash or self.exp_hash or self.manager.last_active()
            if h is None:
                raise CheckpointNotFoundError(f"{self.root} holds no experiment yet")
            self.manager.annotate(
                h,
                check_step(step),
                tags=clean_tags,
                description=None if description is None else clean_description,
                metrics=clean,
            )
            # the ranking may have moved: this run's retention applies it now, not at the next save
            # (only to its own experiment: another one keeps the policy it recorded until a run of it)
            if clean and h == self.exp_hash:
                self._committer.retain(h)

    def flush(self) -> None:
        """Wait for the save in flight; raise or warn (per on_error) about background failures."""
        with self._lock:
            if self._writer is not None:
                self._writer.wait()
            self._surface_errors()

    # -- changes and saving -----------------------------------------------------------------------
    def _on_ledger_event(self, event: LedgerEvent) -> None:
        """Journal what the ledger hears from outside the training loop (file edits, rejections); gate
        an optimizer registered while a background checksum runs."""
        if self._closed:
            return
        pending = self._verifying
        if pending is not None and event.kind == "optimizer" and event.action == "register":
            opt = self.ledger.items("optimizer").get(event.name)
            if isinstance(opt, torch.optim.Optimizer):
                pending.guard(opt)
        if event.kind != "hyperparams":
            return
        if event.action == "rejected":
            self.manager.event(
                "hyperparams_edit_rejected", set=event.name, source=event.source, reason=event.detail
            )
        elif event.action == "update":
            self.manager.event(
                "hyperparams_updated", set=event.name, keys=list(event.keys), source=event.source
            )

    def _check_open(self) -> None:
        if self._closed:
            raise SystemConfigurationError(
                "this checkpoint system is closed; call get_checkpoint_system(root_log_dir=...) for a new one"
            )

    def _begin(self, step: int) -> None:
        self._exp.begin(step, self._rewind)

    def _switch(self, ident: ExperimentIdentity, reason: str, step: int) -> None:
        if self._writer is not None:
            self._writer.wait()  # the parent's newest checkpoint must be committed to be referenced
        self._exp.switch(ident, reason, step)

    def _record_changes(self, step: int, metrics: dict[str, float | None], announced: str | None) -> bool:
        """Compare with the active experiment; on a hash change open the new one and save. True if switched."""
        self._gate()  # no experiment is opened from unverified state (resume(verify="background"))
        old = self._exp.identity
        assert old is not None
        ident = self._exp.identity_now()
        if ident.exp_hash != old.exp_hash:
            detected = "model_change" if ident.architecture_hash != old.architecture_hash else "config_change"
            reason = announced if announced in ("model_change", "config_change") else detected
            self._switch(ident, reason, step)
            self._save(step, reason, metrics)
            return True
        frozen, unfrozen = self._detector.trainable_changes()
        if (frozen or unfrozen) and announced is None:
            label = "freeze" if frozen else "unfreeze"
            self.manager.event(
                "change_detected",
                kind=label,
                exp_hash=old.exp_hash,
                step=step,
                frozen=frozen,
                unfrozen=unfrozen,
            )
            log.info(
                "weightslab: %s detected at step %d (%d parameters)", label, step, len(frozen or unfrozen)
            )
            self._detector.rebaseline()
            self._save(step, label, metrics)
            return False
        self._detector.rebaseline(self._walk)  # a save's own walk of the parameters, when it made one
        return False

    def _surface_errors(self) -> None:
        if self._writer is not None:
            self._errors.report(self._writer.take_errors())


def _config_record(config: CheckpointConfig) -> dict[str, Any]:
    record = asdict(config)
    record["root_log_dir"] = str(config.root_log_dir)
    record["exclude_hyperparams"] = list(config.exclude_hyperparams)
    if config.storage_options:  # credentials never go into the journal
        record["storage_options"] = {
            k: v if k in ("endpoint_url", "client_kwargs", "config_kwargs", "anon") else "<redacted>"
            for k, v in config.storage_options.items()
        }
    return record
