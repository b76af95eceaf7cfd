"""Finding what to resume: the walk up an experiment's parents, and the checkpoints to try, best first."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from weightslab.errors import (
    CheckpointCorruptedError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    ConfigError,
    UnsafePathError,
)
from weightslab.format.manifest import CheckpointEntry, Manifest
from weightslab.policy.retention import RetentionPolicy
from weightslab.store.manager import CheckpointManager
from weightslab.system.validation import check_step

log = logging.getLogger("weightslab")

ResumeMode = Literal["latest", "best"] | int
Candidate = tuple[str, CheckpointEntry]


@dataclass(frozen=True)
class Link:
    """One experiment of a lineage, with the checkpoint its child branched from.

    ``branched_at`` is None for the experiment the walk started from; ``anchored`` is False for a
    parent the child branched from before that parent had any checkpoint.
    """

    exp_hash: str
    manifest: Manifest
    branched_at: int | None
    anchored: bool = True


def lineage(manager: CheckpointManager, exp_hash: str) -> Iterator[Link]:
    """``exp_hash``, then each parent in turn, while it exists (a cycle stops the walk)."""
    h: str | None = exp_hash
    upto: int | None = None
    anchored = True
    seen: set[str] = set()
    while h is not None and h not in seen and manager.has_experiment(h):
        seen.add(h)
        m = manager.manifest(h)
        yield Link(h, m, upto, anchored)
        h, upto = (m.parent.exp_hash, m.parent.checkpoint) if m.parent else (None, None)
        anchored = upto is not None


def chain_has_checkpoints(manager: CheckpointManager, exp_hash: str) -> bool:
    """Whether the experiment or any ancestor has a committed checkpoint."""
    return any(link.manifest.checkpoints for link in lineage(manager, exp_hash))


def latest_candidates(manager: CheckpointManager, exp_hash: str) -> list[Candidate]:
    """The live run of ``exp_hash`` newest first, then each ancestor from the checkpoint branched from."""
    out: list[Candidate] = []
    for link in lineage(manager, exp_hash):
        if not link.anchored:
            break  # the branch started before its parent had any checkpoint
        m, h = link.manifest, link.exp_hash
        if link.branched_at is None:  # the active experiment: its live run, newest commit first
            out += [(h, e) for e in reversed(m.live())]
        else:  # an ancestor: the checkpoint the branch continued from, and older ones
            out += [(h, e) for e in reversed(m.checkpoints) if e.step <= link.branched_at]
    return out


def candidates(
    manager: CheckpointManager,
    exp_hash: str,
    mode: ResumeMode,
    retention: RetentionPolicy,
    monitor: str | None,
) -> list[Candidate]:
    """The checkpoints to try for ``mode``, in order. ConfigError/CheckpointNotFoundError for "best"."""
    if mode == "latest":
        return latest_candidates(manager, exp_hash)
    if mode == "best":
        if not monitor:
            raise ConfigError("resume('best') needs monitor=<metric name> in the checkpoint system's options")
        m = manager.manifest(exp_hash)
        order = retention.best(m.checkpoints, len(m.checkpoints))
        found = [(exp_hash, e) for s in order if (e := m.entry(s)) is not None]
        if not found:
            raise CheckpointNotFoundError(
                f"no checkpoint of {exp_hash} recorded metric {monitor!r}; resume('latest') instead"
            )
        return found
    return [(exp_hash, manager.entry(exp_hash, check_step(mode)))]


def load_first(
    manager: CheckpointManager, exp_hash: str, tried: list[Candidate], *, strict: bool, root: Path | Any
) -> tuple[dict[str, Any], CheckpointEntry, str, list[str]]:
    """Load the first candidate that verifies: (data, entry, its experiment, files skipped).

    An unreadable file is journalled and skipped, or re-raised when ``strict`` (an explicit step).
    Raises CheckpointNotFoundError when none verifies.
    """
    skipped: list[str] = []
    for h, entry in tried:
        try:
            return manager.load_entry(h, entry, consolidate=False), entry, h, skipped
        except (CheckpointCorruptedError, CheckpointFormatError, UnsafePathError) as exc:
            skipped.append(entry.file)
            log.warning("weightslab: skipping %s/%s: %s", h, entry.file, exc)
            manager.event("checkpoint_unreadable", exp_hash=h, step=entry.step, error=str(exc))
            if strict:
                raise
    raise CheckpointNotFoundError(
        f"no checkpoint of experiment {exp_hash} in {root} verifies (tried {len(skipped)}: "
        f"{', '.join(skipped) or 'none'}); run `weightslab verify {root}` for details"
    )
