"""Finding and loading the checkpoints of a root, for the ``Checkpointer`` and the callbacks.

:func:`all_entries` lists every committed checkpoint across experiments in commit order,
:func:`find_entry` picks one by step or step file path, :func:`load_newest` loads the newest that
verifies (as ``resume()`` picks it), :func:`find_checkpoints` lists them as :class:`CheckpointInfo`
ranked by recency or by the monitored metric, and :func:`as_trainer_checkpoint` turns a step dict
into the callbacks' ``{"trainer", "models", ...}`` layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from weightslab.errors import CheckpointNotFoundError, ConfigError, UnsafePathError
from weightslab.format.manifest import CheckpointEntry
from weightslab.store.manager import CheckpointManager
from weightslab.system.resume import latest_candidates, load_first
from weightslab.system.validation import check_step

TRAINER_NAME = "trainer"  # the callbacks' stateful object holding the trainer's counters
DATALOADER_PREFIX = "dataloaders."
Found = tuple[str, CheckpointEntry]  # (exp_hash, entry)

__all__ = [
    "CheckpointInfo",
    "Found",
    "all_entries",
    "as_trainer_checkpoint",
    "find_checkpoints",
    "find_entry",
    "load_newest",
]


def _order(entry: CheckpointEntry) -> tuple[bool, float, int]:
    """Commit order across experiments: abandoned checkpoints first, then by commit time."""
    return (not entry.abandoned, entry.created, entry.seq)


def all_entries(manager: CheckpointManager) -> list[Found]:
    """Every committed checkpoint of the root, oldest first (commit order)."""
    found = [(h, e) for h in manager.experiments() for e in manager.manifest(h).checkpoints]
    return sorted(found, key=lambda he: _order(he[1]))


def find_entry(manager: CheckpointManager, which: int | str | os.PathLike[str]) -> Found:
    """A committed checkpoint by step (an int: the newest live one at that step) or step file path.

    Raises CheckpointNotFoundError naming what exists, TypeError for anything else.
    """
    found = all_entries(manager)
    if isinstance(which, int) and not isinstance(which, bool):
        step = check_step(which)
        matches = [(h, e) for h, e in found if e.step == step and not e.abandoned]
        if not matches:
            steps = sorted({e.step for _, e in found if not e.abandoned})
            raise CheckpointNotFoundError(f"no checkpoint at step {step} in {manager.root}; steps: {steps}")
        return matches[-1]
    if not isinstance(which, (str, os.PathLike)):
        raise TypeError(f"expected a step (int), a name or a step file's path, got {which!r}")
    target, root = Path(which).expanduser().resolve(), Path(manager.root).resolve()
    if not target.is_relative_to(root):
        raise CheckpointNotFoundError(
            f"{which} is not inside the checkpoint root {root}; pass a step file of it"
        )
    for h, entry in found:
        with contextlib.suppress(UnsafePathError):  # an edited manifest entry names no file of ours
            if manager.experiment(h).resolve(entry.file).resolve() == target:
                return h, entry
    raise CheckpointNotFoundError(
        f"{which} is not a committed checkpoint of {root} (deleted by retention, or never committed); "
        "list the committed ones with `weightslab ls ROOT`"
    )


def load_newest(manager: CheckpointManager) -> tuple[dict[str, Any], Found] | None:
    """The newest checkpoint of the run that verifies, as ``resume()`` picks it; None when there is none.

    A corrupt or unreadable file is logged, journalled (``checkpoint_unreadable``) and skipped for
    the one before it. Raises CheckpointNotFoundError when checkpoints exist but none verifies.
    """
    exp_hash = manager.last_active()
    if exp_hash is None:
        return None
    tried = latest_candidates(manager, exp_hash)
    if not tried:
        return None
    data, entry, h, _ = load_first(manager, exp_hash, tried, strict=False, root=manager.root)
    return data, (h, entry)


def as_trainer_checkpoint(step_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A weightslab step dict (what ``torch.load`` of a step file returns) in the callbacks' layout."""
    extra = step_dict.get("extra", {})
    step = int(step_dict.get("step", 0))
    trainer = extra.get(TRAINER_NAME) or {"global_step": step + 1, "current_epoch": None, "callbacks": {}}
    return {
        "trainer": dict(trainer),
        "models": dict(step_dict.get("models", {})),
        "optimizers": dict(step_dict.get("optimizers", {})),
        "schedulers": dict(step_dict.get("schedulers", {})),
        "dataloaders": {
            k[len(DATALOADER_PREFIX) :]: v for k, v in extra.items() if k.startswith(DATALOADER_PREFIX)
        },
        "metadata": {k: step_dict.get(k) for k in ("exp_hash", "step", "trigger", "metrics", "created")},
    }


@dataclass(frozen=True)
class CheckpointInfo:
    """One committed checkpoint as :func:`find_checkpoints` lists it; ``metric`` is the monitored value."""

    step: int
    metric: float | None
    path: str
    exp_hash: str
    trigger: str
    metrics: Mapping[str, float | None]
    tags: tuple[str, ...]
    created: float
    abandoned: bool

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return dataclasses.asdict(self)


def find_checkpoints(
    checkpoint_dir: str | os.PathLike[str],
    mode: Literal["best", "latest"] = "latest",
    *,
    monitor: str | None = None,
    metric_mode: Literal["min", "max"] | None = None,
) -> list[CheckpointInfo]:
    """Every committed checkpoint of a root: newest first ("latest"), or best first ("best").

    ``monitor``/``metric_mode`` default to those the run recorded in its manifests; with "best",
    checkpoints without the metric come last, newest first. Read-only: may run beside training.
    Raises RootError for a folder that is not a root, ConfigError for "best" with no monitor known.
    """
    if mode not in ("best", "latest"):
        raise ConfigError(f"mode must be 'best' or 'latest', got {mode!r}")
    manager = CheckpointManager(Path(checkpoint_dir).expanduser().resolve(), mode="r")
    found = all_entries(manager)
    recorded = [manager.manifest(h).retention for h in reversed(manager.experiments())]
    monitor = monitor or next((r["monitor"] for r in recorded if r.get("monitor")), None)
    direction = metric_mode or next((r["mode"] for r in recorded if r.get("monitor") == monitor), "min")
    if direction not in ("min", "max"):
        raise ConfigError(f"metric_mode must be 'min' or 'max', got {direction!r}")
    records = [
        CheckpointInfo(
            step=e.step,
            metric=e.metric(monitor) if monitor else None,
            path=str(manager.experiment(h).resolve(e.file)),
            exp_hash=h,
            trigger=e.trigger,
            metrics=dict(e.metrics),
            tags=e.tags,
            created=e.created,
            abandoned=e.abandoned,
        )
        for h, e in found
    ]
    records.reverse()  # newest first
    if mode == "latest":
        return records
    if monitor is None:
        raise ConfigError(
            f"find_checkpoints(mode='best') needs monitor=<metric name>: {manager.root} records none"
        )
    sign = 1.0 if direction == "min" else -1.0
    # a stable sort of the newest-first list: of equal values, the newer checkpoint comes first
    ranked = sorted((r for r in records if r.metric is not None), key=lambda r: sign * (r.metric or 0.0))
    return ranked + [r for r in records if r.metric is None]
