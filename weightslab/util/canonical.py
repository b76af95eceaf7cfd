"""Canonical, JSON-able form of hyperparameters, and the canonical JSON used for hashing.

Canonical means: mapping keys are strings and sorted, tuples become lists, dataclasses become dicts,
enums their value, paths strings, numpy and 0-d torch scalars Python numbers, and non-finite floats
the strings "nan", "inf" and "-inf". Anything else is refused with the key path that holds it.

The canonical form is for hashing and for people (the YAML config). What resume restores is the
:func:`plain` form, which keeps int keys, tuples and non-finite floats as they are (all of which
``torch.load(weights_only=True)`` reads back), and :func:`restore_like` puts it back into the live
objects with their own types (enums, dataclasses, paths).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from weightslab.errors import HyperparamsError

_FIX = "use str, int, float, bool, None, lists or mappings of them, or list the key in exclude_hyperparams"
MAX_DEPTH = 64  # nesting deeper than this is refused with a clear error, never a RecursionError


def canonicalize(value: Any, path: str = "", exclude: frozenset[str] = frozenset(), _depth: int = 0) -> Any:
    """Return the canonical form of ``value``; ``path`` names it in errors; ``exclude`` drops key paths.

    Raises HyperparamsError (a ValueError) naming the key for a value that cannot be serialised, for
    keys that collide once written (``{1: "a", "1": "b"}``) and for nesting over MAX_DEPTH levels.
    """
    if _depth > MAX_DEPTH:
        raise HyperparamsError(
            f"hyperparameter {path or '<root>'} is nested more than {MAX_DEPTH} levels deep; "
            "flatten the configuration or list the key in exclude_hyperparams"
        )
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return canonicalize(value.value, path, exclude, _depth + 1)
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
        originals: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise HyperparamsError(
                    f"hyperparameter key {key!r} at {path or '<root>'} is a {type(key).__name__}; "
                    "keys must be str or int"
                )
            sub = f"{path}.{key}" if path else str(key)
            if sub in exclude:
                continue
            if str(key) in originals:
                raise HyperparamsError(
                    f"hyperparameter keys {originals[str(key)]!r} and {key!r} at {path or '<root>'} collide "
                    "once written (keys are stored as text); rename one of them"
                )
            originals[str(key)] = key
            out[str(key)] = canonicalize(item, sub, exclude, _depth + 1)
        return dict(sorted(out.items()))
    if isinstance(value, (list, tuple)):
        return [canonicalize(v, f"{path}[{i}]", exclude, _depth + 1) for i, v in enumerate(value)]
    item = getattr(value, "item", None)
    shape = getattr(value, "shape", None)
    if callable(item) and shape is not None and tuple(shape) == ():
        return canonicalize(item(), path, exclude, _depth + 1)  # numpy scalars, 0-d tensors
    raise HyperparamsError(
        f"hyperparameter {path or '<root>'} = {value!r} of type {type(value).__name__} cannot be "
        f"serialised; {_FIX}"
    )


def plain(value: Any) -> Any:
    """The form resume restores from: like :func:`canonicalize` but int keys, tuples and non-finite
    floats stay as they are (only plain containers and scalars, so weights_only loading reads it).

    Call it on values :func:`canonicalize` accepted.
    """
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {(int(k) if isinstance(k, int) else str(k)): plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return plain(value.item())  # numpy scalars, 0-d tensors (canonicalize accepted it)


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def restore_like(live: Any, saved: Any) -> Any:
    """``saved`` with the types of ``live``, the value it replaces; mappings and dataclasses in place.

    Enums, paths, tuples, nested dataclasses and int keys come back as the live objects have them;
    values written in canonical form by older files ("inf", str keys) are read back too.
    """
    if isinstance(live, enum.Enum):
        try:
            return type(live)(saved)
        except ValueError:
            return saved
    if isinstance(live, float) and isinstance(saved, str) and saved in _NON_FINITE:
        return _NON_FINITE[saved]
    if isinstance(live, os.PathLike) and isinstance(saved, str):
        return type(live)(saved)  # type: ignore[call-arg]
    if isinstance(live, (list, tuple)) and isinstance(saved, (list, tuple)):
        items = [restore_like(live[i], v) if i < len(live) else v for i, v in enumerate(saved)]
        return tuple(items) if isinstance(live, tuple) else items
    if dataclasses.is_dataclass(live) and not isinstance(live, type) and isinstance(saved, Mapping):
        names = {f.name for f in dataclasses.fields(live)}
        for key, value in saved.items():
            if key in names:
                setattr(live, key, restore_like(getattr(live, key), value))
        return live
    if isinstance(live, MutableMapping) and isinstance(saved, Mapping):
        replace_mapping(live, saved)
        return live
    return saved


def replace_mapping(target: MutableMapping[Any, Any], values: Mapping[Any, Any]) -> None:
    """Make ``target`` hold ``values``, in place, keeping the types of the values it replaces."""
    by_text = {str(k): k for k in target}
    incoming = {by_text.get(str(k), k) if isinstance(k, str) else k: v for k, v in values.items()}
    for k in [k for k in target if k not in incoming]:
        del target[k]
    for k, v in incoming.items():
        target[k] = restore_like(target[k], v) if k in target else v


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
