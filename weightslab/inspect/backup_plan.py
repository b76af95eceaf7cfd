"""What a backup copies and prunes, and the records of what it did.

:func:`plan` chooses the checkpoints of each experiment (the newest and the best by default, every
one, the tagged ones, or those named); :func:`already_there` says which of them the destination
holds already, :func:`prunable` which copies there ``prune`` removes, and :func:`dry_run` reports
all of it without writing. :mod:`weightslab.inspect.backup` runs the copy from the same plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from weightslab.errors import ManifestError, UnsafePathError
from weightslab.format.manifest import CheckpointEntry, Manifest
from weightslab.inspect.experiments import Mode, best_metric
from weightslab.store.manager import CheckpointManager

Action = Literal["copied", "skipped", "would copy", "pruned", "would prune", "failed"]

Plan = dict[str, dict[int, tuple[str, ...]]]
"""{experiment: {step: reasons}}: what a backup copies, and why each was chosen."""


@dataclass(frozen=True)
class BackupItem:
    """One checkpoint the backup looked at; ``reasons``: why it was chosen (best, latest, all, requested)."""

    exp_hash: str
    step: int
    action: Action
    reasons: tuple[str, ...]
    bytes: int
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reasons": list(self.reasons)}


@dataclass
class BackupResult:
    """What a backup copied, skipped (already there, same checksum), pruned or could not copy."""

    source: str
    destination: str
    dry_run: bool
    items: list[BackupItem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def count(self, *actions: Action) -> int:
        """How many items have one of ``actions``."""
        return sum(1 for i in self.items if i.action in actions)

    @property
    def copied_bytes(self) -> int:
        return sum(i.bytes for i in self.items if i.action in ("copied", "would copy"))

    @property
    def failed(self) -> list[BackupItem]:
        return [i for i in self.items if i.action == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "dry_run": self.dry_run,
            "copied": self.count("copied", "would copy"),
            "skipped": self.count("skipped"),
            "pruned": self.count("pruned", "would prune"),
            "failed": len(self.failed),
            "copied_bytes": self.copied_bytes,
            "items": [i.to_dict() for i in self.items],
            "notes": list(self.notes),
        }


def plan(
    source: CheckpointManager,
    experiments: Iterable[str] | None,
    all_checkpoints: bool,
    checkpoints: Iterable[tuple[str, int]] | None,
    tagged: str | None,
    monitor: str | None,
    mode: Mode | None,
    result: BackupResult,
) -> Plan:
    """What to copy from ``source``, oldest experiment first (parents before children).

    The arguments are :func:`~weightslab.inspect.backup.backup_root`'s; an experiment skipped (an
    unreadable manifest, no committed checkpoint) gets a note in ``result``. Raises
    UnknownExperimentError/AmbiguousExperimentError for a prefix, CheckpointNotFoundError for a
    requested step that is not committed.
    """
    chosen: Plan = {}
    if checkpoints is not None:
        for prefix, step in checkpoints:
            h = source.resolve_hash(prefix)
            entry = source.entry(h, step)  # CheckpointNotFoundError for a step that is not committed
            chosen.setdefault(h, {})[entry.step] = ("requested",)
        return chosen
    hashes = (
        list(dict.fromkeys(source.resolve_hash(p) for p in experiments))
        if experiments is not None
        else source.experiments()
    )
    for h in hashes:
        try:
            m = source.manifest(h)
        except ManifestError as exc:
            result.notes.append(f"experiment {h} not backed up: {exc}")
            continue
        wanted: dict[int, list[str]] = {}
        if all_checkpoints:
            for e in m.checkpoints:
                wanted.setdefault(e.step, []).append("all")
        else:
            latest = m.latest()
            if latest is not None:
                wanted.setdefault(latest.step, []).append("latest")
            best = best_metric(m, monitor, mode)
            if best is not None:
                wanted.setdefault(best.step, []).append("best")
            if tagged is not None:
                for e in m.checkpoints:
                    if tagged in e.tags:
                        wanted.setdefault(e.step, []).append(f"tagged {tagged}")
        if wanted:
            chosen[h] = {step: tuple(reasons) for step, reasons in sorted(wanted.items())}
        else:
            result.notes.append(f"experiment {h} has no committed checkpoint; nothing to back up")
    return chosen


def already_there(dest: CheckpointManager | None, exp_hash: str, entry: CheckpointEntry) -> bool:
    """Whether the destination has this step with the same checksum, and a file of the recorded size.

    ``dest`` is None for a destination that is not a root yet. The checksum of either version of a
    source entry that is mid-replacement counts; a copy that is itself mid-replacement does not.
    """
    if dest is None or not dest.has_experiment(exp_hash):
        return False
    have = dest.manifest(exp_hash).entry(entry.step)
    accepted = {entry.xxh3_128} | ({entry.pending.xxh3_128} if entry.pending else set())
    if have is None or have.xxh3_128 not in accepted or have.pending is not None:
        return False
    exp = dest.experiment(exp_hash)
    records = [(r.file, r.bytes) for r in have.shards] or [(have.file, have.bytes)]
    try:
        return all(dest.storage.size(exp.resolve(f)) == n for f, n in records)
    except (OSError, UnsafePathError):
        return False


def prunable(entry: CheckpointEntry, wanted: Mapping[int, Any], tagged: str | None) -> bool:
    """Whether ``prune`` removes this copy: not chosen this time, and not carrying the sparing tag."""
    return entry.step not in wanted and (tagged is None or tagged not in entry.tags)


def as_copied(entry: CheckpointEntry, dest_m: Manifest | None) -> CheckpointEntry:
    """The source's entry with the size and checksum of the copy already in the destination.

    That copy may be the other version of a source entry that was mid-replacement; the result is
    never pending. Without a copy (or a destination manifest), ``entry`` itself.
    """
    have = None if dest_m is None else dest_m.entry(entry.step)
    if have is None:
        return entry
    return dataclasses.replace(entry, bytes=have.bytes, xxh3_128=have.xxh3_128, pending=None)


def dry_run(
    source: CheckpointManager,
    dest: CheckpointManager | None,
    exp_hash: str,
    wanted: dict[int, tuple[str, ...]],
    prune: bool,
    tagged: str | None,
    result: BackupResult,
) -> None:
    """Add to ``result`` what backing up ``wanted`` of one experiment would copy, skip and prune.

    ``dest``: the destination opened read-only, None when it is not a root yet (everything would be
    copied); ``tagged``: the tag that spares a copy from ``prune``. Writes nothing anywhere.
    """
    m = source.manifest(exp_hash)
    for step, reasons in wanted.items():
        entry = m.entry(step)
        assert entry is not None  # planned from this manifest
        action: Action = "skipped" if already_there(dest, exp_hash, entry) else "would copy"
        result.items.append(BackupItem(exp_hash, step, action, reasons, entry.bytes))
    if prune and dest is not None and dest.has_experiment(exp_hash):
        for e in dest.manifest(exp_hash).checkpoints:
            if prunable(e, wanted, tagged):
                result.items.append(BackupItem(exp_hash, e.step, "would prune", (), e.bytes))


__all__ = [
    "Action",
    "BackupItem",
    "BackupResult",
    "Plan",
    "already_there",
    "as_copied",
    "dry_run",
    "plan",
    "prunable",
]
