"""Nested mappings as flat ``{"dotted.key": value}`` dicts, the shape diffs and change lists compare."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten(value: Any, prefix: str = "", *, empty_root_is_leaf: bool = False) -> dict[str, Any]:
    """Nested mappings as dotted keys; lists, scalars and empty nested mappings are leaves.

    An empty mapping at the root flattens to ``{}``; with ``empty_root_is_leaf`` it is a leaf under
    the key ``""`` instead (the ledger's change lists have always reported it so, and callers match on it).
    """
    if isinstance(value, Mapping) and (value or (not prefix and not empty_root_is_leaf)):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


__all__ = ["flatten"]
