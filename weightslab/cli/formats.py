"""How values read in the command's output, and the experiments table's columns, without rich's console.

Counts, sizes, times, metric values and parents as every table prints them, the width of a pipe's
output, and the columns of ``weightslab ls``. Only the standard library and rich's small
``filesize`` module are loaded here: ``ls`` from the experiments' summaries
(:mod:`weightslab.cli.listing`) formats its rows with these before, or without, loading rich's
console; :mod:`weightslab.cli.formatting` and :mod:`weightslab.cli.tables` give the same names.
"""

from __future__ import annotations

import time
from typing import Any

from rich.filesize import decimal

PIPE_WIDTH = 100
"""The columns a table is laid out for on a pipe or in a file (unless ``COLUMNS`` says otherwise)."""

EXPERIMENT_COLUMNS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("  experiment", {"no_wrap": True}),
    ("parent", {"overflow": "fold"}),
    ("created", {"no_wrap": True}),
    ("ckpts", {"justify": "right"}),
    ("latest", {"justify": "right"}),
    ("best", {"justify": "right", "overflow": "fold"}),
    ("size", {"justify": "right", "no_wrap": True}),
)
"""The columns of the experiments table: header and rich column options (the best header names the
monitor when every row has the same one)."""


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 checkpoint``, ``2 checkpoints``, ``0 checkpoints``; ``plural_form`` for nouns not taking -s."""
    return f"{count:,} {noun if count == 1 else plural_form or noun + 's'}"


def format_size(nbytes: int) -> str:
    return decimal(nbytes)


def format_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    import yaml  # a list or dict value: rare, and yaml costs every command's start

    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix("...").strip()


def parent_cell(exp_hash: str, step: int | None, reason: str) -> str:
    """The parent column: ``3838286@20 config_change``."""
    at = "" if step is None else f"@{step}"
    return f"{exp_hash[:7]}{at} {reason}"


__all__ = [
    "EXPERIMENT_COLUMNS",
    "PIPE_WIDTH",
    "format_size",
    "format_time",
    "format_value",
    "parent_cell",
    "plural",
]
