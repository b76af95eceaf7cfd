"""Pure decisions: should this step save, and which checkpoints to keep. No I/O here."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

KeepReason = Literal["last", "best", "every", "newest", "protected", "awaiting_monitor"]


def is_save_step(step: int, frequency: int) -> bool:
    """True at every positive multiple of ``frequency``."""
    return step > 0 and step % frequency == 0


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
    """A checkpoint known only by its step and metrics (for planning without a manifest)."""

    step: int
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    seq: int = 0
    abandoned: bool = False

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)


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
        return self.keep_last is None and not self.keep_best and self.keep_every is None

    def best(self, records: Sequence[Recorded], k: int | None = None) -> list[int]:
        """Steps of the best ``k`` records by ``monitor`` (ties: the later step wins), best first."""
        if not self.monitor:
            return []
        scored = [(r.metric(self.monitor), r.step) for r in records]
        valid = [(v, s) for v, s in scored if v is not None]
        sign = 1.0 if self.mode == "min" else -1.0
        valid.sort(key=lambda vs: (sign * vs[0], -vs[1]))
        return [s for _, s in valid[: self.keep_best if k is None else k]]

    def reasons(
        self, records: Sequence[Recorded], protected: Iterable[int] = ()
    ) -> dict[int, list[KeepReason]]:
        """Why each kept step is kept; steps absent from the result are to be deleted."""
        if not records:
            return {}
        ordered = sorted(records, key=lambda r: (not r.abandoned, r.seq, r.step))
        steps = [r.step for r in ordered]
        out: dict[int, list[KeepReason]] = {}

        def keep(step: int, why: KeepReason) -> None:
            out.setdefault(step, []).append(why)

        if self.keeps_all:
            for s in steps:
                keep(s, "last")
        if self.keep_last is not None:
            for s in steps[-self.keep_last :]:
                keep(s, "last")
        best = self.best(records)
        if self.keep_best and self.monitor and not best:
            for s in steps:
                keep(s, "awaiting_monitor")
        for s in best:
            keep(s, "best")
        if self.keep_every is not None:
            for s in steps:
                if s % self.keep_every == 0:
                    keep(s, "every")
        live = [r.step for r in ordered if not r.abandoned]
        if live:
            keep(live[-1], "newest")
        present = set(steps)
        for s in protected:
            if s in present:
                keep(s, "protected")
        return dict(sorted(out.items()))

    def to_delete(self, records: Sequence[Recorded], protected: Iterable[int] = ()) -> list[int]:
        """Steps to delete, oldest first."""
        kept = self.reasons(records, protected)
        return sorted(r.step for r in records if r.step not in kept)
