"""Applying a retention policy to a root: what a policy may delete, and what it never may.

The policy (:mod:`weightslab.policy.retention`) decides which steps go; here the branch points (the
checkpoints a child experiment continued from) are protected, and refused deletions are collected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from weightslab.errors import ManifestError, RetentionRefusedError, UnsafePathError
from weightslab.policy.retention import RetentionPolicy
from weightslab.store.manifests import ManifestStore


def branch_points(manifests: ManifestStore, exp_hash: str) -> set[int]:
    """Checkpoints of ``exp_hash`` that a child experiment continued from (its ``parent.checkpoint``)."""
    points = set()
    for h in manifests.experiments():
        try:
            parent = manifests.read(h).parent
        except ManifestError:
            continue
        if parent is not None and parent.exp_hash == exp_hash and parent.checkpoint is not None:
            points.add(parent.checkpoint)
    return points


def apply_retention(
    manifests: ManifestStore,
    delete: Callable[[str, int], None],
    exp_hash: str,
    policy: RetentionPolicy,
    protected: Iterable[int] = (),
) -> list[int]:
    """Delete (with ``delete``) what ``policy`` does not keep; branch points and ``protected`` stay.

    A checkpoint whose deletion is refused as unsafe is kept; the others are deleted, then
    RetentionRefusedError names the refused entries (its ``deleted`` lists the rest).
    """
    if policy.keeps_all:  # nothing to delete: skip ranking every entry (a commit stays O(1))
        return []
    entries = manifests.read(exp_hash).checkpoints
    doomed = policy.to_delete(entries, set(protected) | branch_points(manifests, exp_hash))
    deleted: list[int] = []
    refused: dict[int, UnsafePathError] = {}
    for step in doomed:
        try:
            delete(exp_hash, step)
        except UnsafePathError as exc:
            refused[step] = exc
        else:
            deleted.append(step)
    if refused:
        raise RetentionRefusedError(exp_hash, deleted, refused)
    return deleted
