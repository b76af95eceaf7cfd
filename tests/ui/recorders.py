"""Small recorders the dashboard's tests hand to the code under test."""

from __future__ import annotations

import threading


class Calls:
    """A progress callback that records its ``(done, total)`` calls (from any thread)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            self.calls.append((done, total))
