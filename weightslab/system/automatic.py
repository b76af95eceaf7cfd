"""The automatic checkpoint system: one per process, fed by the ledger.

It decides (with :mod:`policy`) when to save, detects model, config and freeze changes (with
:mod:`change_detector`), snapshots state on the training thread (with :mod:`snapshot`), and hands
the bytes to the :class:`CheckpointManager` through the background writer. Everything it does runs
under one lock, so the training thread, event triggers and other threads may call it at once.
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from functools import partial
from typing import Any, Literal

from weightslab.errors import (
    CheckpointCorruptedError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    CheckpointSaveError,
    ConfigError,
    RetentionRefusedError,
    StepOrderError,
    SystemConfigurationError,
    UnsafePathError,
    WeightslabError,
)
from weightslab.format.layout import CHECKPOINT_FORMAT
from weightslab.format.manifest import CheckpointEntry, ParentRef
from weightslab.policy.retention import RetentionPolicy
from weightslab.registry.ledger import Ledger, LedgerEvent, changed_keys, get_ledger
from weightslab.store.manager import CheckpointManager
from weightslab.system.changes import ChangeDetector, module_diff, module_names
from weightslab.system.config import CheckpointConfig
from weightslab.system.identity import ExperimentHashGenerator, ExperimentIdentity
from weightslab.system.restore import restore_state
from weightslab.system.snapshot import SnapshotBuffers, capture_rng
from weightslab.system.validation import check_notes, check_step, clean_metrics
from weightslab.system.writer import BackgroundWriter
from weightslab.util.canonical import canonicalize, plain

log = logging.getLogger("weightslab")

ResumeMode = Literal["latest", "best"] | int


class AutomaticCheckpointSystem:
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
        self.manager = CheckpointManager(self.config.root, mode="w", durable=self.config.durable)
        self.hasher = ExperimentHashGenerator(self.config.exclude_hyperparams)
        self.retention = RetentionPolicy(**self.config.retention())
        self._lock = threading.RLock()
        self._writer = BackgroundWriter() if self.config.async_save else None
        self._buffers = SnapshotBuffers(copy_cpu=self.config.async_save)
        self._clock = clock  # the `created` stamp of step files (injectable for reproducible files)
        self._detector = ChangeDetector(self.ledger)
        self._identity: ExperimentIdentity | None = None
        self._hp_canonical: dict[str, Any] = {}
        self._arch_modules: dict[str, set[str]] = {}
        self._submitted: set[tuple[str, int]] = set()
        self._branch_from: tuple[str, int] | None = None
        self._unopened: tuple[ExperimentIdentity, ParentRef | None] | None = None
        self._resumed_from: tuple[str, int] | None = None
        self._last_step: int | None = None
        self._closed = False
        self._failures = 0
        self._frequency = self.config.checkpoint_frequency
        self._detect = self.config.detect_changes
        self._resume_floor: int | None = None
        self._warned_backwards = False
        self._warned_rewind = False
        # announced changes without step=: saved at the next checkpoint_on_step, at its step
        self._pending: list[tuple[str, dict[str, float | None]]] = []
        self._last_metrics: Mapping[str, Any] | None = None
        self._monitor_seen = False
        self._monitor_warned = False
        self._notes: tuple[tuple[str, ...], str] = ((), "")  # tags and description of this call
        self._stop_signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        if self.config.handle_signals:
            self._install_signal_handlers()
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
        return None if self._identity is None else self._identity.exp_hash

    @property
    def last_step(self) -> int | None:
        return self._last_step

    @property
    def failures(self) -> int:
        """Saves that failed since this system opened."""
        return self._failures

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
            self._notes = check_notes(tags, description)
            try:
                self.checkpoint_on_step(step, metrics)
            finally:
                self._notes = ((), "")
            return
        # The common case (no save, nothing changed) is kept to a few attribute reads.
        with self._lock:
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
            if self._stop_signal is not None:
                self._preempt(step, metrics)
            if self._identity is None:
                self._begin(step)
            if self._pending:
                pending, self._pending = self._pending, []
                self._save_announced(step, pending, clean_metrics(metrics))
            elif self._detect and self._detector.changed():
                self._record_changes(step, clean_metrics(metrics), announced=None)
            self._last_step = step
            self._last_metrics = metrics
            self._resume_floor = None
            if step % self._frequency == 0 and step > 0:
                clean = clean_metrics(metrics)
                # the full hash is recomputed before every save, whatever the cheap check said
                self._record_changes(step, clean, announced=None)
                assert self._identity is not None
                if (self._identity.exp_hash, step) not in self._submitted:
                    self._save(step, "step", clean)

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
            if self._identity is None:
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

    def tag(self, step: int, *tags: str, description: str | None = None, exp_hash: str | None = None) -> None:
        """Add ``tags`` (and set ``description``) on a committed checkpoint of the active experiment
        (or of ``exp_hash``). Raises CheckpointNotFoundError when that step is not committed."""
        clean_tags, clean_description = check_notes(tags, description)
        with self._lock:
            self._check_open()
            self.flush()
            h = exp_hash or self.exp_hash or self.manager.last_active()
            if h is None:
                raise CheckpointNotFoundError(f"{self.root} holds no experiment yet")
            self.manager.annotate(
                h,
                check_step(step),
                tags=clean_tags,
                description=None if description is None else clean_description,
            )

    def flush(self) -> None:
        """Wait for the save in flight; raise or warn (per on_error) about background failures."""
        with self._lock:
            if self._writer is not None:
                self._writer.wait()
            self._surface_errors()

    # -- looking at the root ---------------------------------------------------------------------
    def summary(self, *, console: Any = None) -> None:
        """Print the experiments of this root (hash, parent and reason, checkpoints, best metric, size)."""
        from weightslab.cli import console as rich_console  # console -> commands -> components

        self.flush()
        rich_console.print_summary(
            self.manager,
            active=self.exp_hash,
            monitor=self.config.monitor,
            mode=self.config.mode if self.config.monitor else None,
            console=console,
        )

    def print_checkpoints(self, exp_hash: str | None = None, *, console: Any = None) -> None:
        """Print one experiment's checkpoints (default: the active one) and why each is kept."""
        from weightslab.cli import console as rich_console

        self.flush()
        h = exp_hash or self.exp_hash or self.manager.last_active()
        if h is None:
            raise CheckpointNotFoundError(f"{self.root} holds no experiment yet")
        protected = {self._resumed_from[1]} if self._resumed_from and self._resumed_from[0] == h else ()
        rich_console.print_checkpoints(
            self.manager, h, retention=self.retention, protected=protected, console=console
        )

    def print_tree(self, *, console: Any = None) -> None:
        """Print the lineage tree: how experiments branched, with step and reason on each edge."""
        from weightslab.cli import console as rich_console

        self.flush()
        rich_console.print_tree(self.manager, active=self.exp_hash, console=console)

    def close(self) -> None:
        """Flush pending saves, release the root's lock and the singleton slot. Idempotent."""
        global _SYSTEM
        with self._lock:
            if self._closed:
                return
            final_error: CheckpointSaveError | None = None
            try:
                self._save_at_close()
            except CheckpointSaveError as exc:  # on_error="raise": still release the root, then raise
                final_error = exc
            self._closed = True
            self._restore_signal_handlers()
            self._unlisten()
            self.ledger.stop_watchers()
            errors: list[BaseException] = []
            if self._writer is not None:
                self._writer.close()
                errors = self._writer.take_errors()
            self.manager.event("system_closed", exp_hash=self.exp_hash, last_step=self._last_step)
            self.manager.close()
            with _SYSTEM_LOCK:
                if _SYSTEM is self:
                    _SYSTEM = None
            atexit.unregister(self._close_at_exit)
            if final_error is not None:
                raise final_error
            self._report(errors)

    def _save_at_close(self) -> None:
        """Save pending announcements, then the last step seen if it is newer than the newest checkpoint."""
        step = self._last_step
        if step is None or self._identity is None:
            if self._pending:
                log.warning(
                    "weightslab: %s announced but no step was ever seen; nothing to save",
                    ", ".join(r for r, _ in self._pending),
                )
                self._pending = []
            return
        if self._pending:
            pending, self._pending = self._pending, []
            self._save_announced(step, pending, {})
        if not self.config.save_last:
            return
        if self._writer is not None:
            self._writer.wait()
        exp_hash = self._identity.exp_hash
        if (exp_hash, step) in self._submitted or not self.manager.has_experiment(exp_hash):
            return
        latest = self.manager.manifest(exp_hash).latest()
        if latest is None or latest.step < step:
            try:
                metrics = clean_metrics(self._last_metrics)
            except (TypeError, ValueError):
                metrics = {}
            self._save(step, "last", metrics)

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except Exception as exc:  # at exit there is nobody left to raise to
            log.error("weightslab: error while closing at exit: %s", exc)

    def __enter__(self) -> AutomaticCheckpointSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- resume ---------------------------------------------------------------------------------
    def resume(self, mode: ResumeMode = "latest") -> int:
        """Restore every registered object from the run's newest checkpoint that verifies.

        ``mode`` is "latest", "best" (by the configured ``monitor``) or a step number of the active
        experiment. Returns the step to continue from (0 on a fresh root). Raises
        ArchitectureMismatchError when a registered model does not fit the checkpoint,
        CheckpointNotFoundError when nothing verifies.
        """
        with self._lock:
            self._check_open()
            if self._writer is not None:
                self._writer.wait()
            exp_hash = self.manager.last_active()
            if exp_hash is None:
                self.manager.event("resume_fresh")
                log.info("weightslab: %s holds no checkpoint; starting at step 0", self.root)
                return 0
            if mode == "latest" and not self._chain_has_checkpoints(exp_hash):
                # killed before its first checkpoint was committed: nothing to restore
                self.manager.event("resume_fresh", exp_hash=exp_hash)
                log.info("weightslab: %s has no committed checkpoint yet; starting at step 0", exp_hash)
                return 0
            data, entry, source_hash, skipped = self._load_for_resume(exp_hash, mode)
            restore_state(
                self.ledger,
                data,
                where=f"checkpoint {source_hash} step {entry.step}",
                root=self.root,
                exp_hash=source_hash,
                rng=self.config.save_rng,
                architecture_saved=self.manager.has_architecture(source_hash),
            )
            self.manager.record_retention(source_hash, self.config.retention())
            manifest = self.manager.manifest(source_hash)
            self._identity = ExperimentIdentity(
                source_hash, manifest.architecture_hash, manifest.hyperparams_hash
            )
            self._hp_canonical = self.hasher.hyperparams(self.ledger.items("hyperparams"))
            self._arch_modules = module_names(self.ledger.items("model"))
            self._detector.rebaseline()
            self._branch_from = self._resumed_from = (source_hash, entry.step)
            # later steps of this experiment belong to the future this resume abandons (or were damaged):
            # the continued run saves them again
            self._submitted = {(source_hash, e.step) for e in manifest.checkpoints if e.step <= entry.step}
            self._last_step = entry.step
            self._last_metrics = dict(entry.metrics)
            self._resume_floor = entry.step
            self._monitor_seen = False
            self._rewind(source_hash, entry.step, f"resume({mode!r})")
            self.manager.event(
                "resumed",
                exp_hash=source_hash,
                step=entry.step,
                file=entry.file,
                skipped=skipped,
                mode=str(mode),
            )
            log.info("weightslab: resumed %s at step %d from %s", source_hash, entry.step, entry.file)
            return entry.step + 1

    def _chain_has_checkpoints(self, exp_hash: str) -> bool:
        """Whether the experiment or any ancestor up to its branch point has a committed checkpoint."""
        h: str | None = exp_hash
        seen: set[str] = set()
        while h is not None and h not in seen and self.manager.has_experiment(h):
            seen.add(h)
            m = self.manager.manifest(h)
            if m.checkpoints:
                return True
            h = m.parent.exp_hash if m.parent else None
        return False

    def _load_for_resume(
        self, exp_hash: str, mode: ResumeMode
    ) -> tuple[dict[str, Any], CheckpointEntry, str, list[str]]:
        candidates: list[tuple[str, CheckpointEntry]] = []
        if mode == "latest":
            h: str | None = exp_hash
            upto: int | None = None
            seen = set()
            while h is not None and h not in seen and self.manager.has_experiment(h):
                seen.add(h)
                m = self.manager.manifest(h)
                if upto is None:  # the live run of the active experiment, newest commit first
                    candidates += [(h, e) for e in reversed(m.live())]
                else:  # an ancestor: the checkpoint the branch continued from, and older ones
                    candidates += [(h, e) for e in reversed(m.checkpoints) if e.step <= upto]
                h, upto = (m.parent.exp_hash, m.parent.checkpoint) if m.parent else (None, None)
                if h is not None and upto is None:
                    break  # the branch started before its parent had any checkpoint
        elif mode == "best":
            if not self.config.monitor:
                raise ConfigError(
                    "resume('best') needs monitor=<metric name> in the checkpoint system's options"
                )
            m = self.manager.manifest(exp_hash)
            order = self.retention.best(m.checkpoints, len(m.checkpoints))
            candidates = [(exp_hash, e) for s in order if (e := m.entry(s)) is not None]
            if not candidates:
                raise CheckpointNotFoundError(
                    f"no checkpoint of {exp_hash} recorded metric {self.config.monitor!r}; resume('latest') instead"
                )
        else:
            candidates = [(exp_hash, self.manager.entry(exp_hash, check_step(mode)))]
        skipped: list[str] = []
        for h, entry in candidates:
            try:
                return self.manager.load_entry(h, entry), entry, h, skipped
            except (CheckpointCorruptedError, CheckpointFormatError, UnsafePathError) as exc:
                skipped.append(entry.file)
                log.warning("weightslab: skipping %s/%s: %s", h, entry.file, exc)
                self.manager.event("checkpoint_unreadable", exp_hash=h, step=entry.step, error=str(exc))
                if isinstance(mode, int):
                    raise
        raise CheckpointNotFoundError(
            f"no checkpoint of experiment {exp_hash} in {self.root} verifies (tried {len(skipped)}: "
            f"{', '.join(skipped) or 'none'}); run `weightslab verify {self.root}` for details"
        )

    # -- preemption and step order --------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise ConfigError(
                "handle_signals=True must be set from the main thread (Python delivers signals there); "
                "build the checkpoint system in the main thread or leave handle_signals off"
            )
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for sig, previous in self._previous_handlers.items():
            with contextlib.suppress(ValueError, TypeError):  # not the main thread, or at shutdown
                signal.signal(sig, previous)
        self._previous_handlers = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only a flag here: saving inside a signal handler could interrupt a save already running.
        if self._stop_signal is not None:
            os._exit(128 + signum)  # a second signal: the user insists
        self._stop_signal = signum

    def _preempt(self, step: int, metrics: Mapping[str, Any] | None) -> None:
        """The step boundary after SIGTERM/SIGINT: checkpoint, flush, close, exit 128 + signal."""
        signum = self._stop_signal
        assert signum is not None
        name = signal.Signals(signum).name
        clean = clean_metrics(metrics)
        if self._identity is None:
            self._begin(step)
        if self._pending:  # announced changes are saved first, at this step, with their trigger
            pending, self._pending = self._pending, []
            self._save_announced(step, pending, clean)
        else:
            self._record_changes(step, clean, announced=None)
        assert self._identity is not None
        if (self._identity.exp_hash, step) not in self._submitted:
            self._save(step, "preempted", clean)
        if self._writer is not None:
            self._writer.wait()
        self.manager.event("preempted", signal=name, step=step, exp_hash=self._identity.exp_hash)
        log.warning("weightslab: %s received; checkpointed step %d and exiting", name, step)
        self._last_step = step
        self.close()
        raise SystemExit(128 + signum)

    def _check_backwards(self, step: int) -> None:
        if self._resume_floor is not None:
            raise StepOrderError(
                f"step {step} is not after step {self._resume_floor}, which this run resumed from; start the "
                f"loop at the step resume() returned ({self._resume_floor + 1})"
            )
        if not self._warned_backwards:
            self._warned_backwards = True
            log.warning(
                "weightslab: step went backwards (%d after %d); saves at steps already saved in this "
                "experiment replace those checkpoints. Pass a global step that only grows.",
                step,
                self._last_step,
            )
        if self._identity is not None and self.manager.has_experiment(self._identity.exp_hash):
            if self._writer is not None:
                self._writer.wait()  # a save of the abandoned future must not commit after the rewind
            self._rewind(self._identity.exp_hash, step - 1, "the step counter went back")

    def _rewind(self, exp_hash: str, step: int, why: str) -> None:
        """Mark the live checkpoints after ``step`` abandoned (manifest and journal), warning once."""
        # the steps after ``step`` will be trained again: their saves must not be skipped as done
        self._submitted = {(h, s) for h, s in self._submitted if h != exp_hash or s <= step}
        try:
            abandoned = self.manager.rewind(exp_hash, step)
        except (OSError, WeightslabError) as exc:
            self._failed(exc, exp_hash, max(step, 0), what="recording the rewind of")
            self._report([exc])
            return
        if abandoned and not self._warned_rewind:
            self._warned_rewind = True
            log.warning(
                "weightslab: %s: going back to step %d of %s abandons its checkpoints at steps %s; "
                "'latest' will not resume them and retention removes them like any older checkpoint",
                why,
                step,
                exp_hash,
                abandoned,
            )

    # -- internals ------------------------------------------------------------------------------
    def _on_ledger_event(self, event: LedgerEvent) -> None:
        """Journal what the ledger hears from outside the training loop (file edits, rejections)."""
        if self._closed or event.kind != "hyperparams":
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

    def _identity_now(self) -> ExperimentIdentity:
        return self.hasher.identity(self.ledger.items("model"), self.ledger.items("hyperparams"))

    def _begin(self, step: int) -> None:
        """The first step: the configuration active now is the first experiment (setup is not a change)."""
        ident = self._identity_now()
        created = self._try_open(ident, None, step)
        if created is False:
            latest = self.manager.manifest(ident.exp_hash).latest()
            self.manager.event("experiment_activated", exp_hash=ident.exp_hash, step=step, reason="start")
            if latest is not None and latest.step >= step:
                log.warning(
                    "weightslab: experiment %s already has checkpoints up to step %d and this run did not "
                    "resume(); saves at the same steps will replace them",
                    ident.exp_hash,
                    latest.step,
                )
                self._rewind(ident.exp_hash, step - 1, "the step counter restarted")
        self._identity = ident
        self._hp_canonical = self.hasher.hyperparams(self.ledger.items("hyperparams"))
        self._arch_modules = module_names(self.ledger.items("model"))
        self._detector.rebaseline()

    def _try_open(self, ident: ExperimentIdentity, parent: ParentRef | None, step: int) -> bool | None:
        """Open the experiment folder; True if created, False if it existed, None if it failed.

        A failure (a full or read-only disk) is reported like a failed save and does not stop training:
        the experiment becomes active anyway and the next save of it tries to open it again.
        """
        try:
            _, created = self._open_experiment(ident, parent)
        except (OSError, WeightslabError) as exc:
            self._unopened = (ident, parent)
            self._failed(exc, ident.exp_hash, step, what="opening experiment")
            self._report([exc])
            return None
        self._unopened = None
        return created

    def _open_experiment(self, ident: ExperimentIdentity, parent: ParentRef | None) -> tuple[Any, bool]:
        models = self.ledger.items("model")
        if self.manager.has_experiment(ident.exp_hash):
            self.manager.record_retention(ident.exp_hash, self.config.retention())
        return self.manager.create_experiment(
            exp_hash=ident.exp_hash,
            architecture_hash=ident.architecture_hash,
            hyperparams_hash=ident.hyperparams_hash,
            parent=parent,
            retention=self.config.retention(),
            hyperparams=self._full_hyperparams(),
            models=models,
            save_architecture=self.config.save_architecture,
        )

    def _record_changes(self, step: int, metrics: dict[str, float | None], announced: str | None) -> bool:
        """Compare with the active experiment; on a hash change open the new one and save. True if switched."""
        assert self._identity is not None
        old = self._identity
        ident = self._identity_now()
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
        self._detector.rebaseline()
        return False

    def _switch(self, ident: ExperimentIdentity, reason: str, step: int) -> None:
        assert self._identity is not None
        old = self._identity
        if self._writer is not None:
            self._writer.wait()  # the parent's newest checkpoint must be committed to be referenced
        if self._branch_from is not None and self._branch_from[0] == old.exp_hash:
            parent_checkpoint: int | None = self._branch_from[1]
        else:
            latest = (
                self.manager.manifest(old.exp_hash).latest()
                if self.manager.has_experiment(old.exp_hash)
                else None
            )
            parent_checkpoint = None if latest is None else latest.step
        parent = ParentRef(old.exp_hash, step, reason, checkpoint=parent_checkpoint)
        new_hp = self.hasher.hyperparams(self.ledger.items("hyperparams"))
        new_modules = module_names(self.ledger.items("model"))
        details: dict[str, Any] = {}
        if reason == "config_change" or ident.hyperparams_hash != old.hyperparams_hash:
            details["changed_keys"] = list(changed_keys(self._hp_canonical, new_hp))
        if ident.architecture_hash != old.architecture_hash:
            details["modules"] = module_diff(self._arch_modules, new_modules)
        self.manager.event(
            "change_detected",
            kind=reason,
            exp_hash=ident.exp_hash,
            previous=old.exp_hash,
            step=step,
            **details,
        )
        created = self._try_open(ident, parent, step)
        if created is False:
            self.manager.event(
                "experiment_activated",
                exp_hash=ident.exp_hash,
                previous=old.exp_hash,
                step=step,
                reason=reason,
            )
        log.info(
            "weightslab: %s at step %d: experiment %s -> %s%s",
            reason,
            step,
            old.exp_hash,
            ident.exp_hash,
            " (returning to an earlier configuration)" if created is False else "",
        )
        self._identity = ident
        self._hp_canonical = new_hp
        self._arch_modules = new_modules
        self._branch_from = None
        self._detector.rebaseline()

    def _full_hyperparams(self) -> dict[str, Any]:
        """Every registered set, canonical, excluded keys included (they are restored on resume)."""
        return {name: canonicalize(hp, name) for name, hp in self.ledger.items("hyperparams").items()}

    def _snapshot(
        self, step: int, trigger: str, metrics: dict[str, float | None]
    ) -> tuple[dict[str, Any], Any]:
        assert self._identity is not None
        buffers = self._buffers
        buffers.begin()
        payload: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "exp_hash": self._identity.exp_hash,
            "step": step,
            "created": self._clock(),
            "trigger": trigger,
            "metrics": dict(metrics),
        }
        models = self.ledger.items("model")
        payload["models"] = {n: buffers.tree(("models", n), m.state_dict()) for n, m in models.items()}
        for kind, key in (("optimizer", "optimizers"), ("scheduler", "schedulers"), ("stateful", "extra")):
            objs = self.ledger.items(kind)  # type: ignore[arg-type]
            payload[key] = {n: buffers.tree((key, n), o.state_dict()) for n, o in objs.items()}
        payload["rng"] = capture_rng() if self.config.save_rng else {}
        # the plain form (int keys, tuples, inf) so that resume restores values with their types
        hyperparams = self.ledger.items("hyperparams")
        for name, hp in hyperparams.items():
            canonicalize(hp, name)  # refuses, naming the key, a value changed into something unserialisable
        payload["hyperparams"] = {name: plain(hp) for name, hp in hyperparams.items()}
        payload["frozen"] = {
            n: [pn for pn, p in m.named_parameters() if not p.requires_grad] for n, m in models.items()
        }
        event = buffers.end()
        return payload, event

    def _save(self, step: int, trigger: str, metrics: dict[str, float | None]) -> None:
        if self._writer is not None:
            self._writer.wait()  # the buffers are about to be overwritten
            self._surface_errors()
        # Another thread (set_hyperparam, a watched file) may move the config between the change check
        # and the snapshot. Holding the ledger still, re-check the hyperparameters and record such a
        # change first, so that a file is always filed under the hash of the values it holds.
        with self.ledger.locked():
            assert self._identity is not None
            live_hp = self.hasher.hyperparams_hash(self.ledger.items("hyperparams"))
            if live_hp != self._identity.hyperparams_hash:
                ident = self._identity_now()
                if ident.exp_hash != self._identity.exp_hash:
                    trigger = (
                        "model_change"
                        if ident.architecture_hash != self._identity.architecture_hash
                        else "config_change"
                    )
                    self._switch(ident, trigger, step)
            self._save_locked(step, trigger, metrics)
        if self.config.monitor is not None and not self._monitor_seen:
            self._check_monitor(self.config.monitor, metrics)

    def _check_monitor(self, monitor: str, metrics: Mapping[str, float | None]) -> None:
        """Warn (or raise, with on_error="raise") at the first save that lacks the monitored metric,
        unless an earlier checkpoint of the experiment reported it. Retention deletes nothing by
        ``keep_best`` until it appears, so a misspelt name costs disk, never checkpoints."""
        if metrics.get(monitor) is not None:
            self._monitor_seen = True
            return
        assert self._identity is not None
        h = self._identity.exp_hash
        if self.manager.has_experiment(h) and any(
            e.metric(monitor) is not None for e in self.manager.manifest(h).checkpoints
        ):
            self._monitor_seen = True
            return
        if self._monitor_warned:
            return
        self._monitor_warned = True
        got = ", ".join(repr(k) for k in metrics) or "no metrics"
        close = difflib.get_close_matches(monitor, list(metrics), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        message = (
            f"weightslab: monitor={monitor!r} is not among the metrics of this save (got {got}){hint} "
            f"keep_best and resume('best') use it; until it is reported, retention deletes nothing "
            f"by keep_best. Pass metrics={{{monitor!r}: value}} to checkpoint_on_step, or fix monitor="
        )
        self.manager.event("monitor_missing", monitor=monitor, got=list(metrics), suggestion=close[:1])
        if self.config.on_error == "raise":
            raise ConfigError(message)
        warnings.warn(message, stacklevel=4)

    def _save_locked(self, step: int, trigger: str, metrics: dict[str, float | None]) -> None:
        assert self._identity is not None
        exp_hash = self._identity.exp_hash
        unopened = self._unopened
        if (
            unopened is not None
            and unopened[0].exp_hash == exp_hash
            and self._try_open(unopened[0], unopened[1], step) is None
        ):
            return  # still cannot open it: reported, training goes on
        try:
            payload, event = self._snapshot(step, trigger, metrics)
        except Exception as exc:
            self._submitted.add((exp_hash, step))  # reported once; close() does not try it again
            self._failed(exc, exp_hash, step)
            self._report([exc])
            return
        self._submitted.add((exp_hash, step))
        if self._branch_from is not None and self._branch_from[0] == exp_hash:
            self._branch_from = None  # a child now branches from the newest checkpoint, not the resumed one
        job = partial(self._commit, exp_hash, step, payload, trigger, metrics, event, self._notes)
        if self._writer is not None:
            self._writer.submit(job)
        else:
            try:
                job()
            except Exception as exc:
                self._report([exc])

    def _commit(
        self,
        exp_hash: str,
        step: int,
        payload: dict[str, Any],
        trigger: str,
        metrics: dict[str, float | None],
        event: Any,
        notes: tuple[tuple[str, ...], str] = ((), ""),
    ) -> None:
        """Runs on the writer thread (or inline when async_save=False)."""
        try:
            if event is not None:
                event.synchronize()
            t0 = time.perf_counter()
            entry = self.manager.save(
                exp_hash, step, payload, trigger=trigger, metrics=metrics, tags=notes[0], description=notes[1]
            )
            log.info(
                "weightslab: saved %s step %d (%s, %.1f MB, %.2fs)",
                exp_hash,
                step,
                trigger,
                entry.bytes / 1e6,
                time.perf_counter() - t0,
            )
            if self._resumed_from and self._resumed_from[0] == exp_hash and step > self._resumed_from[1]:
                self._resumed_from = None
            protected = (
                {self._resumed_from[1]} if self._resumed_from and self._resumed_from[0] == exp_hash else set()
            )
            try:
                deleted = self.manager.apply_retention(exp_hash, self.retention, protected)
            except RetentionRefusedError as exc:  # the save committed; only unsafe entries were kept
                log.error("weightslab: %s", exc)
                self.manager.event("retention_refused", exp_hash=exp_hash, steps=sorted(exc.refused))
                deleted = exc.deleted
            if deleted:
                log.info("weightslab: retention removed %s steps %s", exp_hash, deleted)
        except Exception as exc:
            self._failed(exc, exp_hash, step)
            raise

    def _failed(self, exc: BaseException, exp_hash: str, step: int, what: str = "saving") -> None:
        self._failures += 1
        path = self.manager.experiment(exp_hash).step_file(step)
        log.error("weightslab: %s %s failed: %s: %s", what, path, type(exc).__name__, exc)
        try:
            self.manager.event(
                "save_failed",
                exp_hash=exp_hash,
                step=step,
                path=str(path),
                error=f"{type(exc).__name__}: {exc}",
            )
        except OSError as journal_exc:  # the disk may be the problem; the log line above stands
            log.error("weightslab: could not journal the failure: %s", journal_exc)

    def _surface_errors(self) -> None:
        if self._writer is not None:
            self._report(self._writer.take_errors())

    def _report(self, errors: list[BaseException]) -> None:
        for exc in errors:
            message = f"weightslab: a checkpoint save failed: {type(exc).__name__}: {exc}"
            if self.config.on_error == "raise":
                raise CheckpointSaveError(message) from exc
            warnings.warn(
                message + " (training continues; on_error='raise' makes this an error)", stacklevel=3
            )


# -- helpers --------------------------------------------------------------------------------------
def _config_record(config: CheckpointConfig) -> dict[str, Any]:
    record = asdict(config)
    record["root_log_dir"] = str(config.root_log_dir)
    record["exclude_hyperparams"] = list(config.exclude_hyperparams)
    return record


# -- the process-wide system ----------------------------------------------------------------------
_SYSTEM: AutomaticCheckpointSystem | None = None
_SYSTEM_LOCK = threading.Lock()


def get_checkpoint_system(
    root_log_dir: str | os.PathLike[str] | None = None,
    checkpoint_frequency: int | None = None,
    auto_init: bool = True,
    **config: Any,
) -> AutomaticCheckpointSystem:
    """The process-wide checkpoint system, built on first call.

    Options are those of :class:`CheckpointConfig`. Calling again with no options returns the open
    system; with options that differ from its configuration, it raises SystemConfigurationError
    (close it first). After ``close()`` a call builds a fresh system. ``auto_init=False`` raises
    instead of building one.
    """
    global _SYSTEM
    options = dict(config)
    if root_log_dir is not None:
        options["root_log_dir"] = root_log_dir
    if checkpoint_frequency is not None:
        options["checkpoint_frequency"] = checkpoint_frequency
    with _SYSTEM_LOCK:
        current = _SYSTEM
    if current is not None and not current.closed:
        CheckpointConfig.from_kwargs(
            **{**_config_kwargs(current.config), **options}
        )  # validates names/values
        diffs = current.config.differences(options)
        if diffs:
            listed = ", ".join(f"{k}={theirs!r} (open: {mine!r})" for k, (mine, theirs) in diffs.items())
            raise SystemConfigurationError(
                f"a checkpoint system is already open on {current.root} with other options: {listed}; "
                "call get_checkpoint_system().close() first, or call it without options to use the open one"
            )
        return current
    if not auto_init:
        raise SystemConfigurationError(
            "no checkpoint system is open; call get_checkpoint_system(root_log_dir=..., checkpoint_frequency=...)"
        )
    system = AutomaticCheckpointSystem(CheckpointConfig.from_kwargs(**options))
    with _SYSTEM_LOCK:
        _SYSTEM = system
    return system


def _config_kwargs(config: CheckpointConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in asdict(config)}


def checkpoint_on_step(
    step: int,
    metrics: Mapping[str, Any] | None = None,
    *,
    tags: Iterable[str] | None = None,
    description: str | None = None,
) -> None:
    """Call once per training step (see :meth:`AutomaticCheckpointSystem.checkpoint_on_step`)."""
    if tags is None and description is None:
        get_checkpoint_system().checkpoint_on_step(step, metrics)
    else:
        get_checkpoint_system().checkpoint_on_step(step, metrics, tags=tags, description=description)


def checkpoint_on_model_change(step: int | None = None, metrics: Mapping[str, Any] | None = None) -> None:
    """Record a model change now (pruning, added layers...)."""
    get_checkpoint_system().checkpoint_on_model_change(step, metrics)


def checkpoint_on_config_change(step: int | None = None, metrics: Mapping[str, Any] | None = None) -> None:
    """Record a hyperparameter change now."""
    get_checkpoint_system().checkpoint_on_config_change(step, metrics)


def checkpoint_on_state_change(
    label: str = "state_change", step: int | None = None, metrics: Mapping[str, Any] | None = None
) -> None:
    """Save now with ``trigger=label`` in the current experiment ("freeze", "reset", ...)."""
    get_checkpoint_system().checkpoint_on_state_change(label, step, metrics)
