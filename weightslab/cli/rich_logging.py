"""Opt-in rich rendering of the library's log lines (the ``weightslab`` logger) on stderr."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

from weightslab.cli.output import make_console


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


__all__ = ["disable_rich_logging", "enable_rich_logging"]
