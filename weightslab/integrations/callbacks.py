"""``CheckpointCallback`` / ``AsyncCheckpointCallback`` with ``CheckpointParameters``, for your own loop.

The callback owns an :class:`~weightslab.system.automatic.AutomaticCheckpointSystem` on its own
:class:`Ledger` over ``root_dir``; the loop (or any trainer) calls its hooks, in this order:

- ``on_train_start(models=, optimizers=, schedulers=, dataloaders=, hyperparams=, callbacks=)``
  registers them, resumes per ``resume_mode`` (in place) and returns the step to continue from;
- ``on_train_step_end(step, metrics)`` after each optimizer step (``checkpoint_on_step``: the step
  schedule and change detection);
- ``on_validation_end(metrics)`` (alias ``post_validation_epoch``) after a validation: saves when
  :meth:`CheckpointCallback.should_save` says so, with the validation metrics;
- ``on_epoch_end(epoch)`` when an epoch ends (``checkpoint_on_epoch_end``: the epoch schedule);
- ``on_train_end()`` flushes, saves the last step (``save_last``) and releases the root.

A step is saved once: metrics reported for a step already saved (a validation at a step the step
schedule saved) are merged into that checkpoint's manifest entry, where ``keep_top_k`` ranks them.
``find_checkpoints``, ``CheckpointInfo`` and ``as_trainer_checkpoint`` live in ``lookup``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from weightslab.errors import CheckpointNotFoundError, ConfigError, SystemConfigurationError
from weightslab.integrations.lookup import (  # the last three are re-exported: they are documented here
    DATALOADER_PREFIX,
    TRAINER_NAME,
    CheckpointInfo,
    as_trainer_checkpoint,
    find_checkpoints,
    find_entry,
    load_newest,
)
from weightslab.registry.ledger import Ledger
from weightslab.store.manager import CheckpointManager
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig
from weightslab.system.validation import check_step, clean_metrics

log = logging.getLogger("weightslab")

SELF_NAME = "checkpoint"  # this callback's entry in trainer.callbacks, whatever its (sub)class
_NEVER = sys.maxsize  # the step frequency when no step schedule is set: no step reaches it

__all__ = [
    "AsyncCheckpointCallback",
    "CheckpointCallback",
    "CheckpointInfo",
    "CheckpointParameters",
    "as_trainer_checkpoint",
    "find_checkpoints",
]


def _optional_count(name: str, value: object, meaning: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be an int >= 1 ({meaning}) or None, got {value!r}")


@dataclass(kw_only=True, frozen=True)
class CheckpointParameters:
    """What to checkpoint and when; checked at construction (ConfigError naming the value and the fix).

    Attributes:
        root_dir: the weightslab root the checkpoints go to.
        monitor: the metric ``keep_top_k`` and ``resume_mode="best"`` rank by (None: by recency).
        mode: "min" or "max": which direction of ``monitor`` is better.
        keep_top_k: keep the best k checkpoints by ``monitor`` (the newest k without a monitor);
            None keeps all. The newest checkpoint is always kept.
        save_last: ``on_train_end`` saves the last step when it is newer than the newest checkpoint.
        save_every_n_epochs: also save at the end of every n-th epoch.
        save_every_n_steps: also save at every positive multiple of n steps.
        resume_mode: at ``on_train_start``, restore the "latest" or "best" checkpoint, or None to
            start fresh (the existing checkpoints then belong to an abandoned run).
        on_error: "warn" keeps training when a save fails, "raise" raises CheckpointSaveError.
    """

    root_dir: str | os.PathLike[str] = "checkpoints"
    monitor: str | None = None
    mode: Literal["min", "max"] = "min"
    keep_top_k: int | None = None
    save_last: bool = True
    save_every_n_epochs: int | None = None
    save_every_n_steps: int | None = None
    resume_mode: Literal["latest", "best"] | None = "latest"
    on_error: Literal["warn", "raise"] = "warn"

    def __post_init__(self) -> None:
        if not isinstance(self.root_dir, (str, os.PathLike)) or not os.fspath(self.root_dir):
            raise ConfigError(f"root_dir must be a non-empty folder path, got {self.root_dir!r}")
        if self.monitor is not None and (not isinstance(self.monitor, str) or not self.monitor):
            raise ConfigError(
                f"monitor must be a metric name such as 'val_loss', or None; got {self.monitor!r}"
            )
        if self.mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'min' or 'max', got {self.mode!r}")
        _optional_count("keep_top_k", self.keep_top_k, "checkpoints to keep")
        _optional_count("save_every_n_epochs", self.save_every_n_epochs, "epochs between saves")
        _optional_count("save_every_n_steps", self.save_every_n_steps, "steps between saves")
        if not isinstance(self.save_last, bool):
            raise ConfigError(f"save_last must be True or False, got {self.save_last!r}")
        if self.resume_mode not in ("latest", "best", None):
            raise ConfigError(f"resume_mode must be 'latest', 'best' or None, got {self.resume_mode!r}")
        if self.resume_mode == "best" and self.monitor is None:
            raise ConfigError("resume_mode='best' needs monitor=<metric name>, or use resume_mode='latest'")
        if self.on_error not in ("warn", "raise"):
            raise ConfigError(f"on_error must be 'warn' or 'raise', got {self.on_error!r}")

    def to_config(self, *, async_save: bool) -> CheckpointConfig:
        """The :class:`CheckpointConfig` of the system a callback runs."""
        ranked = self.monitor is not None
        return CheckpointConfig(
            root_log_dir=Path(self.root_dir).expanduser().resolve(),
            checkpoint_frequency=self.save_every_n_steps or _NEVER,
            every_n_epochs=self.save_every_n_epochs,
            keep_best=(self.keep_top_k or 0) if ranked else 0,
            keep_last=None if ranked else self.keep_top_k,
            monitor=self.monitor,
            mode=self.mode,
            save_last=self.save_last,
            async_save=async_save,
            on_error=self.on_error,
        )


class _TrainerState:
    """The trainer's counters and the callbacks' states: the ``trainer`` entry of a checkpoint."""

    def __init__(self) -> None:
        self.global_step = 0  # optimizer steps done: the step to continue from
        self.current_epoch = 0  # the epoch in progress (0-based), as Lightning counts it
        self.callbacks: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "current_epoch": self.current_epoch,
            "callbacks": {name: cb.state_dict() for name, cb in self.callbacks.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.global_step = int(state.get("global_step", 0))
        self.current_epoch = int(state.get("current_epoch", 0))
        for name, saved in state.get("callbacks", {}).items():
            if name in self.callbacks:
                self.callbacks[name].load_state_dict(saved)


def _named(objects: Any, default: str) -> dict[str, Any]:
    if objects is None:
        return {}
    return dict(objects) if isinstance(objects, Mapping) else {default: objects}


def _is_stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


class CheckpointCallback:
    """Checkpoints a training loop through hooks the loop calls (see the module docstring); saves
    are synchronous. Override :meth:`should_save` to choose which validations are checkpointed."""

    async_save: ClassVar[bool] = False

    def __init__(self, params: CheckpointParameters) -> None:
        if not isinstance(params, CheckpointParameters):
            raise TypeError(f"CheckpointCallback expects CheckpointParameters, got {type(params).__name__}")
        self.params = params
        self.system: AutomaticCheckpointSystem | None = None
        self._current_metric: float | None = None  # the monitored value of the last validation
        self._trainer = _TrainerState()
        self._step_metrics: tuple[int, dict[str, Any]] | None = None
        self._val_metrics: tuple[int | None, dict[str, Any]] = (None, {})
        self._saved_steps: set[int] = set()  # steps this callback's schedules saved (or tried to)

    @property
    def global_step(self) -> int:
        """Optimizer steps done (after a resume: the step training continues from)."""
        return self._trainer.global_step

    @property
    def current_epoch(self) -> int:
        """The epoch in progress, 0-based: ``epoch + 1`` once ``on_epoch_end(epoch)`` ran (a checkpoint
        saved at the validation of epoch e says e; resume from ``global_step``, as Lightning does)."""
        return self._trainer.current_epoch

    # -- hooks -----------------------------------------------------------------------------------
    def on_train_start(
        self,
        models: Any = None,
        optimizers: Any = None,
        schedulers: Any = None,
        dataloaders: Mapping[str, Any] | None = None,
        *,
        hyperparams: Any = None,
        callbacks: Mapping[str, Any] | None = None,
    ) -> int:
        """Register what training holds, resume per ``resume_mode`` and return the step to continue from.

        Each of models/optimizers/schedulers is one object or ``{name: object}``; dataloaders (and
        callbacks) without ``state_dict()``/``load_state_dict()`` are not saved (callbacks: TypeError).
        Raises SystemConfigurationError if training already started, ArchitectureMismatchError when a
        model does not fit the checkpoint, CheckpointNotFoundError for "best" with no ranked checkpoint.
        """
        if self.system is not None and not self.system.closed:
            raise SystemConfigurationError("on_train_start was already called; call on_train_end first")
        ledger = Ledger()
        for name, model in _named(models, "model").items():
            ledger.register_model(name, model)
        for name, optimizer in _named(optimizers, "optimizer").items():
            ledger.register_optimizer(name, optimizer)
        for name, scheduler in _named(schedulers, "scheduler").items():
            ledger.register_scheduler(name, scheduler)
        for name, loader in (dataloaders or {}).items():
            if _is_stateful(loader):
                ledger.register_stateful(DATALOADER_PREFIX + name, loader)
            else:
                log.info("weightslab: dataloader %r has no state_dict(); its position is not saved", name)
        if hyperparams is not None:
            ledger.register_hyperparams("config", hyperparams)
        self._trainer.callbacks = {SELF_NAME: self}
        for name, cb in (callbacks or {}).items():
            if not _is_stateful(cb):
                raise TypeError(
                    f"callback {name!r} has no state_dict()/load_state_dict(); it cannot be saved"
                )
            self._trainer.callbacks[name] = cb
        ledger.register_stateful(TRAINER_NAME, self._trainer)
        self.system = AutomaticCheckpointSystem(
            self.params.to_config(async_save=self.async_save), ledger=ledger
        )
        if self.params.resume_mode is None:
            return 0
        try:
            return self.system.resume(self.params.resume_mode)
        except BaseException:
            self.system.close()
            raise

    def on_train_step_end(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
        """Call after step ``step``'s optimizer update (0-based); saves on ``save_every_n_steps``."""
        system = self._started()
        step = check_step(step)
        self._trainer.global_step = step + 1
        self._step_metrics = (step, dict(metrics or {}))
        n = self.params.save_every_n_steps
        if n is not None and step > 0 and step % n == 0:
            self._saved_steps.add(step)
        system.checkpoint_on_step(step, metrics)

    def on_validation_end(self, metrics: Mapping[str, Any]) -> None:
        """Record a validation's metrics (``_current_metric`` is the monitored one) and save if
        :meth:`should_save` says so."""
        system = self._started()
        clean = clean_metrics(metrics)
        self._val_metrics = (system.last_step, clean)
        self._current_metric = None if self.params.monitor is None else clean.get(self.params.monitor)
        if self.should_save():
            self._save("validation")

    def post_validation_epoch(self, result: Mapping[str, Any]) -> None:
        """The same as :meth:`on_validation_end` (the name other trainers give this hook)."""
        self.on_validation_end(result)

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, Any] | None = None) -> None:
        """Call when epoch ``epoch`` (0-based) ends; saves on ``save_every_n_epochs``, with the
        metrics of a validation at the same step."""
        system = self._started()
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be the 0-based index of the epoch that ended, got {epoch!r}")
        self._trainer.current_epoch = epoch + 1
        n, step = self.params.save_every_n_epochs, system.last_step
        saved_before = None  # the step of this epoch's save, if an earlier save took that step
        if n is not None and (epoch + 1) % n == 0 and step is not None:
            saved_before = step if step in self._saved_steps else None
            self._saved_steps.add(step)
        reported = clean_metrics(metrics)
        system.checkpoint_on_epoch_end(epoch, {**self._metrics_now(), **reported} or None)
        if saved_before is not None:
            self._record_late(saved_before, reported)

    def on_train_end(self) -> None:
        """Flush pending saves, save the last step (``save_last``) and release the root."""
        if self.system is not None:
            self.system.close()

    # -- saving ----------------------------------------------------------------------------------
    def should_save(self) -> bool:
        """Whether the validation just reported (``self._current_metric``) is checkpointed; default: all."""
        return True

    def save(self) -> int:
        """Checkpoint now, at the last step, with ``_current_metric`` as the monitored metric; returns the step."""
        return self._save("manual")

    def _save(self, trigger: str) -> int:
        system = self._started()
        step = system.last_step
        if step is None:
            raise ValueError("nothing to save yet: call on_train_step_end(step) after a training step first")
        metrics = self._metrics_now()
        if self.params.monitor is not None and self._current_metric is not None:
            metrics[self.params.monitor] = self._current_metric
        already = step in self._saved_steps
        self._saved_steps.add(step)
        exp_hash = system.save(step, metrics, trigger=trigger)
        if already:
            self._record_late(step, metrics, exp_hash)
        return step

    def _record_late(self, step: int, metrics: Mapping[str, Any], exp_hash: str | None = None) -> None:
        """Merge metrics reported after ``step`` was saved into that checkpoint's manifest entry: a step is
        saved once, and this is how keep_top_k and "best" still rank it (retention applies the new ranking at once)."""
        known = {k: v for k, v in metrics.items() if v is not None}  # a non-finite value was logged already
        if not known:
            return
        try:
            self._started().tag(step, exp_hash=exp_hash, metrics=known)
        except CheckpointNotFoundError:  # that save failed (and was reported): no checkpoint holds the step
            log.warning(
                "weightslab: step %d has no committed checkpoint, so the metrics %s reported for it are not "
                "recorded",
                step,
                sorted(known),
            )

    def _metrics_now(self) -> dict[str, Any]:
        """The metrics of the last training step and of a validation at that same step."""
        system = self._started()
        out: dict[str, Any] = {}
        if self._step_metrics is not None and self._step_metrics[0] == system.last_step:
            out.update(clean_metrics(self._step_metrics[1]))
        if self._val_metrics[0] == system.last_step:
            out.update(self._val_metrics[1])
        return out

    def flush(self) -> None:
        """Wait for the save in flight (asynchronous saving); reports failures per ``on_error``."""
        if self.system is not None and not self.system.closed:
            self.system.flush()

    def _started(self) -> AutomaticCheckpointSystem:
        if self.system is None or self.system.closed:
            raise SystemConfigurationError("call on_train_start(models=..., optimizers=...) first")
        return self.system

    # -- the callback's own state (saved under trainer.callbacks) --------------------------------
    def state_dict(self) -> dict[str, Any]:
        """This callback's state in a checkpoint; subclasses add theirs."""
        return {"current_metric": self._current_metric}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (at a resume)."""
        self._current_metric = state.get("current_metric")

    # -- loading ---------------------------------------------------------------------------------
    def load(self, which: Literal["latest", "best"] | int | str | None = None) -> dict[str, Any]:
        """A checkpoint as ``{"trainer", "models", "optimizers", "schedulers", "dataloaders", "metadata"}``.

        ``which``: "latest" (corrupt files skipped, as resume does), "best" (by ``monitor``), a step,
        or a step file's path; default: ``resume_mode`` or "latest". Verified; restores nothing.
        Raises CheckpointNotFoundError, CheckpointCorruptedError (naming the file).
        """
        which = which if which is not None else (self.params.resume_mode or "latest")
        self.flush()  # a background save of this callback is part of what "latest" means
        manager = (
            self.system.manager
            if self.system is not None
            else CheckpointManager(Path(self.params.root_dir).expanduser().resolve(), mode="r")
        )
        if which == "latest":
            loaded = load_newest(manager)
            if loaded is None:
                raise CheckpointNotFoundError(f"{manager.root} holds no checkpoint yet")
            return as_trainer_checkpoint(loaded[0])
        if which == "best":
            if self.params.monitor is None:
                raise ConfigError("load('best') needs CheckpointParameters(monitor=<metric name>)")
            exp_hash = manager.last_active()
            if exp_hash is None:
                raise CheckpointNotFoundError(f"{manager.root} holds no checkpoint yet")
            entry = manager.entry(exp_hash, "best", monitor=self.params.monitor, mode=self.params.mode)
            return as_trainer_checkpoint(manager.load_entry(exp_hash, entry))
        return as_trainer_checkpoint(manager.load_entry(*find_entry(manager, which)))


class AsyncCheckpointCallback(CheckpointCallback):
    """A :class:`CheckpointCallback` whose saves are written in the background: a save copies the state
    and returns, a writer thread serialises, commits and applies retention; ``flush()`` waits."""

    async_save: ClassVar[bool] = True
