"""The summary of one experiment (``checkpoints/{hash}/summary.json``): what ``weightslab ls`` shows.

A manifest of 10,000 checkpoints is megabytes of JSON; listing a root must not parse it. So the
writer keeps, beside each manifest, a small record of what a listing needs: the header, how many
checkpoints (and how many abandoned), the newest live step, the best value of the monitor its
retention records, and the bytes of its step files. The record is a cache, never the truth:

- it is written after every manifest commit, atomically but without fsync (a crash may lose it);
- it names the manifest state it describes by a **stamp**: the base's inode, size and modification
  time, and the commit log's generation and size. A commit replaces the base (a new inode: the new
  file exists while the old one does) or grows the log, and a compaction starts a new log, so a
  summary whose stamp differs from the files describes another state, and a reader reads the
  manifest itself. A summary that is missing, unreadable or of another format is treated the same.

The writer updates its tally from each commit's change (the entries put and removed), so a commit's
cost does not grow with the number of checkpoints; only removing the newest or the best entry, or
changing the monitor, counts the entries again.

This module imports nothing beyond the standard library's ``json``, ``os`` and ``re``: the listing reads it
before anything else of weightslab is loaded.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from weightslab.format.manifest import Manifest
    from weightslab.format.manifest_entries import CheckpointEntry

SUMMARY_NAME = "summary.json"
SUMMARY_FORMAT = "weightslab.summary/1"


STEP_FILE = re.compile(r"^model/(?P<hash>[0-9a-f]{16})_step_\d{6,}\.pt$", re.ASCII)
"""A step file of an experiment, as its entry names it (``model/{hash}_step_{step:06d}.pt``)."""


class Tally:
    """The counts of one manifest that a listing shows, kept up to date commit by commit."""

    __slots__ = (
        "abandoned",
        "best",
        "checkpoints",
        "latest",
        "mode",
        "monitor",
        "step_bytes",
        "step_files",
        "unusual",
    )

    def __init__(self, monitor: str | None, mode: str) -> None:
        self.monitor = monitor
        self.mode = mode
        self.checkpoints = 0
        self.abandoned = 0
        self.step_files = 0  # entries whose file is a whole step file of this experiment in model/
        self.step_bytes = 0  # their recorded bytes
        self.unusual = 0  # entries a listing cannot size from the record (pending, named otherwise)
        self.latest: tuple[int, int] | None = None  # (seq, step) of the newest live entry
        self.best: tuple[float, int] | None = None  # (value, step) by the monitor

    def copy(self) -> Tally:
        out = Tally(self.monitor, self.mode)
        for name in self.__slots__:
            setattr(out, name, getattr(self, name))
        return out

    def ranks_first(self, value: float, step: int, than: tuple[float, int] | None) -> bool:
        """Whether (value, step) ranks before ``than`` by the monitor (ties: the later step wins)."""
        if than is None:
            return True
        sign = 1.0 if self.mode == "min" else -1.0
        return (sign * value, -step) <= (sign * than[0], -than[1])

    def add(self, e: CheckpointEntry, exp_hash: str) -> None:
        self.checkpoints += 1
        self.abandoned += e.abandoned
        kind = file_kind(e, exp_hash)
        if kind == "step":
            self.step_files += 1
            self.step_bytes += e.bytes
        elif kind == "unusual":
            self.unusual += 1
        # the newest: the highest seq; on a tie the lowest step, as Manifest.latest() (max) picks it
        if not e.abandoned and (self.latest is None or (-e.seq, e.step) < (-self.latest[0], self.latest[1])):
            self.latest = (e.seq, e.step)
        if self.monitor:
            value = e.metric(self.monitor)
            if value is not None and self.ranks_first(value, e.step, self.best):
                self.best = (value, e.step)

    def remove(self, e: CheckpointEntry, exp_hash: str) -> tuple[bool, bool]:
        """Take ``e`` out; returns whether it was the newest live entry, and whether it was the best
        (both are then unknown: cleared)."""
        self.checkpoints -= 1
        self.abandoned -= e.abandoned
        kind = file_kind(e, exp_hash)
        if kind == "step":
            self.step_files -= 1
            self.step_bytes -= e.bytes
        elif kind == "unusual":
            self.unusual -= 1
        newest = self.latest is not None and self.latest == (e.seq, e.step) and not e.abandoned
        best = self.best is not None and self.best[1] == e.step
        if newest:
            self.latest = None
        if best:
            self.best = None
        return newest, best


def file_kind(e: CheckpointEntry, exp_hash: str) -> str:
    """How a listing sizes ``e``'s file: "step" (the bytes its entry records: a whole step file of
    this experiment), "sharded" (its folder, measured), or "unusual" (a replacement under way, or a
    file named otherwise: the listing reads the manifest instead)."""
    if e.pending is not None:
        return "unusual"
    if e.shards:
        return "sharded"
    m = STEP_FILE.match(e.file)
    return "step" if m is not None and m["hash"] == exp_hash else "unusual"


def retention_monitor(m: Manifest) -> tuple[str | None, str]:
    """The monitor and mode a listing ranks "best" by: what the retention records."""
    monitor = m.retention.get("monitor") or None
    return monitor, "max" if m.retention.get("mode") == "max" else "min"


def tally(m: Manifest) -> Tally:
    """Count every entry of ``m``."""
    out = Tally(*retention_monitor(m))
    for e in m.checkpoints:
        out.add(e, m.exp_hash)
    return out


def advance(t: Tally, m: Manifest) -> Tally:
    """The tally of ``m`` from ``t``, the tally of the manifest ``m`` was derived from.

    Applies the entries ``m`` put and removed. Counts ``m`` again when the monitor changed, or when
    the change took out the newest or the best entry and did not put back one that takes its place
    (the same commit, still live; the same step, at least as good).
    """
    change = m.change()
    if change is None or retention_monitor(m) != (t.monitor, t.mode):
        return tally(m)
    out = t.copy()
    origin, exp_hash = change.origin, m.exp_hash
    for step in change.deletes:
        old = origin.entry(step)
        if old is not None and any(out.remove(old, exp_hash)):
            return tally(m)
    for e in change.puts.values():
        old = origin.entry(e.step)
        if old is None:
            out.add(e, exp_hash)
            continue
        newest, best = out.remove(old, exp_hash)
        if newest and (e.abandoned or e.seq < old.seq):
            return tally(m)
        out.add(e, exp_hash)
        if best:
            # the best was old; e (same step) is the best now only if it scores at least as well
            lost = old.metric(out.monitor) if out.monitor else None
            value = e.metric(out.monitor) if out.monitor else None
            if lost is None or value is None or not out.ranks_first(value, e.step, (lost, old.step)):
                return tally(m)
    return out


# -- the file ---------------------------------------------------------------------------------------
def stamp(base: str, log: str | None) -> list[Any] | None:
    """The stamp of the manifest files as they are: [inode, size, mtime_ns] of the base, then
    [generation-named log's size] (or None without a log); None when the base is not there."""
    try:
        st = os.stat(base)
    except OSError:
        return None
    out: list[Any] = [st.st_ino, st.st_size, st.st_mtime_ns, None]
    if log is not None:
        try:
            out[3] = os.stat(log).st_size
        except OSError:
            return None
    return out


def encode(m: Manifest, t: Tally, generation: int | None, files_stamp: list[Any]) -> bytes:
    """The summary file of ``m`` (whose tally is ``t``), describing the files stamped ``files_stamp``."""
    best = None
    if t.monitor and t.best is not None:
        best = {"monitor": t.monitor, "mode": t.mode, "value": t.best[0], "step": t.best[1]}
    record = {
        "format": SUMMARY_FORMAT,
        "exp_hash": m.exp_hash,
        "stamp": files_stamp,
        "log_generation": generation,
        "parent": None if m.parent is None else m.parent.to_dict(),
        "created": m.created,
        "architecture_hash": m.architecture_hash,
        "hyperparams_hash": m.hyperparams_hash,
        "retention": dict(m.retention),
        "checkpoints": t.checkpoints,
        "abandoned": t.abandoned,
        "latest_step": None if t.latest is None else t.latest[1],
        "best": best,
        "step_files": t.step_files,
        "step_bytes": t.step_bytes,
        "unusual": t.unusual,
    }
    return json.dumps(record, allow_nan=False, separators=(",", ":")).encode()


def log_name(generation: int) -> str:
    """The name of commit log ``generation`` (as :mod:`weightslab.format.layout` names it)."""
    return f"manifest.{generation:06d}.jsonl"


def read_current(exp_dir: str, exp_hash: str) -> dict[str, Any] | None:
    """The summary of the experiment in ``exp_dir`` if it describes its manifest as it is now, else None."""
    try:
        with open(os.path.join(exp_dir, SUMMARY_NAME), "rb") as f:
            record = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != SUMMARY_FORMAT:
        return None
    if record.get("exp_hash") != exp_hash:
        return None
    generation = record.get("log_generation")
    if generation is not None and not isinstance(generation, int):
        return None
    log = None if generation is None else os.path.join(exp_dir, log_name(generation))
    now = stamp(os.path.join(exp_dir, "manifest.json"), log)
    if now is None or record.get("stamp") != now:
        return None
    return record


__all__ = [
    "SUMMARY_FORMAT",
    "SUMMARY_NAME",
    "Tally",
    "advance",
    "encode",
    "log_name",
    "file_kind",
    "read_current",
    "retention_monitor",
    "stamp",
    "tally",
]
