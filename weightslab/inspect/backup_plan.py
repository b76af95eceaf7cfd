"""What a backup copies and prunes, and the records of what it did.

:func:`plan` chooses the checkpoints of each experiment (the newest and the best by default, every
one, the tagged ones, or those named; with the checkpoints a child experiment continued from) and
keeps the source's entries as it read them; :func:`existing_copy` says which of them the destination
holds already, :func:`prune_candidates` which copies there ``prune`` removes (never a branch point),
and :func:`dry_run` reports all of it without writing. :mod:`weightslab.inspect.backup` runs the
copy from the same plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from weightslab.errors import CheckpointCorruptedError, ManifestError, UnsafePathError
from weightslab.format.manifest import CheckpointEntry, Manifest
from weightslab.inspect.experiments import Mode, best_metric
from weightslab.store.manager import CheckpointManager

Action = Literal["copied", "skipped", "would copy", "pruned", "would prune", "failed"]

Copy = Literal["there", "damaged", "absent"]
"""What the destination holds of a source entry: that version intact, that version damaged, or not it."""

DAMAGED = "the backup's copy does not match its manifest entry"


@dataclass(frozen=True)
class Planned:
    """One experiment of a plan: the source's manifest as the plan read it, and the entries chosen.

    ``reasons``: why each step was chosen (best, latest, all, tagged, branch point, requested).
    """

    manifest: Manifest
    entries: dict[int, CheckpointEntry]
    reasons: dict[int, tuple[str, ...]]


Plan = dict[str, Planned]
"""{experiment: what a backup copies of it}, oldest experiment first."""


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

    The arguments are :func:`~weightslab.inspect.backup.backup_root`'s. Unless ``checkpoints`` names
    exactly what to copy, the checkpoints that child experiments in the source continued from are
    chosen too ("branch point"), so that the lineage resumes in the backup. An experiment skipped (an
    unreadable manifest, no committed checkpoint) gets a note in ``result``. Raises
    UnknownExperimentError/AmbiguousExperimentError for a prefix, CheckpointNotFoundError for a
    requested step that is not committed.
    """
    if checkpoints is not None:
        return _requested(source, checkpoints)
    every = source.experiments()
    hashes = (
        list(dict.fromkeys(source.resolve_hash(p) for p in experiments)) if experiments is not None else every
    )
    readable: dict[str, Manifest] = {}
    for h in dict.fromkeys([*hashes, *every]):  # every manifest: the children name their parents
        try:
            readable[h] = source.manifest(h)
        except ManifestError as exc:
            if h in hashes:
                result.notes.append(f"experiment {h} not backed up: {exc}")
    children = _children(readable.values())
    chosen: Plan = {}
    for h in hashes:
        if h not in readable:
            continue  # noted above
        m = readable[h]
        wanted = _chosen(m, all_checkpoints, tagged, monitor, mode)
        for step, kids in sorted(children.get(h, {}).items()):
            if m.entry(step) is None:
                result.notes.append(
                    f"experiment {h}: step {step}, which {', '.join(k[:8] for k in kids)} continued from, "
                    "is no longer committed in the source, so this backup cannot copy it"
                )
            else:
                wanted.setdefault(step, []).append("branch point")
        entries = {step: e for step in sorted(wanted) if (e := m.entry(step)) is not None}
        if entries:
            chosen[h] = Planned(m, entries, {step: tuple(wanted[step]) for step in entries})
        else:
            result.notes.append(f"experiment {h} has no committed checkpoint; nothing to back up")
    return chosen


def _requested(source: CheckpointManager, checkpoints: Iterable[tuple[str, int]]) -> Plan:
    """The plan of exactly the named (hash or prefix, step) pairs."""
    chosen: Plan = {}
    for prefix, step in checkpoints:
        h = source.resolve_hash(prefix)
        entry = source.entry(h, step)  # CheckpointNotFoundError for a step that is not committed
        planned = chosen.setdefault(h, Planned(source.manifest(h), {}, {}))
        planned.entries[entry.step] = entry
        planned.reasons[entry.step] = ("requested",)
    return chosen


def _chosen(
    m: Manifest, all_checkpoints: bool, tagged: str | None, monitor: str | None, mode: Mode | None
) -> dict[int, list[str]]:
    """{step: reasons} of one experiment: every checkpoint, or the newest, the best and the tagged ones."""
    wanted: dict[int, list[str]] = {}
    if all_checkpoints:
        for e in m.checkpoints:
            wanted.setdefault(e.step, []).append("all")
        return wanted
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
    return wanted


