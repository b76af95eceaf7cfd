"""Long operations of the dashboard (verify, analysis) run on threads; pages poll their progress.

A :class:`Job` is what a page sees: its phase, how far it is, its result or its error message.
:class:`JobTracker` is the :class:`~weightslab.inspect.Tracker` the operations already report to, so
verify and the analysis show progress here exactly as they do on the command line.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from weightslab.errors import WeightslabError

log = logging.getLogger("weightslab")

State = Literal["running", "done", "failed"]
KEEP_FINISHED = 64  # finished jobs kept for pages that poll late


@dataclass
class Job:
    """One operation started from a page."""

    id: str
    kind: str
    key: str
    state: State = "running"
    phase: str = ""
    done: float = 0.0
    total: float | None = None
    result: Any = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "phase": self.phase,
            "done": self.done,
            "total": self.total,
            "error": self.error,
            "started": self.started,
            "finished": self.finished,
        }


class JobTracker:
    """A Tracker that writes the progress of an operation into its :class:`Job`."""

    def __init__(self, job: Job, lock: threading.Lock) -> None:
        self._job, self._lock = job, lock

    def start(self, description: str, total: float | None) -> None:
        with self._lock:
            self._job.phase, self._job.total, self._job.done = description, total, 0.0

    def advance(self, amount: float = 1) -> None:
        with self._lock:
            self._job.done += amount

    def set(self, done: float, total: float | None, description: str) -> None:
        """Both counts at once (for operations that report ``(done, total)``, not increments)."""
        with self._lock:
            self._job.phase, self._job.done, self._job.total = description, done, total


class Jobs:
    """The jobs of one dashboard: at most one running per ``key`` (a second start returns the first)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._running: dict[str, Job] = {}
        self._finished: dict[str, Job] = {}  # the last finished job of each key
        self._ids = itertools.count(1)

    def start(self, kind: str, key: str, run: Callable[[JobTracker], Any]) -> Job:
        """Run ``run(tracker)`` on a thread; its return value becomes the job's result.

        A WeightslabError or OSError becomes the job's error message; anything else is logged with
        its traceback and reported as an internal error (a page never shows a traceback).
        """
        with self._lock:
            running = self._running.get(key)
            if running is not None:
                return running
            job = Job(id=str(next(self._ids)), kind=kind, key=key)
            self._jobs[job.id] = job
            self._running[key] = job
            self._forget_old()
        tracker = JobTracker(job, self._lock)
        threading.Thread(
            target=self._run, args=(job, run, tracker), name=f"weightslab-ui-{kind}", daemon=True
        ).start()
        return job

    def _run(self, job: Job, run: Callable[[JobTracker], Any], tracker: JobTracker) -> None:
        result: Any = None
        error: str | None = None
        try:
            result = run(tracker)
        except (WeightslabError, OSError) as exc:
            error = str(exc)
        except Exception as exc:  # a page shows a message; the log keeps the traceback
            log.exception("weightslab ui: %s job failed", job.kind)
            error = f"internal error ({type(exc).__name__}: {exc}); the server log has the details"
        with self._lock:
            job.result, job.error = result, error
            job.state = "failed" if error is not None else "done"
            job.finished = time.time()
            self._running.pop(job.key, None)
            self._finished[job.key] = job

    def running(self, key: str) -> Job | None:
        """The job of ``key`` under way, if any."""
        with self._lock:
            return self._running.get(key)

    def last_finished(self, key: str) -> Job | None:
        """The last job of ``key`` that finished (done or failed), if any."""
        with self._lock:
            return self._finished.get(key)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def snapshot(self, job_id: str, *, result: bool = False) -> dict[str, Any] | None:
        """The job as a page sees it, with its ``result`` if asked (read under the lock: the job
        moves on another thread, and a finished job's state and result are set together)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            return {**job.to_dict(), "result": job.result} if result else job.to_dict()

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.state != "running"]
        for job in sorted(finished, key=lambda j: j.started)[: max(0, len(finished) - KEEP_FINISHED)]:
            if self._finished.get(job.key) is not job:
                del self._jobs[job.id]


__all__ = ["Job", "JobTracker", "Jobs"]
