"""Hyperparameter YAML files on disk: loading them safely and writing them back keeping comments.

Reads use ``yaml.safe_load`` (no Python tags). A write-back replaces only the scalars that changed when
the result reads back as the new values, so comments and layout stay; otherwise the file is dumped
afresh. Writes are atomic (a rename), so a watcher or a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from weightslab.errors import HyperparamsError
from weightslab.storage.local import LocalStorage
from weightslab.util.canonical import canonicalize

if TYPE_CHECKING:
    pass

log = logging.getLogger("weightslab")


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    """Load a YAML file that must hold a mapping, with ``yaml.safe_load`` (no Python tags)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HyperparamsError(f"cannot read hyperparameter file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        raise HyperparamsError(
            f"hyperparameter file {path} is not valid safe YAML{where}: {getattr(exc, 'problem', exc)}; "
            "fix the file (Python tags such as !!python/object are never loaded)"
        ) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise HyperparamsError(
            f"hyperparameter file {path} holds a {type(data).__name__}, expected a mapping of keys to values"
        )
    return data


def read_bytes(path: Path) -> bytes | None:
    """The bytes of ``path``, or None when it does not exist (an editor may be mid-rename)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def write_file(path: str | os.PathLike[str], values: Mapping[str, Any]) -> bool:
    """Write ``values`` to the YAML file at ``path`` atomically, keeping comments where it can.

    Returns False when the file already holds exactly that. Raises OSError when writing fails.
    """
    target = Path(path)
    data = render_yaml(values, target)
    if read_bytes(target) == data:
        return False
    LocalStorage().write_bytes_atomic(target, data)
    return True


def render_yaml(values: Mapping[str, Any], path: str | os.PathLike[str] | None = None) -> bytes:
    """The YAML text (UTF-8) to write for ``values``.

    That is the file at ``path`` with only the changed scalars replaced, when that reads back as
    ``values``; otherwise a fresh ``yaml.safe_dump`` with the keys in their order.
    """
    plain = _plain(values)
    if path is not None:
        try:
            old = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            old = None
        if old is not None:
            patched = _patch_scalars(old, plain)
            if patched is not None:
                return patched.encode("utf-8")
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, default_flow_style=False).encode(
        "utf-8"
    )


def _plain(value: Any) -> Any:
    """Builtins that ``yaml.safe_dump`` writes and ``yaml.safe_load`` reads back to the same values."""
    value = as_tree(value)
    if isinstance(value, Mapping):
        return {k if isinstance(k, (str, int)) else str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return float(value)  # nan and inf too (canonical form would make them strings)
    return canonicalize(value)


def same(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` hash alike (False when either cannot be hashed)."""
    try:
        equal: bool = canonicalize(a) == canonicalize(b)
        return equal
    except HyperparamsError:
        return False


def _patch_scalars(text: str, new: dict[str, Any]) -> str | None:
    """``text`` with the changed scalar values replaced in place, or None when that cannot work."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        old = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(node, yaml.MappingNode) or not isinstance(old, dict):
        return None
    edits: list[tuple[int, int, str]] = []
    if not _collect_edits(node, old, new, edits):
        return None
    for start, end, replacement in sorted(edits, reverse=True):
        if replacement and start > 0 and text[start - 1] == ":":
            replacement = " " + replacement
        text = text[:start] + replacement + text[end:]
    try:
        return text if same(yaml.safe_load(text), new) else None
    except yaml.YAMLError:
        return None


def _collect_edits(
    node: yaml.MappingNode, old: dict[Any, Any], new: dict[Any, Any], edits: list[tuple[int, int, str]]
) -> bool:
    # the same keys in the same order, and no merge keys or duplicates (then nodes pair with items)
    if list(old) != list(new) or len(node.value) != len(old):
        return False
    for (_, value_node), key in zip(node.value, old, strict=True):
        before, after = old[key], new[key]
        if same(before, after):
            continue
        if isinstance(value_node, yaml.MappingNode) and isinstance(before, dict) and isinstance(after, dict):
            if not _collect_edits(value_node, before, after, edits):
                return False
        elif (
            isinstance(value_node, yaml.ScalarNode)
            and value_node.style not in ("|", ">")
            and not isinstance(after, (dict, list))
        ):
            edits.append((value_node.start_mark.index, value_node.end_mark.index, _scalar_text(after)))
        else:
            return False
    return True


def _scalar_text(value: Any) -> str:
    dumped = yaml.safe_dump([value], default_flow_style=True, width=1 << 30, allow_unicode=True).strip()
    return dumped[1:-1]  # inside "[...]": the value as a flow scalar, quoted when it must be


def as_tree(value: Any) -> Any:
    """A dataclass instance as the mapping of its fields; anything else as it is."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return value


__all__ = ["as_tree", "load_yaml_mapping", "read_bytes", "render_yaml", "same", "write_file"]
