"""The on_error policy: how save failures and a missing monitor are journalled, warned about or raised.

Failures are counted from two threads (the training thread and the background writer), so the
counter has its own lock; it is a leaf lock, never held while anything else is acquired.
"""

from __future__ import annotations

import difflib
import logging
import threading
import warnings
from collections.abc import Iterable, Mapping

from weightslab.errors import CheckpointSaveError, ConfigError
from weightslab.store.manager import CheckpointManager
from weightslab.system.config import OnError

log = logging.getLogger("weightslab")


class ErrorPolicy:
    """Records failures in the log and journal, and reports them as warnings or errors per ``on_error``."""

    def __init__(self, manager: CheckpointManager, on_error: OnError) -> None:
        self.manager = manager
        self.on_error = on_error
        self._count_lock = threading.Lock()
        self._failures = 0

    @property
    def failures(self) -> int:
        """Failed saves (and experiment openings, rewinds) since the system opened."""
        with self._count_lock:
            return self._failures

    def failed(self, exc: BaseException, exp_hash: str, step: int, what: str = "saving") -> None:
        """Count, log and journal one failure; safe from any thread."""
        with self._count_lock:
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

    def report(self, errors: Iterable[BaseException], stacklevel: int = 3) -> None:
        """Warn about each failure, or raise CheckpointSaveError for the first with on_error="raise"."""
        for exc in errors:
            message = f"weightslab: a checkpoint save failed: {type(exc).__name__}: {exc}"
            if self.on_error == "raise":
                raise CheckpointSaveError(message) from exc
            warnings.warn(
                message + " (training continues; on_error='raise' makes this an error)", stacklevel=stacklevel
            )

    def monitor_missing(self, monitor: str, metrics: Mapping[str, float | None]) -> None:
        """Journal, then warn (or raise ConfigError) that a save lacks the monitored metric."""
        got = ", ".join(repr(k) for k in metrics) or "no metrics"
        close = difflib.get_close_matches(monitor, list(metrics), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        message = (
            f"weightslab: monitor={monitor!r} is not among the metrics of this save (got {got}){hint} "
            f"keep_best and resume('best') use it; until it is reported, retention deletes nothing "
            f"by keep_best. Pass metrics={{{monitor!r}: value}} to checkpoint_on_step, or fix monitor="
        )
        self.manager.event("monitor_missing", monitor=monitor, got=list(metrics), suggestion=close[:1])
        if self.on_error == "raise":
            raise ConfigError(message)
        warnings.warn(message, stacklevel=5)  # points at the caller of checkpoint_on_step
