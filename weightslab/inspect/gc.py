"""``weightslab gc``: apply each experiment's recorded retention policy and remove crash leftovers.

A real run takes the writer lock: opening ``CheckpointManager(root, mode="w")`` cleans the leftovers
(and rebuilds a lost or broken manifest from the step files that verify), and retention deletes through
the manager, so the commit rule holds: the manifest entry goes first, then the file. What the run
reports is what disappeared from disk. A dry run opens the root read-only and predicts the same with
``CheckpointManager.find_leftovers()`` (the rules ``clean_leftovers()`` applies), touching nothing.

Nothing outside an experiment folder is ever deleted: a root whose model or hp folder is a symlink out
of its experiment folder is refused as a whole (cleaning leftovers would delete files there), and a
checkpoint whose manifest entry names anything but a real step file of its experiment is kept and
reported under ``refused`` (the command then exits 1).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from weightslab.errors import ConfigError, ManifestError, RetentionRefusedError, UnsafePathError
from weightslab.format.blobs import blob_path, blobs_dir
from weightslab.format.layout import TMP_MARKER, RootLayout, parse_step_file
from weightslab.inspect import NullTracker, Tracker, open_root
from weightslab.inspect.experiments import describe_policy, policy_from
from weightslab.inspect.verify import relative_to_root
from weightslab.policy.retention import RetentionPolicy
from weightslab.storage.base import Storage
from weightslab.store.blobs import BlobStore, committed_entries
from weightslab.store.manager import CheckpointManager
from weightslab.util.names import is_hash


@dataclass(frozen=True)
class GcItem:
    """One file ``gc`` removes (or would remove): a checkpoint retention drops, or a crash leftover."""

    kind: Literal["checkpoint", "leftover", "upload", "blob"]
    exp_hash: str
    path: str
    bytes: int
    step: int | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "exp_hash": self.exp_hash,
            "step": self.step,
            "path": self.path,
            "bytes": self.bytes,
            "reason": self.reason,
        }


@dataclass
class GcResult:
    """What ``gc`` removed; with ``dry_run`` what it would remove.

    ``refused``: checkpoints retention would drop but whose manifest entry is unsafe (kept, one note each).
    """

    root: Path
    dry_run: bool
    items: list[GcItem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    policies: dict[str, str] = field(default_factory=dict)
    rebuilt: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        return sum(i.bytes for i in self.items)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "dry_run": self.dry_run,
            "removed": [i.to_dict() for i in self.items],
            "freed_bytes": self.freed_bytes,
            "checkpoints": sum(1 for i in self.items if i.kind == "checkpoint"),
            "leftovers": sum(1 for i in self.items if i.kind == "leftover"),
            "uploads": sum(1 for i in self.items if i.kind == "upload"),
            "blobs": sum(1 for i in self.items if i.kind == "blob"),
            "skipped": list(self.skipped),
            "policies": dict(self.policies),
            "rebuilt": list(self.rebuilt),
            "refused": list(self.refused),
        }


def effective_policy(retention: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> RetentionPolicy:
    """The recorded ``retention`` with the options given on the command line laid over it.

    Raises ConfigError for keep_best without a metric to rank by.
    """
    merged = {**retention, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    policy = policy_from(merged)
    if policy.keep_best and not policy.monitor:
        raise ConfigError(
            f"keep_best={policy.keep_best} needs a metric to rank by; pass --monitor NAME (for example val/loss)"
        )
    return policy


def plan_retention(
    manager: CheckpointManager, overrides: Mapping[str, Any] | None = None
) -> tuple[dict[str, RetentionPolicy], list[GcItem], list[str], list[str]]:
    """Per experiment: the policy to apply and the checkpoints it drops; plus experiments skipped (why)
    and checkpoints it would drop but must keep, because their manifest entry is refused as unsafe."""
    policies: dict[str, RetentionPolicy] = {}
    items: list[GcItem] = []
    skipped: list[str] = []
    refused: list[str] = []
    for h in manager.experiments():
        try:
            m = manager.manifest(h)
        except ManifestError as exc:
            skipped.append(f"{h}: {exc.reason}")
            continue
        policy = effective_policy(m.retention, overrides)
        policies[h] = policy
        records = m.checkpoints
        for step in policy.to_delete(records, manager.branch_points(h)):
            entry = m.entry(step)
            if entry is None:  # to_delete only names steps of the records
                continue
            try:
                path = manager.experiment(h).resolve(entry.file)
            except UnsafePathError as exc:
                refused.append(f"{h} step {step}: manifest entry {entry.file!r} kept, {exc.reason}")
                continue
            items.append(
                GcItem(
                    kind="checkpoint",
                    exp_hash=h,
                    step=step,
                    path=relative_to_root(path, manager.root),
                    bytes=entry.bytes,
                    reason="retention",
                )
            )
    return policies, items, skipped, refused


def refuse_escaping_folders(manager: CheckpointManager) -> None:
    """Raise UnsafePathError when a model or hp folder of the root is a symlink out of its experiment.

    Opening the root for writing removes crash leftovers in those folders, so such a root is refused
    as a whole, before anything is opened for writing (and for a dry run too, which would list files
    elsewhere as leftovers).
    """
    checkpoints = manager.layout.checkpoints_dir
    for name in manager.storage.listdir(checkpoints):
        if not is_hash(name) or not manager.storage.is_dir(checkpoints / name):
            continue
        escaping = manager.experiment(name).escaping_folders()
        if escaping:
            folder, real = next(iter(escaping.items()))
            raise UnsafePathError(
                relative_to_root(folder, manager.root),
                f"gc refuses this root: that folder is a symlink to {real}, outside its experiment "
                "folder, and collecting would delete files there",
            )


def run_gc(
    root: str | os.PathLike[str],
    *,
    dry_run: bool = False,
    overrides: Mapping[str, Any] | None = None,
    tracker: Tracker | None = None,
) -> GcResult:
    """Apply retention to every experiment of ``root`` and remove crash leftovers.

    ``overrides`` (keep_last, keep_best, monitor, mode, keep_every) replace the recorded values.
    Raises RootError for a missing root, RootLockedError when a run holds it (not for a dry run),
    ConfigError for an invalid policy.
    """
    tracker = tracker or NullTracker()
    reader = open_root(root)
    refuse_escaping_folders(reader)
    if dry_run:
        leftovers, rebuilt = reader.find_leftovers()
        policies, planned, skipped, refused = plan_retention(reader, overrides)
        items = [_leftover(reader, p, _size(reader, p)) for p in leftovers]
        items += [_upload(reader, key) for key in _uploads(reader, abort=False)]
        # blobs no committed checkpoint references now (those the retention above would free are not
        # predicted: they are found by the real run)
        items += [
            _blob(reader, p, size)
            for p, size in _orphan_blobs(reader.storage, reader.layout, reader.manifests)
        ]
        return GcResult(
            root=reader.root,
            dry_run=True,
            items=[*items, *planned],
            skipped=[note for note in skipped if note.split(":", 1)[0] not in rebuilt],
            policies={h: describe_policy(p) for h, p in policies.items()},
            rebuilt=rebuilt,
            refused=refused,
        )
    _, rebuilt = reader.find_leftovers()
    plan_retention(reader, overrides)  # a bad override fails here, before anything is touched
    # what opening the writer cleans is reported from the disk itself: the files that disappeared
    before = _files(reader)
    blobs_before = _blob_files(reader)
    # the same backend: an object-store root stays on its store
    with CheckpointManager(reader.root, mode="w", storage=reader.storage) as writer:  # cleans leftovers
        after = _files(writer)
        result = GcResult(root=writer.root, dry_run=False)
        result.items = [_leftover(writer, p, size) for p, size in before.items() if p not in after]
        # under the writer lock no save is in flight: every incomplete upload is a crash's
        result.items += [_upload(writer, key) for key in _uploads(writer, abort=True)]
        result.rebuilt = [h for h in rebuilt if writer.has_experiment(h)]
        # planned again under the lock: now nothing else can change the manifests
        policies, planned, result.skipped, result.refused = plan_retention(writer, overrides)
        result.policies = {h: describe_policy(p) for h, p in policies.items()}
        by_step = {(i.exp_hash, i.step): i for i in planned}
        tracker.start("collecting", len(policies))
        for h, policy in policies.items():
            try:
                deleted = writer.apply_retention(h, policy)
            except RetentionRefusedError as exc:  # the refused entries are in result.refused already
                deleted = exc.deleted
            for step in deleted:
                path = relative_to_root(writer.experiment(h).step_file(step), writer.root)
                result.items.append(
                    by_step.get((h, step), GcItem("checkpoint", h, path, 0, step, "retention"))
                )
            tracker.advance()
        # retention removed the blobs only its checkpoints referenced; this also removes the orphans
        # of crashed saves and of a crash during an earlier collection
        writer.collect_blobs()
        blobs_after = _blob_files(writer)
        result.items += [_blob(writer, p, size) for p, size in blobs_before.items() if p not in blobs_after]
    return result


def _orphan_blobs(storage: Storage, layout: RootLayout, manifests: Any) -> list[tuple[Path, int]]:
    """The blobs no committed checkpoint references, found without touching anything (a dry run)."""
    store = BlobStore(layout, lambda: storage)
    if not store.has_blobs():
        return []
    store.ensure_index(committed_entries(manifests))
    if not store.complete:
        return []
    live = store.referenced()
    out = []
    for digest, codec in sorted(store.known().items()):
        if digest not in live:
            path = blob_path(layout.root, digest, codec)
            try:
                out.append((path, storage.size(path)))
            except FileNotFoundError:
                continue
    return out


def _blob(manager: CheckpointManager, path: Path, size: int) -> GcItem:
    return GcItem(
        kind="blob", exp_hash="", path=relative_to_root(path, manager.root), bytes=size, reason="unreferenced"
    )


def _blob_files(manager: CheckpointManager) -> dict[Path, int]:
    """Every stored blob of the root with its size."""
    out = {}
    for path in manager.storage.files_under(blobs_dir(manager.root)):
        with contextlib.suppress(FileNotFoundError):
            out[path] = manager.storage.size(path)
    return out


def _leftover(manager: CheckpointManager, path: Path, size: int) -> GcItem:
    parsed = parse_step_file(path.name)
    return GcItem(
        kind="leftover",
        exp_hash=path.relative_to(manager.layout.checkpoints_dir).parts[0],
        path=relative_to_root(path, manager.root),
        bytes=size,
        step=None if parsed is None else parsed[1],
        reason="temp file" if TMP_MARKER in path.name else "orphaned",
    )


def _uploads(manager: CheckpointManager, *, abort: bool) -> list[str]:
    """The keys of the multipart uploads a crash left on an object store (aborted with ``abort``).

    They are invisible to listings but billed; a local root has none.
    """
    storage = manager.storage
    if abort and hasattr(storage, "abort_incomplete_uploads"):
        return [u.key for u in storage.abort_incomplete_uploads()]
    if hasattr(storage, "incomplete_uploads"):
        return [u.key for u in storage.incomplete_uploads()]
    return []


def _upload(manager: CheckpointManager, key: str) -> GcItem:
    parts = key.split("/")
    h = next((p for p in parts if is_hash(p)), "")
    return GcItem(kind="upload", exp_hash=h, path=key, bytes=0, reason="incomplete multipart upload")


def _files(manager: CheckpointManager) -> dict[Path, int]:
    """Every file under the root's ``checkpoints/`` with its size."""
    out = {}
    for path in manager.storage.files_under(manager.layout.checkpoints_dir):
        with contextlib.suppress(FileNotFoundError):
            out[path] = manager.storage.size(path)
    return out


def _size(manager: CheckpointManager, path: Path) -> int:
    try:
        return manager.storage.size(path)
    except FileNotFoundError:
        return 0


__all__ = ["GcItem", "GcResult", "effective_policy", "plan_retention", "refuse_escaping_folders", "run_gc"]
