"""The append-only event journal ``logs/events.jsonl``: one JSON object per line.

It records experiment creation (with parent and reason), activations, saves, deletions, detected
changes, failures and resumes, so the lineage of a run can be replayed from it. A crash can leave a
torn last line; readers skip lines that do not parse.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("weightslab")

# Events that say which experiment is active.
ACTIVATING_EVENTS = frozenset({"experiment_created", "experiment_activated", "checkpoint_saved", "resumed"})


def _clean(value: Any) -> Any:
    """Make ``value`` strict-JSON: non-finite floats become None, unknown objects their repr."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return repr(value)


class Journal:
    """Appends events durably; safe to call from several threads."""

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = path
        self.durable = durable
        self._lock = threading.Lock()
        self.failures = 0

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"time": time.time(), "event": event, **_clean(fields)}
        line = (json.dumps(record, allow_nan=False, sort_keys=False) + "\n").encode()
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
                try:
                    _append_line(fd, line)
                    if self.durable:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                # The journal records; the manifests commit. A full or read-only disk must not turn a
                # committed checkpoint into a failed save, nor stop training: log the lost line.
                self.failures += 1
                log.error("weightslab: could not append %r to %s: %s", event, self.path, exc)
        return record


def _append_line(fd: int, line: bytes) -> None:
    """Append ``line`` whole or not at all.

    On a full disk ``os.write`` may write part of a line; a later event would then be glued to the
    half line and both lost to the readers. So: start on a fresh line when the file does not end
    with a newline (a torn write of an earlier process), write in a loop, and on failure cut the file
    back to where this line started.
    """
    start = os.fstat(fd).st_size
    if start and os.pread(fd, 1, start - 1) != b"\n":
        line = b"\n" + line
    written = 0
    try:
        while written < len(line):
            n = os.write(fd, line[written:])
            if n <= 0:
                raise OSError(errno.ENOSPC, "short write to the journal")
            written += n
    except OSError:
        if written:
            with contextlib.suppress(OSError):  # at worst a torn line stays, which readers skip
                os.ftruncate(fd, start)
        raise


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Every well-formed event in order; torn or foreign lines are skipped."""
    if not path.is_file():
        return
    with open(path, "rb") as f:
        for line in f:
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(record, dict) and isinstance(record.get("event"), str):
                yield record


def last_active_experiment(path: Path) -> str | None:
    """The hash of the experiment that was active last, from the journal."""
    active = None
    for record in read_events(path):
        if record["event"] in ACTIVATING_EVENTS and isinstance(record.get("exp_hash"), str):
            active = record["exp_hash"]
    return active
