"""Checkpoint records of one experiment, with the reasons retention keeps each."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from weightslab.inspect.experiments import iso_time, policy_from
from weightslab.policy.retention import RetentionPolicy
from weightslab.store.manager import CheckpointManager


@dataclass(frozen=True)
class CheckpointInfo:
    """One committed checkpoint and why retention keeps it (empty ``kept``: ``gc`` would remove it)."""

    step: int
    file: str
    bytes: int
    created: float
    trigger: str
    metrics: dict[str, float | None]
    kept: tuple[str, ...]
    seq: int = 0
    abandoned: bool = False
    tags: tuple[str, ...] = ()
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "seq": self.seq,
            "abandoned": self.abandoned,
            "file": self.file,
            "bytes": self.bytes,
            "created": self.created,
            "created_iso": iso_time(self.created),
            "trigger": self.trigger,
            "metrics": dict(self.metrics),
            "kept": list(self.kept),
            "tags": list(self.tags),
            "description": self.description,
        }


# -- checkpoints ------------------------------------------------------------------------------------
def checkpoint_infos(
    manager: CheckpointManager,
    exp_hash: str,
    *,
    retention: RetentionPolicy | Mapping[str, Any] | None = None,
    protected: Iterable[int] = (),
) -> list[CheckpointInfo]:
    """The checkpoints of one experiment with the reasons retention keeps each.

    ``retention`` defaults to the policy recorded in the manifest. Reasons are those of
    :meth:`RetentionPolicy.reasons` ("last", "best", "every", "newest"), plus "branch" for a step a
    child experiment branched from and "protected" for the steps in ``protected``.
    """
    m = manager.manifest(exp_hash)
    if retention is None:
        policy = policy_from(m.retention)
    elif isinstance(retention, RetentionPolicy):
        policy = retention
    else:
        policy = policy_from(retention)
    branches = manager.branch_points(exp_hash)
    pinned = set(protected)
    records = m.checkpoints
    reasons = policy.reasons(records, pinned | branches)
    out = []
    for e in m.checkpoints:
        why: list[str] = [r for r in reasons.get(e.step, []) if r != "protected"]
        if e.step in branches:
            why.append("branch")
        if e.step in pinned:
            why.append("protected")
        out.append(
            CheckpointInfo(
                step=e.step,
                file=e.file,
                bytes=e.bytes,
                created=e.created,
                trigger=e.trigger,
                metrics=dict(e.metrics),
                kept=tuple(dict.fromkeys(why)),
                seq=e.seq,
                abandoned=e.abandoned,
                tags=tuple(e.tags),
                description=e.description,
            )
        )
    return out


PROTECTING = {
    "newest": "it is the newest checkpoint of its experiment (a resume starts from it)",
    "best": "it is a best checkpoint by the recorded monitor",
    "branch": "a later experiment continued from it",
    "protected": "it is protected",
}
"""Reasons retention keeps a checkpoint that also forbid deleting it by hand.

Being one of the last ``keep_last`` or every ``keep_every``-th does not: those are windows that the
next commit moves anyway.
"""


def protection_reason(info: CheckpointInfo) -> str | None:
    """Why ``info`` must not be deleted by hand (one sentence), or None when it may be."""
    why = [PROTECTING[k] for k in info.kept if k in PROTECTING]
    return "; ".join(why) if why else None


__all__ = ["PROTECTING", "CheckpointInfo", "checkpoint_infos", "protection_reason"]
