"""The system's console views of its root: summary, checkpoint table, lineage tree.

The rendering lives in :mod:`weightslab.cli.console`, imported on call: the CLI sits above the system.
"""

from __future__ import annotations

from typing import Any

from weightslab.errors import CheckpointNotFoundError
from weightslab.system.parts import SystemParts


class Views(SystemParts):
    """``summary``, ``print_checkpoints`` and ``print_tree``."""

    def summary(self, *, console: Any = None) -> None:
        """Print the experiments of this root (hash, parent and reason, checkpoints, best metric, size)."""
        from weightslab.cli import console as rich_console  # console -> commands -> components

        self.flush()
        rich_console.print_summary(
            self.manager,
            active=self.exp_hash,
            monitor=self.config.monitor,
            mode=self.config.mode if self.config.monitor else None,
            console=console,
        )

    def print_checkpoints(self, exp_hash: str | None = None, *, console: Any = None) -> None:
        """Print one experiment's checkpoints (default: the active one) and why each is kept."""
        from weightslab.cli import console as rich_console

        self.flush()
        h = exp_hash or self.exp_hash or self.manager.last_active()
        if h is None:
            raise CheckpointNotFoundError(f"{self.root} holds no experiment yet")
        protected = self._protection.protected(h) or ()
        rich_console.print_checkpoints(
            self.manager, h, retention=self.retention, protected=protected, console=console
        )

    def print_tree(self, *, console: Any = None) -> None:
        """Print the lineage tree: how experiments branched, with step and reason on each edge."""
        from weightslab.cli import console as rich_console

        self.flush()
        rich_console.print_tree(self.manager, active=self.exp_hash, console=console)