def _children(manifests: Iterable[Manifest]) -> dict[str, dict[int, list[str]]]:
    """{parent: {checkpoint: the children that continued from it}} of one root's manifests."""
    found: dict[str, dict[int, list[str]]] = {}
    for m in manifests:
        if m.parent is not None and m.parent.checkpoint is not None:
            found.setdefault(m.parent.exp_hash, {}).setdefault(m.parent.checkpoint, []).append(m.exp_hash)
    return found


def existing_copy(
    dest: CheckpointManager | None, exp_hash: str, entry: CheckpointEntry, *, verify: bool = False
) -> Copy:
    """What the destination holds of ``entry``: "there", "damaged" (to copy again) or "absent".

    "there": the step with the same checksum in the manifest and files of the recorded sizes, or,
    with ``verify``, files whose bytes are read again and match. ``dest`` is None for a destination
    that is not a root yet. The checksum of either version of a source entry that is mid-replacement
    counts; a copy that is itself mid-replacement is "absent".
    """
    if dest is None or not dest.has_experiment(exp_hash):
        return "absent"
    have = dest.manifest(exp_hash).entry(entry.step)
    accepted = {entry.xxh3_128} | ({entry.pending.xxh3_128} if entry.pending else set())
    if have is None or have.xxh3_128 not in accepted or have.pending is not None:
        return "absent"
    exp = dest.experiment(exp_hash)
    records = [(r.file, r.bytes) for r in have.shards] or [(have.file, have.bytes)]
    try:
        if verify:
            dest.verify_entry(exp_hash, have)
        elif not all(dest.storage.size(exp.resolve(f)) == n for f, n in records):
            return "damaged"
    except (CheckpointCorruptedError, OSError, UnsafePathError):
        return "damaged"
    return "there"


def prunable(
    entry: CheckpointEntry, wanted: Mapping[int, Any], tagged: str | None, protected: Iterable[int] = ()
) -> bool:
    """Whether ``prune`` removes this copy: not chosen this time, not ``protected`` (the destination's
    branch points), and not carrying the sparing tag."""
    return (
        entry.step not in wanted
        and entry.step not in set(protected)
        and (tagged is None or tagged not in entry.tags)
    )


def prune_candidates(
    dest: CheckpointManager | None, exp_hash: str, wanted: Mapping[int, Any], tagged: str | None
) -> list[CheckpointEntry]:
    """The copies of one experiment in the destination that ``prune`` removes; never one that a child
    experiment in the destination continued from. Empty for an unreadable manifest (noted elsewhere)."""
    if dest is None or not dest.has_experiment(exp_hash):
        return []
    try:
        copies = dest.manifest(exp_hash).checkpoints
    except ManifestError:
        return []
    protected = dest.branch_points(exp_hash)
    return [e for e in copies if prunable(e, wanted, tagged, protected)]


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
    dest: CheckpointManager | None,
    exp_hash: str,
    planned: Planned,
    options: tuple[bool, str | None, bool],
    result: BackupResult,
) -> None:
    """Add to ``result`` what backing up ``planned`` of one experiment would copy, skip and prune.

    ``dest``: the destination opened read-only, None when it is not a root yet (everything would be
    copied); ``options``: (prune, the tag that spares a copy from it, verify existing copies).
    Writes nothing anywhere.
    """
    prune, tagged, verify = options
    try:
        if dest is not None and dest.has_experiment(exp_hash):
            dest.manifest(exp_hash)
    except ManifestError as exc:
        result.notes.append(f"experiment {exp_hash} would not be backed up: the destination's {exc}")
        return
    for step, entry in planned.entries.items():
        state = existing_copy(dest, exp_hash, entry, verify=verify)
        action: Action = "skipped" if state == "there" else "would copy"
        detail = DAMAGED if state == "damaged" else ""
        result.items.append(BackupItem(exp_hash, step, action, planned.reasons[step], entry.bytes, detail))
    if prune:
        for e in prune_candidates(dest, exp_hash, planned.reasons, tagged):
            result.items.append(BackupItem(exp_hash, e.step, "would prune", (), e.bytes))


__all__ = [
    "DAMAGED",
    "Action",
    "BackupItem",
    "BackupResult",
    "Copy",
    "Plan",
    "Planned",
    "as_copied",
    "dry_run",
    "existing_copy",
    "plan",
    "prunable",
    "prune_candidates",
]
