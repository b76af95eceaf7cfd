"""Values made strict JSON: ``json.dumps(..., allow_nan=False)`` accepts what comes out."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def to_jsonable(value: Any, *, fallback: Callable[[Any], Any] = str) -> Any:
    """``value`` (dataclasses, mappings, sequences, paths, numbers) as JSON types.

    NaN and infinities become None (strict JSON has no spelling for them); keys become strings;
    anything else goes through ``fallback`` (``str`` by default, ``repr`` where the type matters).
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_jsonable(getattr(value, f.name), fallback=fallback) for f in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, fallback=fallback) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, fallback=fallback) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return fallback(value)


__all__ = ["to_jsonable"]
