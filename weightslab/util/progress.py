"""One rich progress display, shared by the command's trackers and the analysis progress.

The display is drawn only on a terminal: pipes, files and CI logs get nothing, so output meant for
machines stays clean. Subclasses choose the columns and add their own way of counting.
"""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

from rich.console import Console
from rich.progress import Progress, ProgressColumn

_P = TypeVar("_P", bound="RichProgress")


class RichProgress:
    """A ``rich.progress.Progress`` on ``console``, disabled off a terminal; use as a context manager.

    Args:
        console: where to draw.
        columns: the progress columns (or format strings), as ``Progress`` takes them.
        transient: erase the display when it stops (a tracker) or leave it (a finished report).
    """

    def __init__(self, console: Console, *columns: ProgressColumn | str, transient: bool) -> None:
        self.console = console
        self._progress = Progress(
            *columns, console=console, transient=transient, disable=not console.is_terminal
        )

    @property
    def enabled(self) -> bool:
        """True when the display is drawn (the console is a terminal)."""
        return self.console.is_terminal

    def __enter__(self: _P) -> _P:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()


__all__ = ["RichProgress"]
