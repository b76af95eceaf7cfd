"""One part of an analysis (optimizer, config, weights) run so that its failure is data, not an abort."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)


class FailedPart(Protocol[_T_co]):
    """What a part is when it failed: ``OptimizerAnalysis(error=...)`` and the like."""

    def __call__(self, *, error: str) -> _T_co: ...


def analyze_part(errors: list[str], label: str, failed: FailedPart[_T], analyze: Callable[[], _T]) -> _T:
    """``analyze()``; when it raises, ``failed(error=...)`` and a line ``"<label>: <error>"`` in ``errors``.

    One failed part is recorded and the other parts of the checkpoint are still analysed.
    """
    try:
        return analyze()
    except Exception as exc:  # one failed part is recorded; the others are still analysed
        message = f"{type(exc).__name__}: {exc}"
        errors.append(f"{label}: {message}")
        return failed(error=message)


__all__ = ["FailedPart", "analyze_part"]
