"""How far the weights of one checkpoint moved from another's, tensor by tensor and overall.

Measured per floating-point tensor present in both with the same shape, and overall (all of them as
one vector), in float64: ``l2 = ||a - b||``, ``relative = ||a - b|| / ||a||`` (a is the baseline;
None when ``||a|| = 0``), ``cosine = a.b / (||a|| ||b||)`` (None when a norm is 0) and
``max_abs = max |a - b|``. Tensors in one only, with other shapes, or not floating point (integer
buffers such as BatchNorm's ``num_batches_tracked``) are listed, not measured. Tensors are read a
slice at a time, so memory-mapped step files of any size are measured in bounded memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

_CHUNK = 1 << 22  # elements per float64 slice: the working memory stays at ~100 MB for any tensor


@dataclass(frozen=True)
class TensorDistance:
    """How far one tensor moved from the baseline (``relative``/``cosine`` None where undefined)."""

    model: str
    name: str
    shape: tuple[int, ...]
    l2: float
    relative: float | None
    cosine: float | None
    max_abs: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}


@dataclass
class WeightDistance:
    """The weight distance from the baseline to one checkpoint: per tensor, overall, and what was left out.

    ``only_in_a``/``only_in_b``: ``model.tensor`` names in one checkpoint only; ``shape_differs``:
    {name: "shape a -> shape b"}; ``not_floating``: names of non-floating-point tensors (not measured).
    """

    tensors: list[TensorDistance] = field(default_factory=list)
    l2: float = 0.0
    relative: float | None = None
    cosine: float | None = None
    max_abs: float = 0.0
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    shape_differs: dict[str, str] = field(default_factory=dict)
    not_floating: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """Every tensor in both, same shapes, and not one value differs."""
        return not self.only_in_a and not self.only_in_b and not self.shape_differs and self.max_abs == 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "l2": self.l2,
            "relative": self.relative,
            "cosine": self.cosine,
            "max_abs": self.max_abs,
            "identical": self.identical,
            "compared": len(self.tensors),
            "tensors": [t.to_dict() for t in self.tensors],
            "only_in_a": list(self.only_in_a),
            "only_in_b": list(self.only_in_b),
            "shape_differs": dict(self.shape_differs),
            "not_floating": list(self.not_floating),
        }


def weight_distance(a: Mapping[str, Any], b: Mapping[str, Any]) -> WeightDistance:
    """The distance between two ``{model: state_dict}`` trees (``a`` is the baseline)."""
    ta, tb = _named_tensors(a), _named_tensors(b)
    result = WeightDistance()
    result.only_in_a = [n for n in ta if n not in tb]
    result.only_in_b = [n for n in tb if n not in ta]
    sum_sq = sum_a = sum_b = dot = 0.0
    for qualified, x in ta.items():
        y = tb.get(qualified)
        if y is None:
            continue
        if x.shape != y.shape:
            result.shape_differs[qualified] = f"{_shape(x)} -> {_shape(y)}"
            continue
        if not (x.is_floating_point() and y.is_floating_point()):
            result.not_floating.append(qualified)
            continue
        d_sq, a_sq, b_sq, ab, max_abs = _moments(x, y)
        model, _, name = qualified.partition(".")
        result.tensors.append(
            TensorDistance(
                model=model,
                name=name,
                shape=tuple(x.shape),
                l2=math.sqrt(d_sq),
                relative=math.sqrt(d_sq) / math.sqrt(a_sq) if a_sq > 0 else None,
                cosine=_cosine(ab, a_sq, b_sq),
                max_abs=max_abs,
            )
        )
        sum_sq, sum_a, sum_b, dot = sum_sq + d_sq, sum_a + a_sq, sum_b + b_sq, dot + ab
        result.max_abs = max(result.max_abs, max_abs)
    result.l2 = math.sqrt(sum_sq)
    result.relative = result.l2 / math.sqrt(sum_a) if sum_a > 0 else None
    result.cosine = _cosine(dot, sum_a, sum_b)
    return result


def _named_tensors(models: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``{"model.layer.weight": tensor}`` over every model of a step dict."""
    out = {}
    for model, state in models.items():
        if isinstance(state, Mapping):
            for name, value in state.items():
                if isinstance(value, torch.Tensor):
                    out[f"{model}.{name}"] = value
    return out


def _moments(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float, float, float]:
    """(sum (x-y)^2, sum x^2, sum y^2, sum x*y, max |x-y|) in float64, a slice at a time."""
    fx, fy = x.detach().reshape(-1), y.detach().reshape(-1)
    d_sq = a_sq = b_sq = ab = max_abs = 0.0
    for start in range(0, fx.numel(), _CHUNK):
        sx = fx[start : start + _CHUNK].to(torch.float64)
        sy = fy[start : start + _CHUNK].to(torch.float64)
        diff = sx - sy
        d_sq += float(torch.dot(diff, diff))
        a_sq += float(torch.dot(sx, sx))
        b_sq += float(torch.dot(sy, sy))
        ab += float(torch.dot(sx, sy))
        max_abs = max(max_abs, float(diff.abs().max()))
    return d_sq, a_sq, b_sq, ab, max_abs


def _cosine(dot: float, a_sq: float, b_sq: float) -> float | None:
    if a_sq <= 0 or b_sq <= 0:
        return None
    # rounding can carry an exact match a hair past 1
    return max(-1.0, min(1.0, dot / (math.sqrt(a_sq) * math.sqrt(b_sq))))


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


__all__ = ["TensorDistance", "WeightDistance", "weight_distance"]
