"""The background writer: at most one save in flight, failures kept for the next call.

The training thread hands over a job (serialise, checksum, commit) and returns at once. The next
job waits for the previous one, so snapshot buffers are never overwritten while being written.
A failure is stored and returned by :meth:`take_error` on the next call and at :meth:`close`;
nothing fails silently. Pending work is flushed at ``close()`` and at interpreter exit (the worker
thread is a ``concurrent.futures`` thread, which Python joins before it exits).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class BackgroundWriter:
    """Runs one job at a time on a single worker thread."""

    def __init__(self, name: str = "weightslab-writer") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._inflight: Future[None] | None = None
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._closed = False
        self.has_errors = False
        """Whether failures wait for :meth:`take_errors`: a plain attribute, read lock-free on every step."""

    def submit(self, job: Callable[[], None]) -> None:
        """Wait for the job in flight, then start ``job`` in the background."""
        self.wait()
        if self._closed:
            raise RuntimeError("the background writer is closed")
        try:
            self._inflight = self._executor.submit(self._run, job)
        except RuntimeError:
            # The interpreter is exiting: concurrent.futures refuses new work once its own exit hook
            # has run, which is before ours. The last saves then run inline (nothing else is running).
            self._run(job)

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:
            with self._lock:
                self._errors.append(exc)
                self.has_errors = True

    def wait(self) -> None:
        """Block until the job in flight, if any, has finished."""
        inflight = self._inflight
        if inflight is not None:
            inflight.result()
            self._inflight = None

    def take_errors(self) -> list[BaseException]:
        """Failures since the last call (oldest first); they are reported once."""
        with self._lock:
            errors, self._errors = self._errors, []
            self.has_errors = False
        return errors

    def close(self) -> None:
        self.wait()
        self._closed = True
        self._executor.shutdown(wait=True)
