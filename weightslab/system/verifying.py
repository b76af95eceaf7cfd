"""A resume's checksum finishing on a helper thread, and the gates that wait for it.

``resume(verify="background")`` restores a checkpoint and returns while the step file's xxh3-128 is
still being computed. The state it restored is then unverified until :class:`PendingCheck` says
otherwise, and nothing may change it or persist it before that: each registered optimizer's
``step()`` waits for the checksum first (a step pre-hook on that optimizer, removed once it
passed), and so do the system's saves, ``close()`` and the next ``resume()``. A checksum that fails
is journalled as ``checkpoint_unreadable`` and every gate then raises
:class:`~weightslab.errors.UnverifiedStateError`; a later ``resume()`` verifies that checkpoint
before restoring it, so a restarted process falls back instead of restoring it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import torch

from weightslab.errors import UnverifiedStateError
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

    ``journal`` records the failure (the manager's ``event``). Installs a step pre-hook on each of
    ``optimizers`` that waits for the checksum; the hooks go once it passed and stay while it failed,
    so that every ``step()`` on the unverified state raises.
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
        self._error: UnverifiedStateError | None = None
        self._hooks = [opt.register_step_pre_hook(self._before_step) for opt in optimizers]

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.wait()

    def wait(self) -> None:
        """Wait for the checksum; raises UnverifiedStateError when it failed (every time it is asked)."""
        with self._lock:
            if not self._done:
                self._finish()
            if self._error is not None:
                raise self._error

    def settle(self) -> bool:
        """Wait for the checksum and drop the hooks; whether it passed (a failure is logged, not raised)."""
        try:
            self.wait()
        except UnverifiedStateError as exc:
            log.error("weightslab: %s", exc)
            return False
        finally:
            self._release()
        return True

    def _finish(self) -> None:
        try:
            self._checking.result()
        except Exception as exc:  # any failure leaves the restored state unverified: fail closed
            e = self.entry
            self._journal(
                "checkpoint_unreadable", exp_hash=self.exp_hash, step=e.step, error=str(exc), deferred=True
            )
            self._error = UnverifiedStateError(
                f"{e.file} of experiment {self.exp_hash} (step {e.step}) failed its check after "
                f"resume(verify='background') restored it ({type(exc).__name__}: {exc}). The registered "
                "objects hold its unverified state, and no optimizer step and no checkpoint was taken "
                "from it; call resume() again: it verifies that checkpoint before restoring it and falls "
                "back to the newest one that verifies"
            )
        else:
            self._release()
        self._done = True

    def _release(self) -> None:
        hooks, self._hooks = self._hooks, []
        for handle in hooks:
            handle.remove()
