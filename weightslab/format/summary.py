"""The summary of one experiment (``checkpoints/{hash}/summary.json``): what ``weightslab ls`` shows.

A manifest of 10,000 checkpoints is megabytes of JSON; listing a root must not parse it. So the
writer keeps, beside each manifest, a small record of what a listing needs: the header, how many
checkpoints (and how many abandoned), the newest live step, the best value of the monitor its
retention records, and the bytes of its step files. The record is a cache, never the truth:

- it is written after every manifest commit, atomically but without fsync (a crash may lose it);
- it names the manifest state it describes by a **stamp** of the base and of the commit log
  (:func:`weightslab.storage.stamps.file_stamp`: device, inode, size, modification and change
  times). A commit replaces the base (a new inode) or grows the log, and a compaction starts a new
  log, so a summary whose stamp differs from the files describes another state, and a reader reads
  the manifest itself. A summary that is missing, unreadable or of another format is treated the same.

The writer updates its tally in place from each commit's change (the entries put and removed); the
newest and the best entries are kept in heaps, so a commit costs O(log n) whatever it removes, and
only a change of the monitor counts the entries again.

No I/O here, and nothing beyond the standard library: the listing imports this module before
anything else of weightslab is loaded.
"""

from __future__ import annotations

import heapq
import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from weightslab.format.manifest import Manifest
    from weightslab.format.manifest_entries import CheckpointEntry

SUMMARY_NAME = "summary.json"
SUMMARY_FORMAT = "weightslab.summary/1"
STEP_FILE = re.compile(r"^model/(?P<hash>[0-9a-f]{16})_step_\d{6,}\.pt$", re.ASCII)
"""A step file of an experiment, as its entry names it (``model/{hash}_step_{step:06d}.pt``)."""


class Tally:
    """The counts of one manifest that a listing shows, kept up to date commit by commit.

    The newest live entry (highest ``seq``; on a tie the lowest step, as :meth:`Manifest.latest`
    picks it) and the best by the monitor (ties: the later step, as retention ranks) are the tops of
    two heaps whose items are checked against the entries present when read: a removed or replaced
    entry's items are dropped as they surface, and the heaps are rebuilt when stale items outnumber
    the live ones.
    """

    __slots__ = (
        "_best",
        "_entries",
        "_latest",
        "_sign",
        "abandoned",
        "checkpoints",
        "exp_hash",
        "mode",
        "monitor",
        "step_bytes",
        "step_files",
        "unusual",
    )

    def __init__(self, exp_hash: str, monitor: str | None, mode: str) -> None:
        self.exp_hash = exp_hash
        self.monitor = monitor
        self.mode = mode
        self._sign = 1.0 if mode == "min" else -1.0
        self.checkpoints = 0
        self.abandoned = 0
        self.step_files = 0  # entries whose file is a whole step file of this experiment in model/
        self.step_bytes = 0  # their recorded bytes
        self.unusual = 0  # entries a listing cannot size from the record (pending, named otherwise)
        # step -> (seq, live, value by the monitor or None): what the heaps' items are checked against
        self._entries: dict[int, tuple[int, bool, float | None]] = {}
        self._latest: list[tuple[int, int]] = []  # (-seq, step) of live entries
        self._best: list[tuple[float, int, float]] = []  # (sign * value, -step, value)

    def add(self, e: CheckpointEntry) -> None:
        """Count ``e`` (a step not counted yet)."""
        self.checkpoints += 1
        self.abandoned += e.abandoned
        kind = file_kind(e, self.exp_hash)
        if kind == "step":
            self.step_files += 1
            self.step_bytes += e.bytes
        elif kind == "unusual":
            self.unusual += 1
        raw = e.metric(self.monitor) if self.monitor else None
        value = None if raw is None else float(raw)  # an int or bool metric reads back as a float
        live = not e.abandoned
        self._entries[e.step] = (e.seq, live, value)
        if live:
            heapq.heappush(self._latest, (-e.seq, e.step))
        if value is not None:
            heapq.heappush(self._best, (self._sign * value, -e.step, value))
        if len(self._latest) + len(self._best) > 4 * len(self._entries) + 64:
            self._rebuild()

    def remove(self, e: CheckpointEntry) -> None:
        """Uncount ``e`` (as it was counted)."""
        self.checkpoints -= 1
        self.abandoned -= e.abandoned
        kind = file_kind(e, self.exp_hash)
        if kind == "step":
            self.step_files -= 1
            self.step_bytes -= e.bytes
        elif kind == "unusual":
            self.unusual -= 1
        self._entries.pop(e.step, None)

    @property
    def latest(self) -> tuple[int, int] | None:
        """(seq, step) of the newest live entry, or None."""
        heap = self._latest
        while heap:
            neg_seq, step = heap[0]
            known = self._entries.get(step)
            if known is not None and known[1] and known[0] == -neg_seq:
                return -neg_seq, step
            heapq.heappop(heap)
        return None

    @property
    def best(self) -> tuple[float, int] | None:
        """(value, step) of the best entry by the monitor, or None."""
        heap = self._best
        while heap:
            _, neg_step, value = heap[0]
            known = self._entries.get(-neg_step)
            if known is not None and known[2] == value:
                return value, -neg_step
            heapq.heappop(heap)
        return None

    def _rebuild(self) -> None:
        self._latest = [(-seq, step) for step, (seq, live, _) in self._entries.items() if live]
        self._best = [
            (self._sign * v, -step, v) for step, (_, _, v) in self._entries.items() if v is not None
        ]
        heapq.heapify(self._latest)
        heapq.heapify(self._best)


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


