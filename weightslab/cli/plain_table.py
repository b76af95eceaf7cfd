"""A table laid out exactly as rich lays out weightslab's tables, written as plain text.

Rich measures, wraps and renders every cell through its segment machinery: about 0.7 ms a row, so
``weightslab ls`` on 100 experiments spent longer drawing the table than reading the root. Where the
output has no style to carry (a pipe, a file: no colour system, nothing recorded), the layout is
computed here: each column as wide as its widest cell (header lines included), one space of padding
and one space of divider between columns, none at the edges, the header aligned to the bottom and
the cells of a row to the top, the rule under the header as wide as the table. A table wider than
the console takes the column widths rich computes for it, and only the cells that do not fit are
wrapped, by rich's own :meth:`~rich.text.Text.wrap`. A cell holding a tab or a control character,
a body cell holding a newline, a terminal or a recording console are left to rich:
:func:`render_plain` returns None.

The cells are what rich would print: a ``str`` goes through :meth:`Console.render_str` (markup,
emoji codes) when it holds ``[`` or two colons, a :class:`~rich.text.Text` gives its plain text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from rich.cells import cell_len, set_cell_size
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    from rich.table import Table

Justify = Literal["left", "right"]
Overflow = Literal["fold", "crop", "ellipsis"]
Cell = str | Text

RULE = "─"  # rich.box.SIMPLE_HEAD's head row
# Unicode spaces, combining marks and format characters (zero-width joiners, NBSP, ideographic space)
_RICH_ONLY = frozenset({"Zs", "Mn", "Me", "Cf"})
_EMOJI_CODE = re.compile(r":\S*?:")  # what rich's emoji codes (":smile:") can be: else no lookup


def plain_console(console: Console) -> bool:
    """Whether ``console`` prints text without any style (no colour system, no recording, no notebook)
    and with rich's own box characters (a UTF encoding: else rich draws the table in ASCII)."""
    return (
        console.color_system is None
        and not console.record
        and not console.is_jupyter
        and not console.legacy_windows
        and not console.options.ascii_only
    )


@dataclass(frozen=True)
class Column:
    """A column's layout options, as :meth:`rich.table.Table.add_column` takes them."""

    justify: Justify = "left"
    overflow: Overflow = "ellipsis"  # rich's default
    no_wrap: bool = False


def render_plain(
    console: Console,
    headers: Sequence[Cell],
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    table: Callable[[Sequence[Sequence[Cell]]], Table] | None = None,
) -> str | None:
    """The lines rich would print for this table on ``console`` (newline-terminated), or None.

    A table wider than the console is laid out at the widths rich gives its columns (``table(rows)``
    builds the same table as a rich one with those rows, to ask); each cell wider than its column is
    wrapped by rich's own :meth:`Text.wrap`. Without ``table`` such a table gives None, as does anything
    listed in the module's docstring.
    """
    if not plain_console(console):
        return None
    head = [_plain(console, h) for h in headers]
    body = [[_plain(console, c) for c in row] for row in rows]
    if any(c is None for c in head) or any(c is None for row in body for c in row):
        return None
    head_text = [h or "" for h in head]
    body_text = [[c or "" for c in row] for row in body]
    if any("\n" in c for row in body_text for c in row):
        return None
    widths = [max(cell_len(line) for line in h.split("\n")) for h in head_text]
    for row in body_text:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], cell_len(c))
    total = sum(widths) + 2 * (len(widths) - 1)
    if total > console.width:
        if table is None:
            return None
        # rich sizes a column by its cells' widest line and longest word: the rows holding those
        # give it the same widths as all the rows, and are all it has to measure
        built = table([rows[r] for r in sorted(_measuring_rows(body_text))])
        # rich's own arithmetic (shrink the wrapable columns, then all evenly), widths with padding
        padded = built._calculate_column_widths(
            console, console.options.update_width(console.width - built._extra_width)
        )
        widths = [w - (1 if i < len(padded) - 1 else 0) for i, w in enumerate(padded)]
        if min(widths) < 1:  # rich leaves out a column squeezed to nothing
            return None
        total = sum(padded) + len(padded) - 1
    out = _row(console, headers, head_text, widths, columns, bottom=True)
    out.append(RULE * total)
    for cells, texts in zip(rows, body_text, strict=True):
        out += _row(console, cells, texts, widths, columns, bottom=False)
    return "".join(line + "\n" for line in out)


def _measuring_rows(texts: Sequence[Sequence[str]]) -> set[int]:
    """For each column, a row with its widest line and a row with its longest word (as rich measures
    a cell: ``cell_len`` of its longest line, and of its longest ``str.split()`` word)."""
    keep: set[int] = set()
    if not texts:
        return keep
    for i in range(len(texts[0])):
        widest = [max((cell_len(line) for line in row[i].splitlines()), default=0) for row in texts]
        longest = [
            max((cell_len(word) for word in row[i].split()), default=w)
            for row, w in zip(texts, widest, strict=True)
        ]
        keep.add(widest.index(max(widest)))
        keep.add(longest.index(max(longest)))
    return keep


def _plain(console: Console, cell: Cell) -> str | None:
    """The text rich prints for ``cell``, or None for one it would not print as it stands."""
    if isinstance(cell, Text):
        text = cell.plain
    elif "[" in cell or _EMOJI_CODE.search(cell):
        text = console.render_str(cell).plain
    else:
        text = cell
    if any(ch < " " and ch != "\n" for ch in text) or "\x7f" in text:
        return None
    if not text.isascii() and any(unicodedata.category(ch) in _RICH_ONLY for ch in text if ch > "\x7f"):
        return None  # rich strips, joins or blanks these at line ends in ways not reproduced here
    return text


def _row(
    console: Console,
    cells: Sequence[Cell],
    texts: Sequence[str],
    widths: Sequence[int],
    columns: Sequence[Column],
    *,
    bottom: bool,
) -> list[str]:
    """The lines of one row; cells of fewer lines are aligned to the top (a header: to the bottom)."""
    stacks = [
        _cell_lines(console, cell, text, width, column)
        for cell, text, width, column in zip(cells, texts, widths, columns, strict=True)
    ]
    height = max(len(lines) for lines in stacks)
    for lines, width in zip(stacks, widths, strict=True):
        blank = [" " * width] * (height - len(lines))
        if bottom:
            lines[:0] = blank
        else:
            lines += blank
    return ["  ".join(parts) for parts in zip(*stacks, strict=True)]


def _cell_lines(console: Console, cell: Cell, text: str, width: int, column: Column) -> list[str]:
    """The lines of one cell, each ``width`` cells wide, as rich renders it in its column."""
    if "\n" not in text and cell_len(text) <= width:
        if column.justify == "right":
            text = text.rstrip()  # as rich justifies: trailing spaces go, the width stays
            return [" " * (width - cell_len(text)) + text]
        return [text + " " * (width - cell_len(text))]
    rich_text = cell if isinstance(cell, Text) else console.render_str(cell)
    wrapped = rich_text.wrap(
        console, width, justify=column.justify, overflow=column.overflow, no_wrap=column.no_wrap
    )
    return [set_cell_size(line.plain, width) for line in wrapped]


__all__ = ["Column", "plain_console", "render_plain"]
