"""How far the weights of one checkpoint moved from another's, tensor by tensor and overall.

Measured per floating-point tensor present in both with the same shape, and overall (all of them as
one vector), in float64: ``l2 = ||a - b||``, ``relative = ||a - b|| / ||a||`` (a is the baseline;
None when ``||a|| = 0``), ``cosine = a.b / (||a|| ||b||)`` (None when a norm is 0) and
``max_abs = max |a - b|``. A NaN or infinite value is carried through, never hidden: a NaN in a
difference makes that tensor's and the overall ``max_abs``, ``l2``, ``relative`` and ``cosine`` NaN,
and the tensor is listed in ``non_finite``. Tensors that are not floating point (integer buffers such
as BatchNorm's ``num_batches_tracked``) have no distance: they are compared for equality and the ones
whose values changed are listed. Tensors in one only or with other shapes are listed, not measured.
Tensors are read a slice at a time, so memory-mapped step files of any size are measured in bounded
memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

_CHUNK = 1 << 22  # elements per float64 slice: the working memory stays at ~100 MB for any tensor
_NAN = float("nan")


@dataclass(frozen=True)
class TensorDistance:
    """How far one tensor moved from the baseline (``relative``/``cosine`` None where undefined).

    ``finite``: False when either tensor holds a NaN or an infinity; its numbers are then NaN or inf.
    """

    model: str
    name: str
    shape: tuple[int, ...]
    l2: float
    relative: float | None
    cosine: float | None
    max_abs: float
    finite: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}


@dataclass
class WeightDistance:
    """The weight distance from the baseline to one checkpoint: per tensor, overall, and what was left out.

    ``only_in_a``/``only_in_b``: ``model.tensor`` names in one checkpoint only; ``shape_differs``:
    {name: "shape a -> shape b"}; ``not_floating``: names of the non-floating-point tensors (compared
    for equality, not measured), and ``not_floating_changed`` those of them whose values differ;
    ``non_finite``: names of the measured tensors holding a NaN or an infinity in either checkpoint.
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
    not_floating_changed: list[str] = field(default_factory=list)
    non_finite: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """Every tensor in both, same shapes, and not one value differs.

        A NaN equals nothing, itself included: a checkpoint holding one is identical to no other.
        """
        same_names = not self.only_in_a and not self.only_in_b and not self.shape_differs
        # l2 can round to 0 for differences below ~1e-154; max_abs cannot
        no_distance = self.l2 == 0.0 and self.max_abs == 0.0 and not self.non_finite
        return same_names and no_distance and not self.not_floating_changed

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
            "not_floating_changed": list(self.not_floating_changed),
            "non_finite": list(self.non_finite),
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
            if not torch.equal(x.detach(), y.detach()):  # values compared across dtypes, as floats are
                result.not_floating_changed.append(qualified)
            continue
        d_sq, a_sq, b_sq, ab, max_abs, finite = _moments(x, y)
        model, _, name = qualified.partition(".")
        result.tensors.append(
            TensorDistance(
                model=model,
                name=name,
                shape=tuple(x.shape),
                l2=math.sqrt(d_sq),
                relative=_relative(d_sq, a_sq),
                cosine=_cosine(ab, a_sq, b_sq),
                max_abs=max_abs,
                finite=finite,
            )
        )
        if not finite:
            result.non_finite.append(qualified)
        sum_sq, sum_a, sum_b, dot = sum_sq + d_sq, sum_a + a_sq, sum_b + b_sq, dot + ab
        result.max_abs = _max(result.max_abs, max_abs)
    result.l2 = math.sqrt(sum_sq)
    result.relative = _relative(sum_sq, sum_a)
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


def _moments(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float, float, float, bool]:
    """(sum (x-y)^2, sum x^2, sum y^2, sum x*y, max |x-y|, all values finite) in float64, a slice at a time."""
    fx, fy = x.detach().reshape(-1), y.detach().reshape(-1)
    d_sq = a_sq = b_sq = ab = max_abs = 0.0
    finite = True
    for start in range(0, fx.numel(), _CHUNK):
        sx = fx[start : start + _CHUNK].to(torch.float64)
        sy = fy[start : start + _CHUNK].to(torch.float64)
        diff = sx - sy
        d_sq += float(torch.dot(diff, diff))
        a_sq += float(torch.dot(sx, sx))
        b_sq += float(torch.dot(sy, sy))
        ab += float(torch.dot(sx, sy))
        max_abs = _max(max_abs, float(diff.abs().max()))  # torch's max is NaN when any value is
        finite = finite and bool(torch.isfinite(sx).all()) and bool(torch.isfinite(sy).all())
    return d_sq, a_sq, b_sq, ab, max_abs, finite


def _max(x: float, y: float) -> float:
    # Python's max(0.0, nan) is 0.0: a diverged tensor would read as unchanged
    return _NAN if math.isnan(x) or math.isnan(y) else max(x, y)


def _relative(d_sq: float, a_sq: float) -> float | None:
    if math.isnan(d_sq) or math.isnan(a_sq):
        return _NAN
    return math.sqrt(d_sq) / math.sqrt(a_sq) if a_sq > 0 else None


def _cosine(dot: float, a_sq: float, b_sq: float) -> float | None:
    if not (math.isfinite(dot) and math.isfinite(a_sq) and math.isfinite(b_sq)):
        return _NAN  # min/max below would turn a NaN into 1.0
    if a_sq <= 0 or b_sq <= 0:
        return None
    # rounding can carry an exact match a hair past 1
    return max(-1.0, min(1.0, dot / (math.sqrt(a_sq) * math.sqrt(b_sq))))


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


__all__ = ["TensorDistance", "WeightDistance", "weight_distance"]
