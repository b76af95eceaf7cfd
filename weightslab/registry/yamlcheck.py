"""Checking an edit of a watched hyperparameter file before it reaches the training.

:func:`parse_edit` says what the new content holds, or gives a :class:`Rejection` with the line and
the reason: invalid YAML, not a mapping, values that hashing cannot hold, or (with type checking) a
value whose type changed.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import yaml

from weightslab.errors import HyperparamsError
from weightslab.registry.yamlfile import as_tree
from weightslab.util.canonical import canonicalize

if TYPE_CHECKING:
    pass

log = logging.getLogger("weightslab")


@dataclasses.dataclass(frozen=True)
class Rejection:
    """Why an edit of a watched file was not applied; ``line`` is 1-based, None when unknown."""

    reason: str
    line: int | None = None

    def describe(self) -> str:
        return self.reason if self.line is None else f"line {self.line}: {self.reason}"


def parse_edit(
    data: bytes | str, current: Any = None, *, check_types: bool = False
) -> dict[str, Any] | Rejection:
    """Parse the new content of a hyperparameter file, or say why it must not be applied.

    ``current`` is the set as registered now; with ``check_types`` a value whose type differs from
    its current value is refused. Valid content is a mapping (an empty file is not: it is what an
    editor leaves half-way through a save) whose values hashing and checkpoints can hold.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejection(
                f"not UTF-8 text ({exc.reason} at byte {exc.start})", data.count(b"\n", 0, exc.start) + 1
            )
    else:
        text = data
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        reason = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
        if "!!python" in text or "tag:yaml.org,2002:python" in str(exc):
            reason += "; Python tags are never loaded"
        return Rejection(reason, None if mark is None else mark.line + 1)
    if loaded is None:
        return Rejection("the file is empty; it must hold a mapping of keys to values")
    if not isinstance(loaded, dict):
        return Rejection(
            f"the file holds a {_kind(loaded)} ({_short(loaded)}), not a mapping of keys to values",
            _line_of(text, ()),
        )
    bad = _unserialisable(loaded, ())
    if bad is not None:
        where, problem = bad
        return Rejection(problem, _line_of(text, where))
    if check_types and current is not None:
        change = _type_change(as_tree(current), loaded, ())
        if change is not None:
            where, old, new = change
            hint = "; write floats with a dot (1.0e-4, not 1e-4)" if _kind(old) == "float" else ""
            return Rejection(
                f"{_dotted(where)} was {_kind(old)} ({_short(old)}), the edit makes it {_kind(new)} "
                f"({_short(new)}); type checking is on{hint}",
                _line_of(text, where),
            )
    return loaded


def _kind(value: Any) -> str:
    """The YAML kind of a value, the unit of type checking (tuples are lists, enums their value)."""
    if isinstance(value, enum.Enum):
        return _kind(value.value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (str, os.PathLike)):
        return "str"
    if isinstance(value, Mapping) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    item = getattr(value, "item", None)
    if callable(item) and tuple(getattr(value, "shape", (1,))) == ():
        return _kind(item())
    return type(value).__name__


def _type_change(
    old: Any, new: Any, where: tuple[str | int, ...]
) -> tuple[tuple[str | int, ...], Any, Any] | None:
    """The first key present before and after whose kind changed (a key that was null takes any)."""
    old = as_tree(old)
    if old is None:
        return None
    if _kind(old) != _kind(new):
        return where, old, new
    if isinstance(old, Mapping):
        for key, value in new.items():
            if key in old:
                change = _type_change(old[key], value, (*where, key))
                if change is not None:
                    return change
    return None


def _unserialisable(value: Any, where: tuple[str | int, ...]) -> tuple[tuple[str | int, ...], str] | None:
    """The first value that hashing cannot hold (YAML dates, sets, ...), with the reason."""
    if isinstance(value, dict):
        for key, item in value.items():
            bad = _unserialisable(item, (*where, key))
            if bad is not None:
                return bad
        try:
            canonicalize({k: None for k in value}, _dotted(where))
        except HyperparamsError as exc:
            return where, str(exc)
        return None
    if isinstance(value, list):
        for i, item in enumerate(value):
            bad = _unserialisable(item, (*where, i))
            if bad is not None:
                return bad
        return None
    try:
        canonicalize(value, _dotted(where))
    except HyperparamsError as exc:
        return where, f"{str(exc).split(';')[0]}; quote it to make it a string"
    return None


def _dotted(where: tuple[str | int, ...]) -> str:
    out = ""
    for part in where:
        if isinstance(part, int) and not isinstance(part, bool) and out:
            out += f"[{part}]"  # a list index
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _line_of(text: str, where: tuple[str | int, ...]) -> int | None:
    """The 1-based line where the value at key path ``where`` starts, if it can be found."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    if node is None:
        return None
    line = node.start_mark.line
    for part in where:
        if isinstance(node, yaml.MappingNode):
            match = next(
                ((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)),
                None,
            )
            if match is None:
                break
            line, node = match[0].start_mark.line, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line
        else:
            break
    return line + 1


__all__ = ["Rejection", "parse_edit"]
