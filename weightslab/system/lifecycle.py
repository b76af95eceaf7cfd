"""Closing the system: the last saves, releasing the root, and the exit after a preemption signal.

``close()`` saves announced changes still pending and (with ``save_last``) the last step seen, then
releases the signal handlers, the ledger listener, the torch hooks, the writer thread and the root's
lock. The signal path checkpoints at the step boundary after SIGTERM/SIGINT and exits with
128 + the signal number.
"""

from __future__ import annotations

import atexit
import logging
import signal
from collections.abc import Mapping
from typing import Any, TypeVar

from weightslab.errors import CheckpointSaveError
from weightslab.system.parts import SystemParts
from weightslab.system.validation import clean_metrics

log = logging.getLogger("weightslab")

_S = TypeVar("_S", bound="Lifecycle")


class Lifecycle(SystemParts):
    """``close``, the context manager, the interpreter-exit hook and the preemption exit."""

    def close(self) -> None:
        """Flush pending saves, release the root's lock, the torch hooks and the singleton slot. Idempotent."""
        with self._lock:
            if self._closed:
                return
            final_error: CheckpointSaveError | None = None
            verified = self._settle_verification()  # a failed check was logged: nothing is saved from it
            self._drop_check(self._verifying)
            try:
                if verified:
                    self._save_at_close()
            except CheckpointSaveError as exc:  # on_error="raise": still release the root, then raise
                final_error = exc
            self._closed = True
            self._signals.restore()
            self._unlisten()
            self.ledger.stop_watchers()
            self._detector.close()
            errors: list[BaseException] = []
            if self._writer is not None:
                self._writer.close()
                errors = self._writer.take_errors()
            self._buffers.close()
            self.manager.event("system_closed", exp_hash=self.exp_hash, last_step=self._last_step)
            self.manager.close()
            for release in self._on_close:
                release(self)
            atexit.unregister(self._close_at_exit)
            if final_error is not None:
                raise final_error
            self._errors.report(errors)

    def _save_at_close(self) -> None:
        """Save pending announcements, then the last step seen if it is newer than the newest checkpoint."""
        step = self._last_step
        if step is None or self._exp.identity is None:
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
        exp_hash = self._exp.identity.exp_hash
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

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _preempt(self, step: int, metrics: Mapping[str, Any] | None) -> None:
        """The step boundary after SIGTERM/SIGINT: checkpoint, flush, close, exit 128 + signal."""
        signum = self._signals.signal
        assert signum is not None
        name = signal.Signals(signum).name
        if not self._settle_verification():  # a failed background checksum: nothing is saved from it
            self.manager.event("preempted", signal=name, step=step, exp_hash=self.exp_hash)
            self.close()
            raise SystemExit(128 + signum)
        clean = clean_metrics(metrics)
        if self._exp.identity is None:
            self._begin(step)
        if self._pending:  # announced changes are saved first, at this step, with their trigger
            pending, self._pending = self._pending, []
            self._save_announced(step, pending, clean)
        else:
            self._record_changes(step, clean, announced=None)
        assert self._exp.identity is not None
        if (self._exp.identity.exp_hash, step) not in self._submitted:
            self._save(step, "preempted", clean)
        if self._writer is not None:
            self._writer.wait()
        self.manager.event("preempted", signal=name, step=step, exp_hash=self._exp.identity.exp_hash)
        log.warning("weightslab: %s received; checkpointed step %d and exiting", name, step)
        self._last_step = step
        self.close()
        raise SystemExit(128 + signum)
