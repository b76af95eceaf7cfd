"""Checks of what the training loop passes in: steps and metrics."""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Iterable, Mapping
from typing import Any

import torch

log = logging.getLogger("weightslab")


def check_step(step: Any) -> int:
    if isinstance(step, bool):
        raise TypeError(f"step must be an int, got {step!r}")
    try:
        value = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an int, got {step!r} ({type(step).__name__})") from None
    if value < 0:
        raise ValueError(f"step must be >= 0, got {value}")
    return value


def check_notes(tags: Iterable[str] | None, description: str | None) -> tuple[tuple[str, ...], str]:
    """Validated tags (non-empty one-line strings of at most 64 characters) and description."""
    if isinstance(tags, str):
        raise TypeError(f"tags must be a list of strings, got the string {tags!r}; pass [{tags!r}]")
    out = []
    for tag in tags or ():
        if not isinstance(tag, str) or not tag or len(tag) > 64 or "\n" in tag:
            raise ValueError(f"each tag must be a one-line string of 1 to 64 characters, got {tag!r}")
        out.append(tag)
    if description is not None and not isinstance(description, str):
        raise TypeError(f"description must be a string, got {type(description).__name__}")
    return tuple(dict.fromkeys(out)), description or ""


def clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | None]:
    if not metrics:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping of names to numbers, got {type(metrics).__name__}")
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"metric names must be non-empty strings, got {key!r}")
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"metric {key!r} is a tensor of shape {tuple(value.shape)}; pass a scalar")
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"metric {key!r} = {value!r} is not a number") from None
            except OverflowError:
                raise ValueError(
                    f"metric {key!r} does not fit a float; log it scaled down or as a log"
                ) from None
        try:
            value = float(value)
        except OverflowError:
            raise ValueError(
                f"metric {key!r} (an int of {len(str(abs(value)))} digits) does not fit a float (over "
                "1.8e308); log it scaled down or as a logarithm"
            ) from None
        if not math.isfinite(value):
            log.warning("weightslab: metric %r is %s; recorded as null and ignored by keep_best", key, value)
            out[key] = None
        else:
            out[key] = value
    return out
