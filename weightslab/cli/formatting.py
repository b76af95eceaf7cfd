"""How values look in the command's output: counts, sizes, times, metrics, and the table style."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from weightslab.cli.formats import format_size, format_time, format_value, parent_cell, plural
from weightslab.inspect import open_root
from weightslab.store.manager import CheckpointManager
from weightslab.util.names import is_hash

if TYPE_CHECKING:
    from weightslab.format.manifest_entries import ParentRef
    from weightslab.inspect.experiments import ExperimentInfo

Source = CheckpointManager | str | os.PathLike[str]


# -- formatting -------------------------------------------------------------------------------------
def format_age(timestamp: float, now: float | None = None) -> str:
    """``42s ago``, ``5m ago``, ``3h ago``, ``2d ago``."""
    seconds = max(0.0, (time.time() if now is None else now) - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def format_metrics(metrics: Mapping[str, float | None]) -> str:
    return "  ".join(f"{k}={format_value(v)}" for k, v in metrics.items()) or "-"


def format_parent(info: ExperimentInfo) -> str:
    parent = info.parent
    return "-" if parent is None else parent_cell(parent.exp_hash, parent.step, parent.reason)


def parent_text(parent: ParentRef) -> str:
    """``<hash> at step 120 (config_change), from its checkpoint 100``."""
    at = "" if parent.step is None else f" at step {parent.step}"
    since = "" if parent.checkpoint is None else f", from its checkpoint {parent.checkpoint}"
    return f"{parent.exp_hash}{at} ({parent.reason}){since}"


def manager_of(source: Source) -> CheckpointManager:
    """The open manager of ``source``: itself, or the root at that path opened read-only."""
    return source if isinstance(source, CheckpointManager) else open_root(source)


def new_table(**kwargs: Any) -> Table:
    """A table in weightslab's style: a rule under the header, no borders, two spaces between columns."""
    return Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
        header_style="bold",
        **kwargs,
    )


def resolve_experiment(manager: CheckpointManager, exp_hash: str | None) -> str | None:
    """The full hash for a prefix; for None, the experiment active last (None on an empty root)."""
    if exp_hash is None:
        return manager.last_active()
    return (
        exp_hash if is_hash(exp_hash) and manager.has_experiment(exp_hash) else manager.resolve_hash(exp_hash)
    )


__all__ = [
    "Source",
    "format_age",
    "format_metrics",
    "format_parent",
    "format_size",
    "format_time",
    "format_value",
    "manager_of",
    "new_table",
    "parent_text",
    "plural",
    "resolve_experiment",
]
