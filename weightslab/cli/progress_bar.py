"""The progress bar of the commands that read or write whole checkpoints (verify, gc, export, backup)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from weightslab.cli.output import make_console
from weightslab.util.progress import RichProgress


class RichTracker(RichProgress):
    """A :class:`weightslab.inspect.Tracker` drawn as a transient rich progress bar.

    Shows nothing when ``console`` is not a terminal (pipes, files, CI logs). Use as a context manager.
    """

    def __init__(self, console: Console | None = None) -> None:
        super().__init__(
            console if console is not None else make_console(stderr=True),
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            transient=True,
        )
        self._task: TaskID | None = None

    def start(self, description: str, total: float | None) -> None:
        if self._task is not None:
            self._progress.update(self._task, visible=False)
        self._task = self._progress.add_task(description, total=total)

    def advance(self, amount: float = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)


__all__ = ["RichTracker"]