def retention_monitor(retention: Mapping[str, Any]) -> tuple[str | None, str]:
    """The monitor and mode a listing ranks "best" by: what the ``retention`` record names."""
    return retention.get("monitor") or None, "max" if retention.get("mode") == "max" else "min"


def tally(m: Manifest) -> Tally:
    """Count every entry of ``m``."""
    out = Tally(m.exp_hash, *retention_monitor(m.retention))
    for e in m.checkpoints:
        out.add(e)
    return out


def advance(t: Tally, m: Manifest) -> Tally:
    """The tally of ``m``, from ``t``, the tally of the manifest ``m`` was derived from: ``t`` itself,
    changed in place by the entries ``m`` put and removed (the caller drops ``t`` first, so that a
    commit that fails leaves no tally of a manifest that was not written). A change of the monitor
    or the experiment counts ``m`` again."""
    change = m.change()
    if change is None or retention_monitor(m.retention) != (t.monitor, t.mode) or m.exp_hash != t.exp_hash:
        return tally(m)
    origin = change.origin
    for step in change.deletes:
        old = origin.entry(step)
        if old is not None:
            t.remove(old)
    for e in change.puts.values():
        old = origin.entry(e.step)
        if old is not None:
            t.remove(old)
        t.add(e)
    return t


# -- the record -------------------------------------------------------------------------------------
def log_name(generation: int) -> str:
    """The name of commit log ``generation`` (as :mod:`weightslab.format.layout` names it)."""
    return f"manifest.{generation:06d}.jsonl"


def encode(m: Manifest, t: Tally, generation: int | None, files_stamp: list[Any]) -> bytes:
    """The summary file of ``m`` (whose tally is ``t``), describing the files stamped ``files_stamp``
    (``[stamp of manifest.json, stamp of the log or None]``)."""
    best = t.best
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
        "latest_step": None if (latest := t.latest) is None else latest[1],
        "best": None
        if not t.monitor or best is None
        else {"monitor": t.monitor, "mode": t.mode, "value": best[0], "step": best[1]},
        "step_files": t.step_files,
        "step_bytes": t.step_bytes,
        "unusual": t.unusual,
    }
    return json.dumps(record, allow_nan=False, separators=(",", ":")).encode()


def current(
    data: bytes, exp_hash: str, stamps_now: Callable[[tuple[str, str | None]], list[Any] | None]
) -> dict[str, Any] | None:
    """The summary record in ``data`` if it is one of ``exp_hash`` in this format and describes the
    manifest files as they are now (``stamps_now(names)`` stamps the named files), else None."""
    try:
        record = json.loads(data)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("format") != SUMMARY_FORMAT:
        return None
    generation = record.get("log_generation")
    if record.get("exp_hash") != exp_hash or not (generation is None or type(generation) is int):
        return None
    names = ("manifest.json", None if generation is None else log_name(generation))
    return record if record.get("stamp") == stamps_now(names) else None


__all__ = [
    "SUMMARY_FORMAT",
    "SUMMARY_NAME",
    "Tally",
    "advance",
    "current",
    "encode",
    "file_kind",
    "log_name",
    "retention_monitor",
    "tally",
]
