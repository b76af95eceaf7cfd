"""Canonical, JSON-able form of hyperparameters, and the canonical JSON used for hashing.

Canonical means: mapping keys are strings and sorted, tuples become lists, dataclasses become dicts,
enums their value, paths strings, numpy and 0-d torch scalars Python numbers, and non-finite floats
the strings "nan", "inf" and "-inf". Anything else is refused with the key path that holds it.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from weightslab.errors import HyperparamsError

_FIX = "use str, int, float, bool, None, lists or mappings of them, or list the key in exclude_hyperparams"


def canonicalize(value: Any, path: str = "", exclude: frozenset[str] = frozenset()) -> Any:
    """Return the canonical form of ``value``; ``path`` names it in errors; ``exclude`` drops key paths."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return canonicalize(value.value, path, exclude)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise HyperparamsError(
                    f"hyperparameter key {key!r} at {path or '<root>'} is a {type(key).__name__}; "
                    "keys must be str or int"
                )
            sub = f"{path}.{key}" if path else str(key)
            if sub in exclude:
                continue
            out[str(key)] = canonicalize(item, sub, exclude)
        return dict(sorted(out.items()))
    if isinstance(value, (list, tuple)):
        return [canonicalize(v, f"{path}[{i}]", exclude) for i, v in enumerate(value)]
    item = getattr(value, "item", None)
    shape = getattr(value, "shape", None)
    if callable(item) and shape is not None and tuple(shape) == ():
        return canonicalize(item(), path, exclude)  # numpy scalars, 0-d tensors
    raise HyperparamsError(
        f"hyperparameter {path or '<root>'} = {value!r} of type {type(value).__name__} cannot be "
        f"serialised; {_FIX}"
    )


def strip_prefixes(exclude: Iterable[str], name: str) -> frozenset[str]:
    """Exclusions that apply inside the hyperparameter set ``name`` ("lr" and "config.lr" both do)."""
    out = set()
    for key in exclude:
        out.add(key)
        if key.startswith(name + "."):
            out.add(key[len(name) + 1 :])
    return frozenset(out)


def canonical_json(value: Any) -> bytes:
    """Deterministic compact JSON of an already canonical value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
