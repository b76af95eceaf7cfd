"""Which checkpoints to keep: small keep-policies combined as a union. No I/O here.

Each of :class:`KeepLast`, :class:`KeepBest` and :class:`KeepEvery` says, for the records of one
experiment in commit order, which steps it keeps and why. :class:`RetentionPolicy` is the public
combination the store, the CLI and the automatic system use: a step is kept if any part keeps it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

KeepReason = Literal["last", "best", "every", "newest", "protected", "awaiting_monitor"]
Kept = dict[int, list[KeepReason]]


class Recorded(Protocol):
    """What retention needs of a checkpoint: a manifest's ``CheckpointEntry`` is one.

    ``seq`` is the commit order and ``abandoned`` marks a checkpoint the run went back from; records
    with equal ``seq`` are ordered by step.
    """

    @property
    def step(self) -> int: ...

    @property
    def seq(self) -> int: ...

    @property
    def abandoned(self) -> bool: ...

    def metric(self, name: str) -> float | None: ...


@dataclass(frozen=True)
class CheckpointRecord:
    """The test and planning record: a checkpoint known only by its step and metrics.

    Production code passes manifest entries; this stands in for them where there is no manifest
    (tests, and planning what a policy would delete).
    """

    step: int
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    seq: int = 0
    abandoned: bool = False

    def metric(self, name: str) -> float | None:
        """The metric as a finite float, or None when missing or not a finite number."""
        value = self.metrics.get(name)
        if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)


class KeepPolicy(Protocol):
    """One keep-rule: the steps of ``ordered`` (commit order, oldest first) it keeps, with why."""

    def keep(self, ordered: Sequence[Recorded]) -> Kept: ...


@dataclass(frozen=True)
class KeepAll:
    """Keeps every checkpoint (what a retention with no rule set does)."""

    def keep(self, ordered: Sequence[Recorded]) -> Kept:
        """Every step, as "last"."""
        return {r.step: ["last"] for r in ordered}


@dataclass(frozen=True)
class KeepLast:
    """Keeps the ``n`` newest checkpoints by commit order."""

    n: int

    def keep(self, ordered: Sequence[Recorded]) -> Kept:
        """The last ``n`` steps of ``ordered`` (``n=0`` slices as ``[-0:]``: all, as it always has)."""
        return {r.step: ["last"] for r in ordered[-self.n :]}


@dataclass(frozen=True)
class KeepBest:
    """Keeps the ``k`` best checkpoints by ``monitor``; everything while no record reports it."""

    k: int
    monitor: str | None
    mode: Literal["min", "max"] = "min"

    def ranked(self, records: Sequence[Recorded], k: int | None = None) -> list[int]:
        """Steps of the best ``k`` records by ``monitor`` (ties: the later step wins), best first."""
        if not self.monitor:
            return []
        scored = [(r.metric(self.monitor), r.step) for r in records]
        valid = [(v, s) for v, s in scored if v is not None]
        sign = 1.0 if self.mode == "min" else -1.0
        valid.sort(key=lambda vs: (sign * vs[0], -vs[1]))
        return [s for _, s in valid[: self.k if k is None else k]]

    def keep(self, ordered: Sequence[Recorded]) -> Kept:
        """The best ``k``; all steps as "awaiting_monitor" until the monitor appears (a typo deletes nothing)."""
        best = self.ranked(ordered)
        if self.k and self.monitor and not best:
            return {r.step: ["awaiting_monitor"] for r in ordered}
        return {s: ["best"] for s in best}


@dataclass(frozen=True)
class KeepEvery:
    """Keeps every checkpoint whose step is a multiple of ``n``."""

    n: int

    def keep(self, ordered: Sequence[Recorded]) -> Kept:
        """Steps divisible by ``n``."""
        return {r.step: ["every"] for r in ordered if r.step % self.n == 0}


def union(parts: Iterable[Kept]) -> Kept:
    """Merge keep-results: a step kept by several parts lists every reason, in the parts' order."""
    out: Kept = {}
    for kept in parts:
        for step, reasons in kept.items():
            out.setdefault(step, []).extend(reasons)
    return out


def commit_order(records: Sequence[Recorded]) -> list[Recorded]:
    """Oldest first: abandoned checkpoints before every live one, then by ``seq``, then step."""
    return sorted(records, key=lambda r: (not r.abandoned, r.seq, r.step))


@dataclass(kw_only=True, frozen=True)
class RetentionPolicy:
    """Keep-policies that combine: a checkpoint is kept if any of them keeps it.

    With no policy set, everything is kept. Whatever the policies say, the newest checkpoint of the
    live run and the ``protected`` steps are always kept. "Newest" and ``keep_last`` follow the commit
    order, with abandoned checkpoints older than every live one. Until ``monitor`` has been reported
    by at least one checkpoint, ``keep_best`` keeps everything (a misspelt monitor deletes nothing).
    """

    keep_last: int | None = None
    keep_best: int = 0
    monitor: str | None = None
    mode: Literal["min", "max"] = "min"
    keep_every: int | None = None

    @property
    def keeps_all(self) -> bool:
        """True when no rule is set: nothing is ever deleted."""
        return self.keep_last is None and not self.keep_best and self.keep_every is None

    def parts(self) -> list[KeepPolicy]:
        """The small policies this combination is the union of, in the order reasons are listed."""
        if self.keeps_all:
            return [KeepAll()]
        parts: list[KeepPolicy] = []
        if self.keep_last is not None:
            parts.append(KeepLast(self.keep_last))
        parts.append(KeepBest(self.keep_best, self.monitor, self.mode))
        if self.keep_every is not None:
            parts.append(KeepEvery(self.keep_every))
        return parts

    def best(self, records: Sequence[Recorded], k: int | None = None) -> list[int]:
        """Steps of the best ``k`` records by ``monitor`` (ties: the later step wins), best first."""
        return KeepBest(self.keep_best, self.monitor, self.mode).ranked(records, k)

    def reasons(
        self, records: Sequence[Recorded], protected: Iterable[int] = ()
    ) -> dict[int, list[KeepReason]]:
        """Why each kept step is kept; steps absent from the result are to be deleted."""
        if not records:
            return {}
        ordered = commit_order(records)
        out = union(part.keep(ordered) for part in self.parts())
        live = [r.step for r in ordered if not r.abandoned]
        if live:
            out.setdefault(live[-1], []).append("newest")
        present = {r.step for r in ordered}
        for s in protected:
            if s in present:
                out.setdefault(s, []).append("protected")
        return dict(sorted(out.items()))

    def to_delete(self, records: Sequence[Recorded], protected: Iterable[int] = ()) -> list[int]:
        """Steps to delete, oldest first."""
        kept = self.reasons(records, protected)
        return sorted(r.step for r in records if r.step not in kept)
