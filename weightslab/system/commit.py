"""What runs on the writer thread (or inline with async_save=False): write one step, then retention.

The only state shared with the training thread is the resumed-from checkpoint (protected from
retention until the run has committed past it) and the failure count; both live behind their own
small locks (:class:`ResumeProtection`, :class:`~weightslab.system.errors_policy.ErrorPolicy`), so the
writer never needs the system lock, which the training thread holds while it waits for the writer.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from weightslab.errors import RetentionRefusedError
from weightslab.policy.retention import RetentionPolicy
from weightslab.store.manager import CheckpointManager
from weightslab.system.errors_policy import ErrorPolicy

log = logging.getLogger("weightslab")


class ResumeProtection:
    """The checkpoint a run resumed from: retention keeps it until a later step of it commits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checkpoint: tuple[str, int] | None = None

    def protect(self, exp_hash: str, step: int) -> None:
        """Protect ``step`` of ``exp_hash`` (called by resume)."""
        with self._lock:
            self._checkpoint = (exp_hash, step)

    def protected(self, exp_hash: str) -> set[int]:
        """The protected step of ``exp_hash``, if any."""
        with self._lock:
            cp = self._checkpoint
        return {cp[1]} if cp is not None and cp[0] == exp_hash else set()

    def committed(self, exp_hash: str, step: int) -> set[int]:
        """Record that ``step`` committed (a later step ends the protection); return what is protected."""
        with self._lock:
            cp = self._checkpoint
            if cp is not None and cp[0] == exp_hash and step > cp[1]:
                self._checkpoint = cp = None
        return {cp[1]} if cp is not None and cp[0] == exp_hash else set()


@dataclass(frozen=True)
class CommitJob:
    """One snapshot to write: everything the writer thread needs, taken on the training thread."""

    exp_hash: str
    step: int
    payload: dict[str, Any]
    trigger: str
    metrics: dict[str, float | None]
    event: Any  # a CUDA event to wait on before the bytes are read, or None
    notes: tuple[tuple[str, ...], str] = ((), "")


@dataclass(frozen=True)
class Committer:
    """Writes jobs through the manager and applies retention after each commit."""

    manager: CheckpointManager
    retention: RetentionPolicy
    protection: ResumeProtection
    errors: ErrorPolicy

    def __call__(self, job: CommitJob) -> None:
        """Save ``job`` and apply retention; a failure is recorded, then re-raised for the writer to keep."""
        try:
            if job.event is not None:
                job.event.synchronize()
            t0 = time.perf_counter()
            entry = self.manager.save(
                job.exp_hash,
                job.step,
                job.payload,
                trigger=job.trigger,
                metrics=job.metrics,
                tags=job.notes[0],
                description=job.notes[1],
            )
            log.info(
                "weightslab: saved %s step %d (%s, %.1f MB, %.2fs)",
                job.exp_hash,
                job.step,
                job.trigger,
                entry.bytes / 1e6,
                time.perf_counter() - t0,
            )
            self.retain_after(job.exp_hash, job.step)
        except Exception as exc:
            self.errors.failed(exc, job.exp_hash, job.step)
            raise

    def retain_after(self, exp_hash: str, step: int) -> None:
        """Apply retention after ``step`` of ``exp_hash`` committed."""
        self._retain(exp_hash, self.protection.committed(exp_hash, step))

    def retain(self, exp_hash: str) -> None:
        """Apply retention now (metrics merged into an entry may have changed which ones are best)."""
        self._retain(exp_hash, self.protection.protected(exp_hash))

    def _retain(self, exp_hash: str, protected: set[int]) -> None:
        try:
            deleted = self.manager.apply_retention(exp_hash, self.retention, protected)
        except RetentionRefusedError as exc:  # the save committed; only unsafe entries were kept
            log.error("weightslab: %s", exc)
            self.manager.event("retention_refused", exp_hash=exp_hash, steps=sorted(exc.refused))
            deleted = exc.deleted
        if deleted:
            log.info("weightslab: retention removed %s steps %s", exp_hash, deleted)
