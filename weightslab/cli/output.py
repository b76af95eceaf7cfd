"""Where the command writes: consoles sized for pipes.

Output written to a pipe or a file has no colours and no progress bars, and is laid out for 100
columns (rich's own detection; ``COLUMNS`` and ``NO_COLOR`` are honoured). The progress tracker
(:mod:`~weightslab.cli.progress_bar`) and rich logging (:mod:`~weightslab.cli.rich_logging`) live in
modules of their own, so that a command that draws neither (``ls``) does not import them; their
names are still importable from here.
"""

from __future__ import annotations

import os
from typing import IO, TYPE_CHECKING

from rich.console import Console

from weightslab.cli.formats import PIPE_WIDTH


# -- consoles ---------------------------------------------------------------------------------------
def make_console(file: IO[str] | None = None, *, stderr: bool = False) -> Console:
    """A console for ``file`` (default stdout, or stderr); 100 columns wide when not a terminal."""
    console = Console(file=file, stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(file=file, stderr=stderr, width=PIPE_WIDTH)
    return console


def __getattr__(name: str) -> object:
    """``RichTracker``, ``enable_rich_logging`` and ``disable_rich_logging``, loaded on first use."""
    if name == "RichTracker":
        from weightslab.cli.progress_bar import RichTracker

        return RichTracker
    if name in ("enable_rich_logging", "disable_rich_logging"):
        from weightslab.cli import rich_logging

        return getattr(rich_logging, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:  # loaded on first use, by __getattr__
    from weightslab.cli.progress_bar import RichTracker
    from weightslab.cli.rich_logging import disable_rich_logging, enable_rich_logging

__all__ = [
    "PIPE_WIDTH",
    "RichTracker",
    "disable_rich_logging",
    "enable_rich_logging",
    "make_console",
]
