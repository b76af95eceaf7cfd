"""The append-only event journal ``logs/events.jsonl``: one JSON object per line.

It records experiment creation (with parent and reason), activations, saves, deletions, detected
changes, failures and resumes, so the lineage of a run can be replayed from it. A crash can leave a
torn last line; readers skip lines that do not parse. The bytes go through a
:class:`~weightslab.storage.base.Storage` (its ``append_line`` writes a line whole or not at all).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from weightslab.format.activations import newest_activation
from weightslab.storage.base import Storage
from weightslab.storage.local import LocalStorage
from weightslab.util.jsonsafe import to_jsonable

log = logging.getLogger("weightslab")

# Events that say which experiment is active.


class Journal:
    """Appends events durably; safe to call from several threads.

    ``storage`` defaults to a :class:`LocalStorage` (durable as ``durable`` says); the manager passes
    its own, and re-points :attr:`storage` when its storage is swapped.
    """

    def __init__(self, path: Path, *, durable: bool = True, storage: Storage | None = None) -> None:
        self.path = path
        self.storage: Storage = storage if storage is not None else LocalStorage(durable=durable)
        self._lock = threading.Lock()
        self.failures = 0

    @property
    def durable(self) -> bool:
        """Whether each line is fsynced before :meth:`append` returns."""
        return self.storage.durable

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one event (``time`` and ``event`` first); a failed append is logged, never raised.

        ``fields`` are made strict JSON: non-finite floats become None, unknown objects their repr.
        """
        record = {"time": time.time(), "event": event, **to_jsonable(fields, fallback=repr)}
        line = (json.dumps(record, allow_nan=False, sort_keys=False) + "\n").encode()
        with self._lock:
            try:
                self.storage.append_line(self.path, line)
            except OSError as exc:
                # The journal records; the manifests commit. A full or read-only disk must not turn a
                # committed checkpoint into a failed save, nor stop training: log the lost line.
                self.failures += 1
                log.error("weightslab: could not append %r to %s: %s", event, self.path, exc)
        return record


def _journal_bytes(path: Path, storage: Storage | None) -> bytes:
    """The journal's bytes (empty when there is none yet), through ``storage`` or the local disk."""
    storage = storage if storage is not None else LocalStorage(durable=False)
    if not storage.is_file(path):
        return b""
    try:
        return storage.read_bytes(path)
    except FileNotFoundError:
        return b""


def _event(line: bytes) -> dict[str, Any] | None:
    """The event of one journal line; None for a torn or foreign line."""
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("event"), str) else None


def read_events(path: Path, storage: Storage | None = None) -> Iterator[dict[str, Any]]:
    """Every well-formed event in order; torn or foreign lines are skipped."""
    for line in _journal_bytes(path, storage).split(b"\n"):  # only \n ends a line, as written
        record = _event(line)
        if record is not None:
            yield record


def last_active_experiment(path: Path, storage: Storage | None = None) -> str | None:
    """The hash of the experiment that was active last, from the journal.

    Read from the end: the journal grows with every commit, and ``weightslab ls`` asks on each run.
    """
    return newest_activation(_journal_bytes(path, storage))


def unreadable_checkpoints(path: Path, storage: Storage | None = None) -> set[tuple[str, int]]:
    """(experiment, step) of every checkpoint the journal records as ``checkpoint_unreadable``.

    Most journals hold none: the bytes are searched for the event's name before any line is parsed.
    """
    data = _journal_bytes(path, storage)
    marker = b'"checkpoint_unreadable"'
    found: set[tuple[str, int]] = set()
    at = data.find(marker)
    while at >= 0:
        start = data.rfind(b"\n", 0, at) + 1
        end = data.find(b"\n", at)
        end = len(data) if end < 0 else end
        record = _event(data[start:end])
        if (
            record is not None
            and record["event"] == "checkpoint_unreadable"
            and isinstance(record.get("exp_hash"), str)
            and isinstance(record.get("step"), int)
        ):
            found.add((record["exp_hash"], record["step"]))
        at = data.find(marker, end)
    return found
