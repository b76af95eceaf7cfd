"""What the ``weightslab`` command does, apart from how it prints it.

Each module computes plain records (dataclasses with ``to_dict()`` for ``--json``) from a root:
:mod:`overview` (experiments, checkpoints, lineage, architecture), :mod:`verify`, :mod:`gc`,
:mod:`export` and :mod:`diff`. :mod:`weightslab.cli.console` renders them with ``rich`` and
:mod:`weightslab.cli.main` parses the command line. Long operations report through a :class:`Tracker`,
so they stay free of any display code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the storage layer is loaded by open_root: `ls` on summaries does without it
    from weightslab.store.manager import CheckpointManager


class Tracker(Protocol):
    """Receives the progress of a long operation (a rich progress bar, or nothing)."""

    def start(self, description: str, total: float | None) -> None:
        """Begin a phase of ``total`` units (bytes, files); None when the amount is unknown."""

    def advance(self, amount: float = 1) -> None:
        """``amount`` more units of the current phase are done."""


class NullTracker:
    """A :class:`Tracker` that shows nothing."""

    def start(self, description: str, total: float | None) -> None:
        return None

    def advance(self, amount: float = 1) -> None:
        return None


def open_root(root: str | os.PathLike[str]) -> CheckpointManager:
    """Open ``root`` read-only; raises RootError naming the path when it is missing or not a root."""
    from weightslab.storage.open import is_remote
    from weightslab.store.manager import CheckpointManager

    if isinstance(root, str) and is_remote(root):  # s3://bucket/prefix: AWS_* variables say where, who
        return CheckpointManager(root, mode="r")
    path = Path(root).expanduser()
    return CheckpointManager(path, mode="r")  # raises RootError for a missing path or a non-root


__all__ = ["NullTracker", "Tracker", "open_root"]
