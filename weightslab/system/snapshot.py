"""Consistent copies of training state, taken on the training thread into reusable CPU buffers.

A snapshot must not change after the call returns, whatever training does to its tensors, so every
tensor is copied. Buffers are allocated once per (path, shape, dtype) and reused while they match,
so steady-state saves allocate nothing; they are pinned when the source lives on a CUDA device so
that the device-to-host copy can run without blocking.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from weightslab.errors import CheckpointSaveError

Key = tuple[Any, ...]
# what torch.load(weights_only=True) reads back, besides tensors and containers
_LEAVES = (bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)
# torch leaves is_initialized unannotated; this is its signature
_cuda_is_initialized: Callable[[], bool] = torch.cuda.is_initialized


class SnapshotBuffers:
    """A pool of CPU tensors keyed by where their source sits in the state tree."""

    def __init__(self, *, copy_cpu: bool = True) -> None:
        # copy_cpu=False (synchronous saves) serialises live CPU tensors directly: training is
        # blocked until the write ends, so they cannot change under us.
        self.copy_cpu = copy_cpu
        self._buffers: dict[Key, torch.Tensor] = {}
        self._used: set[Key] = set()
        self.cuda_pending = False
        self.nbytes = 0

    def begin(self) -> None:
        self._used = set()
        self.cuda_pending = False
        self.nbytes = 0

    def end(self) -> torch.cuda.Event | None:
        """Drop buffers no longer used; return an event to wait on when device copies are in flight."""
        for key in [k for k in self._buffers if k not in self._used]:
            del self._buffers[key]
        if self.cuda_pending:
            # record_event() is Event() recorded on the current stream (torch leaves Event.__new__ unannotated)
            event: torch.cuda.Event = torch.cuda.current_stream().record_event()
            return event
        return None

    def tensor(self, key: Key, src: torch.Tensor) -> torch.Tensor:
        src = src.detach()
        self._used.add(key)
        if not self.copy_cpu and src.device.type == "cpu":
            self.nbytes += src.numel() * src.element_size()
            return src
        if src.layout is not torch.strided or src.is_quantized or src.device.type == "meta":
            out = src.clone().cpu() if src.device.type != "meta" else src
            self._buffers.pop(key, None)
            return out
        buf = self._buffers.get(key)
        if buf is None or buf.shape != src.shape or buf.dtype != src.dtype:
            pin = src.is_cuda and torch.cuda.is_available()
            buf = torch.empty(src.shape, dtype=src.dtype, device="cpu", pin_memory=pin)
            self._buffers[key] = buf
        if src.is_cuda:
            buf.copy_(src, non_blocking=True)
            self.cuda_pending = True
        else:
            buf.copy_(src)
        self.nbytes += buf.numel() * buf.element_size()
        return buf

    def tree(self, key: Key, obj: Any) -> Any:
        """Copy a state tree: tensors into buffers, containers rebuilt, immutable leaves shared.

        Raises CheckpointSaveError naming the path of a leaf that a weights_only load could not read.
        """
        if isinstance(obj, torch.Tensor):
            return self.tensor(key, obj)
        if isinstance(obj, Mapping):
            return {k: self.tree((*key, k), v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.tree((*key, i), v) for i, v in enumerate(obj)]
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return tuple(self.tree((*key, i), v) for i, v in enumerate(obj))
        if obj is None or isinstance(obj, _LEAVES):
            return obj
        where = ".".join(str(k) for k in key)
        raise CheckpointSaveError(
            f"state at {where} is a {type(obj).__name__}, which torch.load(weights_only=True) cannot read "
            "back; make that object's state_dict() return tensors, numbers, strings, lists and dicts"
        )


def capture_rng() -> dict[str, Any]:
    """The RNG states of torch (CPU and CUDA), numpy and random, in weights_only-loadable form."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and _cuda_is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng`; missing parts are left as they are."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state(
            {
                "bit_generator": s["bit_generator"],
                "state": {"key": s["key"].numpy().astype(np.uint32), "pos": int(s["pos"])},
                "has_gauss": int(s["has_gauss"]),
                "gauss": float(s["gauss"]),
            }
        )
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value
