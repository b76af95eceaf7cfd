"""Streaming statistics equal the statistics computed on the whole tensor at once."""

from __future__ import annotations

import math

import pytest
import torch

from weightslab.analysis.stats import RunningStats, tensor_statistics


def _direct(t: torch.Tensor) -> tuple[float, float, float, float, float]:
    d = t.double().reshape(-1)
    return float(d.norm()), float(d.mean()), float(d.std(unbiased=False)), float(d.min()), float(d.max())


@pytest.mark.parametrize("chunk", [1, 7, 1000, 1 << 22])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_chunked_statistics_match_whole_tensor(chunk: int, dtype: torch.dtype) -> None:
    t = (torch.randn(37, 11, generator=torch.Generator().manual_seed(0)) * 3 + 1).to(dtype)
    s = tensor_statistics(t, chunk_elements=chunk)
    norm, mean, std, lo, hi = _direct(t)
    assert s.numel == t.numel() and s.num_nonfinite == 0
    assert s.norm == pytest.approx(norm, rel=1e-9)
    assert s.mean == pytest.approx(mean, rel=1e-9)
    assert s.std == pytest.approx(std, rel=1e-9)
    assert (s.min, s.max) == (lo, hi)


def test_merging_equals_one_pass_over_the_concatenation() -> None:
    parts = [torch.randn(n, generator=torch.Generator().manual_seed(n)) for n in (5, 17, 64)]
    merged = RunningStats()
    for p in parts:
        acc = RunningStats()
        acc.update(p, chunk_elements=4)
        merged.merge(acc)
    whole = tensor_statistics(torch.cat(parts))
    assert merged.result().norm == pytest.approx(whole.norm, rel=1e-12)
    assert merged.result().mean == pytest.approx(whole.mean, rel=1e-12)
    assert merged.result().std == pytest.approx(whole.std, rel=1e-12)
    assert merged.result().numel == whole.numel == 86


def test_non_finite_elements_are_counted_and_left_out() -> None:
    t = torch.tensor([1.0, float("nan"), 3.0, float("inf"), -float("inf")])
    s = tensor_statistics(t, chunk_elements=2)
    assert s.numel == 5 and s.num_nonfinite == 3
    assert s.mean == 2.0 and s.min == 1.0 and s.max == 3.0
    assert s.norm == pytest.approx(math.sqrt(10))


def test_empty_and_all_nan_tensors_have_no_mean() -> None:
    assert tensor_statistics(torch.empty(0)).mean is None
    s = tensor_statistics(torch.full((3,), float("nan")))
    assert (s.numel, s.num_nonfinite, s.norm, s.mean, s.min) == (3, 3, 0.0, None, None)


def test_integer_bool_and_complex_tensors_are_read_as_numbers() -> None:
    assert tensor_statistics(torch.arange(5)).mean == 2.0
    assert tensor_statistics(torch.tensor([True, False, True, True])).mean == 0.75
    c = tensor_statistics(torch.tensor([3 + 4j], dtype=torch.complex64))
    assert (c.numel, c.norm) == (2, 5.0)


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk_elements must be >= 1, got 0"):
        RunningStats().update(torch.ones(3), chunk_elements=0)
