"""Where the command writes: consoles sized for pipes, the progress tracker, rich logging.

Output written to a pipe or a file has no colours and no progress bars, and is laid out for 100
columns (rich's own detection; ``COLUMNS`` and ``NO_COLOR`` are honoured).
"""

from __future__ import annotations

import logging
import os
from typing import IO

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from weightslab.util.progress import RichProgress

PIPE_WIDTH = 100


# -- consoles and progress --------------------------------------------------------------------------
def make_console(file: IO[str] | None = None, *, stderr: bool = False) -> Console:
    """A console for ``file`` (default stdout, or stderr); 100 columns wide when not a terminal."""
    console = Console(file=file, stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(file=file, stderr=stderr, width=PIPE_WIDTH)
    return console


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


# -- logging ----------------------------------------------------------------------------------------
class _WeightslabRichHandler(RichHandler):
    """The handler :func:`enable_rich_logging` installs (a class of its own, so it can be found again)."""


def enable_rich_logging(
    level: int | str = "INFO", *, logger: str = "weightslab", console: Console | None = None
) -> logging.Handler:
    """Show weightslab's log lines (saves, changes, retention) through a rich handler on stderr.

    Opt-in: the library never calls this. It sets the level of the ``weightslab`` logger and adds one
    handler (calling it again replaces it). Records still propagate to your own handlers; set
    ``logging.getLogger("weightslab").propagate = False`` if that prints them twice.
    """
    target = logging.getLogger(logger)
    disable_rich_logging(logger=logger)
    handler = _WeightslabRichHandler(
        console=console or make_console(stderr=True), show_path=False, markup=False, rich_tracebacks=False
    )
    handler.setLevel(level)
    target.addHandler(handler)
    target.setLevel(level)
    return handler


def disable_rich_logging(*, logger: str = "weightslab") -> None:
    """Remove the handler :func:`enable_rich_logging` added (no-op when there is none)."""
    target = logging.getLogger(logger)
    for handler in list(target.handlers):
        if isinstance(handler, _WeightslabRichHandler):
            target.removeHandler(handler)


__all__ = ["PIPE_WIDTH", "RichTracker", "disable_rich_logging", "enable_rich_logging", "make_console"]
