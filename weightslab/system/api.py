"""The process-wide checkpoint system and the module-level ``checkpoint_on_*`` functions.

The slot is read and written only under ``_SYSTEM_LOCK``, and a system is built while holding it,
so two threads cannot both build one (the second would fail on the root's writer lock). Lock order:
a system's own lock may be held while taking ``_SYSTEM_LOCK`` (close releases the slot), never the
reverse; nothing here takes a system's lock while holding ``_SYSTEM_LOCK``. It is re-entrant so that
a failing construction that closes itself on the same thread cannot deadlock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

from weightslab.errors import SystemConfigurationError
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig

_SYSTEM: AutomaticCheckpointSystem | None = None
_SYSTEM_LOCK = threading.RLock()


def _release(system: AutomaticCheckpointSystem) -> None:
    """Empty the slot if it still holds ``system`` (called by its close)."""
    global _SYSTEM
    with _SYSTEM_LOCK:
        if _SYSTEM is system:
            _SYSTEM = None


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
            if options:  # nothing to compare without options: the common call stays a slot read
                _check_same_options(current, options)
            return current
        if not auto_init:
            raise SystemConfigurationError(
                "no checkpoint system is open; call get_checkpoint_system(root_log_dir=..., checkpoint_frequency=...)"
            )
        # built under the lock: a RootLockedError or ConfigError propagates and leaves the slot empty
        system = AutomaticCheckpointSystem(CheckpointConfig.from_kwargs(**options))
        system._on_close.append(_release)
        _SYSTEM = system
        return system


def _open_system() -> AutomaticCheckpointSystem:
    """The open process-wide system, without taking the lock when there is one (the per-step path).

    Reading the slot is one reference read; a system closed by another thread meanwhile raises
    SystemConfigurationError from its own check, as a call on a closed system always does.
    """
    system = _SYSTEM
    if system is not None and not system._closed:
        return system
    return get_checkpoint_system()


def _check_same_options(current: AutomaticCheckpointSystem, options: dict[str, Any]) -> None:
    """Validate ``options``; SystemConfigurationError when they differ from the open system's."""
    CheckpointConfig.from_kwargs(**{**_config_kwargs(current.config), **options})  # validates names/values
    diffs = current.config.differences(options)
    if diffs:
        listed = ", ".join(f"{k}={theirs!r} (open: {mine!r})" for k, (mine, theirs) in diffs.items())
        raise SystemConfigurationError(
            f"a checkpoint system is already open on {current.root} with other options: {listed}; "
            "call get_checkpoint_system().close() first, or call it without options to use the open one"
        )


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
    system = _SYSTEM  # _open_system() inlined: this runs on every training step
    if system is None or system._closed:
        system = get_checkpoint_system()
    if tags is None and description is None:
        system.checkpoint_on_step(step, metrics)
    else:
        system.checkpoint_on_step(step, metrics, tags=tags, description=description)


def checkpoint_on_epoch_end(
    epoch: int, metrics: Mapping[str, Any] | None = None, *, step: int | None = None
) -> None:
    """Call when an epoch ends (see :meth:`AutomaticCheckpointSystem.checkpoint_on_epoch_end`)."""
    _open_system().checkpoint_on_epoch_end(epoch, metrics, step=step)


def checkpoint_on_model_change(step: int | None = None, metrics: Mapping[str, Any] | None = None) -> None:
    """Record a model change now (pruning, added layers...)."""
    _open_system().checkpoint_on_model_change(step, metrics)


def checkpoint_on_config_change(step: int | None = None, metrics: Mapping[str, Any] | None = None) -> None:
    """Record a hyperparameter change now."""
    _open_system().checkpoint_on_config_change(step, metrics)


def checkpoint_on_state_change(
    label: str = "state_change", step: int | None = None, metrics: Mapping[str, Any] | None = None
) -> None:
    """Save now with ``trigger=label`` in the current experiment ("freeze", "reset", ...)."""
    _open_system().checkpoint_on_state_change(label, step, metrics)
