"""Analysis of model weights: per-tensor, per-layer-group and total statistics.

Reads ``*.safetensors`` files slice by slice and ``pytorch_model*.bin`` / ``.pt`` files memory-mapped,
so no weight file is ever held in memory whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from weightslab.analysis.models import LayerGroupInfo, TensorInfo, WeightsAnalysis
from weightslab.analysis.stats import DEFAULT_CHUNK_ELEMENTS, RunningStats, dtype_name
from weightslab.errors import CheckpointFormatError, CheckpointNotFoundError
from weightslab.format.stepfile import load_torch_file

_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip
_WEIGHT_FILE_RE = re.compile(r"(^|/)(.*\.safetensors|pytorch_model.*\.bin)$")


def is_weight_file(path: str) -> bool:
    """Whether a repository path is a weight file read here (``*.safetensors``, ``pytorch_model*.bin``)."""
    return _WEIGHT_FILE_RE.search(path) is not None


def select_weight_files(paths: Iterable[str]) -> list[str]:
    """The weight files among ``paths``: all ``*.safetensors`` when there is one, else ``pytorch_model*.bin``.

    Repositories often ship both formats of the same weights; counting both would double the totals.
    """
    candidates = sorted(p for p in paths if is_weight_file(p))
    safetensors = [p for p in candidates if p.endswith(".safetensors")]
    return safetensors or candidates


def layer_group(name: str) -> str:
    """The layer a parameter belongs to: up to its first numeric component, else its module.

    ``model.layers.3.mlp.up_proj.weight`` -> ``model.layers.3``; ``lm_head.weight`` -> ``lm_head``.
    """
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or name


def analyze_weight_files(
    paths: Sequence[str | Path], *, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> WeightsAnalysis:
    """Analyse the tensors of one or more weight files (the shards of one checkpoint) together.

    Raises:
        CheckpointNotFoundError: a path is not a file.
        CheckpointFormatError: a file cannot be read safely or does not hold a mapping of tensors.
    """
    files = [Path(p) for p in paths]
    for f in files:
        if not f.is_file():
            raise CheckpointNotFoundError(f"weight file {f} does not exist or is not a file; check the path")
    tensors = _iter_file_tensors(files, chunk_elements=chunk_elements)
    return _analyze(
        tensors, files=tuple(str(f) for f in files), file_bytes=sum(f.stat().st_size for f in files)
    )


def analyze_state_dict(
    state: Mapping[str, Any],
    *,
    files: Sequence[str] = (),
    file_bytes: int = 0,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> WeightsAnalysis:
    """Analyse a state dict already loaded (memory-mapped); entries that are not tensors are skipped."""

    def items() -> Iterator[tuple[str, tuple[int, ...], str, RunningStats]]:
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                acc = RunningStats()
                acc.update(value, chunk_elements=chunk_elements)
                yield str(name), tuple(value.shape), dtype_name(value.dtype), acc

    return _analyze(items(), files=tuple(files), file_bytes=file_bytes)


def _iter_file_tensors(
    files: Sequence[Path], *, chunk_elements: int
) -> Iterator[tuple[str, tuple[int, ...], str, RunningStats]]:
    for f in files:
        if f.suffix == ".safetensors":
            yield from _iter_safetensors(f, chunk_elements=chunk_elements)
            continue
        state = load_torch_file(f, what="weight file")
        if not isinstance(state, Mapping):
            raise CheckpointFormatError(
                f"weight file {f} holds a {type(state).__name__}, expected a state dict (names -> tensors)"
            )
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                acc = RunningStats()
                acc.update(value, chunk_elements=chunk_elements)
                yield str(name), tuple(value.shape), dtype_name(value.dtype), acc


def _iter_safetensors(
    path: Path, *, chunk_elements: int
) -> Iterator[tuple[str, tuple[int, ...], str, RunningStats]]:
    try:
        handle = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as exc:
        raise CheckpointFormatError(
            f"weight file {path} is not a valid safetensors file ({exc}); download it again"
        ) from exc
    with handle as f:
        for name in f.keys():  # noqa: SIM118  (safe_open handles are not iterable)
            sl = f.get_slice(name)
            shape = tuple(int(d) for d in sl.get_shape())
            dtype = _SAFETENSORS_DTYPES.get(sl.get_dtype(), sl.get_dtype().lower())
            acc = RunningStats()
            if len(shape) == 0 or shape[0] == 0:
                acc.update(f.get_tensor(name), chunk_elements=chunk_elements)
            else:
                row = max(1, _prod(shape[1:]))
                rows = max(1, chunk_elements // row)
                for start in range(0, shape[0], rows):
                    acc.update(sl[start : start + rows], chunk_elements=chunk_elements)
            yield name, shape, dtype, acc


def _analyze(
    tensors: Iterable[tuple[str, tuple[int, ...], str, RunningStats]],
    *,
    files: tuple[str, ...],
    file_bytes: int,
) -> WeightsAnalysis:
    infos: list[TensorInfo] = []
    groups: dict[str, RunningStats] = {}
    group_counts: dict[str, int] = {}
    total = RunningStats()
    for name, shape, dtype, acc in tensors:
        infos.append(TensorInfo(name=name, shape=shape, dtype=dtype, stats=acc.result()))
        group = layer_group(name)
        groups.setdefault(group, RunningStats()).merge(acc)
        group_counts[group] = group_counts.get(group, 0) + 1
        total.merge(acc)
    return WeightsAnalysis(
        available=True,
        files=files,
        file_bytes=file_bytes,
        total_parameters=sum(t.stats.numel for t in infos),
        num_tensors=len(infos),
        stats=total.result(),
        tensors=tuple(infos),
        layer_groups=tuple(
            LayerGroupInfo(name=g, num_tensors=group_counts[g], stats=acc.result())
            for g, acc in groups.items()
        ),
    )


def _prod(values: Iterable[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out
