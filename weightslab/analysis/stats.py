"""Streaming, mergeable tensor statistics.

Statistics are accumulated chunk by chunk in float64, so a tensor of any size (memory-mapped from a
multi-GB file) is read a few megabytes at a time and never copied whole, and the statistics of many
tensors are merged without concatenating them.
"""

from __future__ import annotations

import math

import torch

from weightslab.analysis.models import TensorStatistics

DEFAULT_CHUNK_ELEMENTS = 1 << 22
"""Elements converted to float64 at a time (32 MiB)."""


class RunningStats:
    """Count, sum, sum of squares, min and max of the finite elements seen so far, plus a non-finite count."""

    __slots__ = ("count", "maximum", "minimum", "nonfinite", "total", "total_sq")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.nonfinite = 0

    def update(self, tensor: torch.Tensor, *, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> None:
        """Add every element of ``tensor`` (any dtype; a complex element counts as its two parts)."""
        if chunk_elements < 1:
            raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
        flat = tensor.detach()
        if flat.is_complex():
            flat = torch.view_as_real(flat)
        flat = flat.reshape(-1)
        for start in range(0, flat.numel(), chunk_elements):
            self._update_chunk(flat[start : start + chunk_elements].to(torch.float64))

    def _update_chunk(self, chunk: torch.Tensor) -> None:
        finite = torch.isfinite(chunk)
        n_finite = int(finite.sum())
        if n_finite < chunk.numel():
            self.nonfinite += chunk.numel() - n_finite
            chunk = chunk[finite]
        if n_finite == 0:
            return
        self.count += n_finite
        self.total += float(chunk.sum())
        self.total_sq += float(torch.dot(chunk, chunk))
        self.minimum = min(self.minimum, float(chunk.min()))
        self.maximum = max(self.maximum, float(chunk.max()))

    def merge(self, other: RunningStats) -> None:
        """Fold ``other`` into this accumulator (as if its elements had been added here)."""
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        self.nonfinite += other.nonfinite

    def result(self) -> TensorStatistics:
        """The statistics so far; ``std`` is the population standard deviation."""
        n = self.count
        if n == 0:
            return TensorStatistics(
                numel=self.nonfinite,
                norm=0.0,
                mean=None,
                std=None,
                min=None,
                max=None,
                num_nonfinite=self.nonfinite,
            )
        mean = self.total / n
        var = max(self.total_sq / n - mean * mean, 0.0)  # rounding can make it slightly negative
        return TensorStatistics(
            numel=n + self.nonfinite,
            norm=math.sqrt(self.total_sq),
            mean=mean,
            std=math.sqrt(var),
            min=self.minimum,
            max=self.maximum,
            num_nonfinite=self.nonfinite,
        )


def tensor_statistics(
    tensor: torch.Tensor, *, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> TensorStatistics:
    """The statistics of one tensor."""
    acc = RunningStats()
    acc.update(tensor, chunk_elements=chunk_elements)
    return acc.result()


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")
