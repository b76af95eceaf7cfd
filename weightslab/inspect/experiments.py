"""Experiment records of a root: one summary row per experiment, its best metric and retention.

Reads manifests through a :class:`CheckpointManager`; nothing unpickles, so it is safe on roots from
anywhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from weightslab.errors import (
    ManifestError,
)
from weightslab.format.manifest import Manifest, ParentRef
from weightslab.policy.retention import RetentionPolicy
from weightslab.store.manager import CheckpointManager

Mode = Literal["min", "max"]


@dataclass(frozen=True)
class BestMetric:
    """The best value of the monitored metric in one experiment."""

    monitor: str
    mode: Mode
    value: float
    step: int

    def to_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode, "value": self.value, "step": self.step}


@dataclass(frozen=True)
class ExperimentInfo:
    """One row of ``weightslab ls``; ``error`` is set (and most fields empty) for an unreadable manifest."""

    exp_hash: str
    parent: ParentRef | None = None
    created: float | None = None
    checkpoints: int = 0
    latest_step: int | None = None
    best: BestMetric | None = None
    size_bytes: int = 0
    active: bool = False
    retention: dict[str, Any] = field(default_factory=dict)
    architecture_hash: str | None = None
    hyperparams_hash: str | None = None
    error: str | None = None
    abandoned: int = 0  # checkpoints of a future the run went back from

    def to_dict(self) -> dict[str, Any]:
        return {
            "exp_hash": self.exp_hash,
            "parent": None if self.parent is None else self.parent.to_dict(),
            "created": self.created,
            "created_iso": iso_time(self.created),
            "checkpoints": self.checkpoints,
            "abandoned": self.abandoned,
            "latest_step": self.latest_step,
            "best": None if self.best is None else self.best.to_dict(),
            "size_bytes": self.size_bytes,
            "active": self.active,
            "retention": dict(self.retention),
            "architecture_hash": self.architecture_hash,
            "hyperparams_hash": self.hyperparams_hash,
            "error": self.error,
        }


# -- experiments ------------------------------------------------------------------------------------
def policy_from(retention: Mapping[str, Any]) -> RetentionPolicy:
    """The :class:`RetentionPolicy` a manifest's ``retention`` dict records (unknown keys ignored)."""
    known = {f.name for f in fields(RetentionPolicy)}
    return RetentionPolicy(**{k: v for k, v in retention.items() if k in known})


def describe_policy(policy: RetentionPolicy) -> str:
    """``keep_last=3, keep_best=1 by val/loss (min)`` or ``keep all``."""
    if policy.keeps_all:
        return "keep all"
    parts = []
    if policy.keep_last is not None:
        parts.append(f"keep_last={policy.keep_last}")
    if policy.keep_best:
        parts.append(f"keep_best={policy.keep_best} by {policy.monitor} ({policy.mode})")
    if policy.keep_every is not None:
        parts.append(f"keep_every={policy.keep_every}")
    return ", ".join(parts)


def best_metric(manifest: Manifest, monitor: str | None, mode: Mode | None) -> BestMetric | None:
    """The best checkpoint of ``manifest`` by ``monitor`` (default: the monitor its retention records)."""
    monitor = monitor or manifest.retention.get("monitor")
    if not monitor:
        return None
    chosen: Mode = mode or ("max" if manifest.retention.get("mode") == "max" else "min")
    records = manifest.checkpoints
    steps = RetentionPolicy(keep_best=1, monitor=monitor, mode=chosen).best(records, 1)
    if not steps:
        return None
    entry = manifest.entry(steps[0])
    value = None if entry is None else entry.metric(monitor)
    return None if value is None else BestMetric(monitor, chosen, value, steps[0])


def experiment_info(
    manager: CheckpointManager,
    exp_hash: str,
    *,
    active: str | None = None,
    monitor: str | None = None,
    mode: Mode | None = None,
) -> ExperimentInfo:
    """The summary row of one experiment; an unreadable manifest gives a row with ``error`` set."""
    try:
        m = manager.manifest(exp_hash)
    except ManifestError as exc:
        return ExperimentInfo(exp_hash=exp_hash, active=exp_hash == active, error=exc.reason)
    latest = m.latest()
    return ExperimentInfo(
        exp_hash=exp_hash,
        parent=m.parent,
        created=m.created,
        checkpoints=len(m.checkpoints),
        abandoned=sum(e.abandoned for e in m.checkpoints),
        latest_step=None if latest is None else latest.step,
        best=best_metric(m, monitor, mode),
        size_bytes=manager.size_on_disk(exp_hash),
        active=exp_hash == active,
        retention=dict(m.retention),
        architecture_hash=m.architecture_hash,
        hyperparams_hash=m.hyperparams_hash,
    )


def experiment_infos(
    manager: CheckpointManager,
    *,
    active: str | None = None,
    monitor: str | None = None,
    mode: Mode | None = None,
) -> list[ExperimentInfo]:
    """Every experiment of the root, oldest first.

    ``active`` defaults to the experiment the journal says was active last; ``monitor``/``mode`` pick
    the metric of the "best" column (default: what each experiment's retention records).
    """
    if active is None:
        active = manager.last_active()
    return [
        experiment_info(manager, h, active=active, monitor=monitor, mode=mode) for h in manager.experiments()
    ]


# -- small formatting helpers shared by the console and the command ------------------------------------
def iso_time(timestamp: float | None) -> str | None:
    """Local time as ISO-8601 with offset (None for None)."""
    if timestamp is None or not math.isfinite(timestamp):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))


__all__ = [
    "BestMetric",
    "ExperimentInfo",
    "Mode",
    "best_metric",
    "describe_policy",
    "experiment_info",
    "experiment_infos",
    "iso_time",
    "policy_from",
]
