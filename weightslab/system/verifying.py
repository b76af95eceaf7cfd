"""A resume's checksum finishing on a helper thread, and the gates that wait for it.

``resume()`` (``verify="split"``, the default) restores a checkpoint and returns while the blocks of
its step file holding only optimizer state are still being checked; ``verify="background"`` while
the whole file is. The state it restored is then unverified until :class:`PendingCheck` says
otherwise, and nothing may read the unchecked part for training, change it or persist it before that:
each registered optimizer's ``step()`` and ``state_dict()`` wait for the check first (pre-hooks on
that optimizer, also on one registered later), and so do the system's change checks, saves,
``close()``, the preemption exit and the next ``resume()``. A checksum that fails is journalled as ``checkpoint_unreadable`` and every gate then
raises :class:`~weightslab.errors.UnverifiedStateError` until a restore replaces that state; a later
``resume()`` verifies that checkpoint before restoring it, so a restarted process falls back instead
of restoring it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import torch

from weightslab.errors import (
    CheckpointCorruptedError,
    CheckpointFormatError,
    UnsafePathError,
    UnverifiedStateError,
)
from weightslab.format.manifest import CheckpointEntry

log = logging.getLogger("weightslab")

T = TypeVar("T")


class Background(Generic[T]):
    """Run ``fn`` on a new daemon thread now; :meth:`result` waits for it and returns or raises.

    For work that releases the GIL (a checksum through libxxhash) overlapping this thread's own.
    """

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="weightslab-verify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # handed to whoever waits in result()
            self._error = exc

    def result(self) -> T:
        """Wait for ``fn`` and return its value, or raise what it raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set by _run when no error was kept


class PendingCheck:
    """The checksum of checkpoint ``entry`` of ``exp_hash``, restored before it was verified.

    ``journal`` records a failure (the manager's ``event``). :meth:`guard` puts a step pre-hook on an
    optimizer that waits for the checksum; the hooks stay while it failed, so that every ``step()``
    on the unverified state raises, and go at :meth:`release` (a hook never removes itself: torch
    is iterating over the hooks while it runs).
    """

    def __init__(
        self,
        checking: Background[Any],
        exp_hash: str,
        entry: CheckpointEntry,
        optimizers: Iterable[torch.optim.Optimizer],
        journal: Callable[..., None],
    ) -> None:
        self._checking = checking
        self.exp_hash = exp_hash
        self.entry = entry
        self._journal = journal
        self._lock = threading.Lock()
        self._done = False
        self._logged = False
        self._error: UnverifiedStateError | None = None
        self._hooks: list[Any] = []
        for opt in optimizers:
            self.guard(opt)

    def guard(self, optimizer: torch.optim.Optimizer) -> None:
        """Make ``optimizer.step()`` and ``optimizer.state_dict()`` wait for the checksum (and raise
        when it failed)."""
        self._hooks.append(optimizer.register_step_pre_hook(self._before_step))
        self._hooks.append(optimizer.register_state_dict_pre_hook(self._before_state_dict))

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.wait()

    def _before_state_dict(self, optimizer: torch.optim.Optimizer) -> None:
        self.wait()

    def wait(self) -> None:
        """Wait for the checksum; raises UnverifiedStateError when it failed (every time it is asked)."""
        with self._lock:
            if not self._done:
                self._finish()
            if self._error is not None:
                raise self._error

    def passed(self) -> bool:
        """Wait for the checksum; whether it passed. A failure is logged (once), not raised."""
        try:
            self.wait()
        except UnverifiedStateError as exc:
            if not self._logged:
                self._logged = True
                log.error("weightslab: %s", exc)
            return False
        return True

    def release(self) -> None:
        """Remove the step hooks: the checksum passed, or the state it guarded was replaced."""
        hooks, self._hooks = self._hooks, []
        for handle in hooks:
            handle.remove()

    def _finish(self) -> None:
        e = self.entry
        try:
            self._checking.result()
        except (CheckpointCorruptedError, CheckpointFormatError, UnsafePathError) as exc:
            # the file itself is bad: journalled, so that every later resume verifies it first
            self._journal(
                "checkpoint_unreadable", exp_hash=self.exp_hash, step=e.step, error=str(exc), deferred=True
            )
            self._error = self._unverified(exc)
        except Exception as exc:  # a read error (a network blip): not the file's fault, still unverified
            self._error = self._unverified(exc)
        self._done = True

    def _unverified(self, exc: Exception) -> UnverifiedStateError:
        e = self.entry
        return UnverifiedStateError(
            f"{e.file} of experiment {self.exp_hash} (step {e.step}) failed its check after "
            f"resume() restored it ({type(exc).__name__}: {exc}). The registered "
            "objects hold its unverified state; no registered optimizer stepped it and nothing was saved "
            "from it. Call resume() again: a checkpoint that failed its checksum is verified before it "
            "is restored, so resume falls back to the newest one that verifies"
        )
