"""Consistent copies of training state, taken on the training thread into reusable CPU staging memory.

A snapshot must not change after the call returns, whatever training does to its tensors, so every
tensor is copied. All tensors of a snapshot are staged in one flat allocation (a
:class:`~weightslab.system.staging.StagingArena`) and copied in one batched call, so that a state of
thousands of small tensors costs about what its bytes cost. The arena is kept and reused while the
state keeps its layout and fits ``max_staging_bytes``; a larger state is staged into a fresh arena
that is freed once its write ends, so the process keeps nothing between saves. The arena is pinned
when a source lives on a CUDA device, so that the device-to-host copies can run without blocking.
"""

from __future__ import annotations

import os
import random
import threading
import weakref
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from functools import partial
from itertools import repeat
from operator import attrgetter, is_, is_not
from typing import Any, NoReturn, cast

import numpy as np
import torch

from weightslab.errors import CheckpointSaveError
from weightslab.system.staging import StagingArena

Key = tuple[Any, ...]
# what torch.load(weights_only=True) reads back, besides tensors and containers
_LEAVES = (bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)
_SCALARS = (int, float, str, bool)  # leaves a list is copied with, without a look at each
_STRIDED = torch.strided
# what must stay the same for a source to take its slot again without a look at it one by one
_SIGNATURE = attrgetter("is_cpu", "layout", "dtype", "shape")
# torch leaves is_initialized unannotated; this is its signature
_cuda_is_initialized: Callable[[], bool] = torch.cuda.is_initialized
# one C++ loop over all pairs instead of a Python call per tensor; private, so guarded
_foreach_copy: Callable[..., None] | None = getattr(torch, "_foreach_copy_", None)
# the batched copy goes to the copier thread from this size on (below it, the hand-over costs more
# than the overlap saves)
_BACKGROUND_BYTES = 1 << 20
# CPU tensors copied in the batch: a Parameter (a model's state_dict(keep_vars=True)) is one too
_PLAIN = (torch.Tensor, torch.nn.Parameter)


class SnapshotBuffers:
    """Stages state trees into CPU memory: tensors copied into one flat arena, containers rebuilt.

    Args:
        copy_cpu: False (synchronous saves) passes live CPU tensors through uncopied: training is
            blocked until the write ends, so they cannot change under the writer.
        max_staging_bytes: the most staging memory kept between saves (None: no bound). A snapshot
            that needs more is staged into memory freed when the snapshot is dropped.
    """

    # the pass in progress
    _srcs: list[torch.Tensor]  # every source staged through the general pass, in slot order
    _batch_src: list[torch.Tensor]  # plain CPU tensors: one batched copy
    _batch_dst: list[torch.Tensor]
    _single: list[tuple[torch.Tensor, torch.Tensor, bool]]  # (dst, src, non_blocking): one by one

    def __init__(self, *, copy_cpu: bool = True, max_staging_bytes: int | None = 2 << 30) -> None:
        self.copy_cpu = copy_cpu
        self.max_staging_bytes = max_staging_bytes
        self._arena: StagingArena | None = None  # kept only while it fits the bound
        # the layout of the last snapshot: a transient arena for the next one is allocated from it
        self._specs: list[tuple[torch.Size, torch.dtype]] = []
        self._pinned = False
        # what the sources looked like when every one was a plain CPU tensor (else None): the fast
        # pass compares against it
        self._types: list[type] = []
        self._signature: list[tuple[Any, ...]] | None = None
        self.staged_bytes = 0
        """Bytes of staging memory the last snapshot used."""
        self._copier: ThreadPoolExecutor | None = None  # started by the first background copy
        self._pid = os.getpid()  # the process the copier thread runs in (a forked child has none)
        self._inflight: Future[None] | None = None  # a background copy not finished yet
        # weak references to the sources of the last background copy that may be copied ahead (those
        # of its leading ahead_keys), when it filled the kept arena in one batch: copy_ahead()
        # copies them again before the next state is even read
        self._last: list[weakref.ref[torch.Tensor]] | None = None
        self._marks: dict[str, int] = {}  # the pass in progress: batched sources after each top-level key
        self._ahead: tuple[list[torch.Tensor], Future[None]] | None = None
        self.copied_ahead = 0
        """Snapshots whose copy was started by :meth:`copy_ahead` (the steady state of saves)."""
        self._reset(None)

    @property
    def kept_bytes(self) -> int:
        """Staging memory held between saves (0 when the last snapshot exceeded the bound)."""
        return self._arena.nbytes if self._arena is not None else 0

    def stage(self, state: Mapping[str, Any]) -> tuple[dict[str, Any], torch.cuda.Event | None]:
        """Copy ``state``, a mapping of state trees; return the copy and the CUDA event to wait on.

        The event (None when no device copy is in flight) must be synchronised before the copy's bytes
        are read. Raises CheckpointSaveError naming the path of a leaf that a weights_only load could
        not read back.
        """
        return self.begin(state).finish()

    def copy_ahead(self) -> bool:
        """Start copying the last background snapshot's leading sources into the kept arena, on the copier.

        For the steady state, where a save stages the same tensor objects as the save before (a
        model's parameters and buffers, an optimizer's state): the copy then runs while the caller
        reads the state trees. Only the tensors under the ``ahead_keys`` given to the last
        :meth:`begin` are copied ahead, so the caller must give there only state whose
        ``state_dict()`` does not write into the tensors it returns. The next :meth:`begin` takes the
        copy when the state it is given holds exactly those objects first, in that order and layout,
        and waits for it and copies anew otherwise; :meth:`cancel_ahead` drops it when no ``begin``
        follows. Call it only when nothing reads the arena any more. False when there is nothing to
        copy ahead.
        """
        arena, last = self._arena, self._last
        if arena is None or not last or self._signature is None or self._ahead is not None:
            return False
        self._finish_inflight()
        alive = [ref() for ref in last]
        if not all(map(is_not, alive, repeat(None))):
            self._last = None  # a source is gone: the state changed
            return False
        srcs = cast("list[torch.Tensor]", alive)
        self._ahead = (srcs, self._start(arena.tensors[: len(srcs)], srcs))
        return True

    def cancel_ahead(self) -> None:
        """Wait for, and forget, a copy made ahead that no :meth:`begin` took."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            _wait(ahead[1])

    def begin(
        self, state: Mapping[str, Any], *, background: bool = False, ahead_keys: Collection[str] = ()
    ) -> StagedCopy:
        """Start copying ``state``; :meth:`StagedCopy.finish` returns what :meth:`stage` returns.

        ``background`` runs the batched copy of plain CPU tensors on the copier thread (torch
        releases the GIL while it copies), so that the caller's own work overlaps it, and takes a
        copy started by :meth:`copy_ahead` when it copied exactly these sources. ``ahead_keys``: the
        leading keys of ``state`` whose tensors the next save may copy ahead. The sources must not
        change before ``finish`` returns. The next ``begin`` finishes this copy first.
        """
        ahead, self._ahead = self._ahead, None
        try:
            return self._begin(state, background, ahead_keys, ahead)
        except BaseException:
            if ahead is not None:  # no copy may run on once this snapshot is given up
                _wait(ahead[1])
            self._finish_inflight()
            raise

    def _begin(
        self,
        state: Mapping[str, Any],
        background: bool,
        ahead_keys: Collection[str],
        ahead: tuple[list[torch.Tensor], Future[None]] | None,
    ) -> StagedCopy:
        self._finish_inflight()
        arena = self._arena
        if arena is None and self._specs:
            arena = StagingArena(self._specs, pinned=self._pinned)  # transient: the last layout
        out: dict[str, Any] | None = None
        if arena is not None and self._signature is not None:
            out = self._fast_pass(state, arena)
        lead = _lead(state, ahead_keys, self._marks) if out is not None else 0
        if ahead is not None and (
            out is None
            or arena is not self._arena
            or len(ahead[0]) > lead  # now they may not be copied ahead
            or not all(map(is_, ahead[0], self._batch_src))
        ):
            _wait(ahead[1])  # other sources: its slots are copied again (or the arena goes)
            ahead = None
        if out is None:
            # hand the arena over, so that the general pass can release it before allocating anew
            self._arena, arena = arena, None
            out, arena = self._general_pass(state)
            lead = _lead(state, ahead_keys, self._marks)  # the marks of the new layout
        assert out is not None
        event = self._copy_singles()
        dst, src = self._batch_dst, self._batch_src
        self.staged_bytes = arena.nbytes if arena is not None else 0
        bound = self.max_staging_bytes
        self._arena = arena if bound is None or self.staged_bytes <= bound else None
        whole = self._arena is not None and self._signature is not None
        self._reset(None)  # the snapshot alone keeps the slots alive from here on
        job: Future[None] | None = None
        if ahead is not None:
            job = self._inflight = ahead[1]  # the copy of exactly these sources into these slots
            done = len(ahead[0])
            _copy_batch(dst[done:], src[done:])  # the rest (beside the copier), read after their state_dict
            self.copied_ahead += 1
            if lead != done:
                self._last = list(map(weakref.ref, src[:lead]))
        elif background and dst and self.staged_bytes >= _BACKGROUND_BYTES:
            job = self._inflight = self._start(dst, src)
            self._last = list(map(weakref.ref, src[:lead])) if whole else None
        else:
            _copy_batch(dst, src)
        return StagedCopy(out, event, job)

    def close(self) -> None:
        """Finish a copy in flight and stop the copier thread. The buffers stay usable."""
        self.cancel_ahead()
        self._finish_inflight()
        copier, self._copier = self._copier, None
        if copier is not None and self._pid == os.getpid():
            copier.shutdown(wait=True)

    def _finish_inflight(self) -> None:
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            _wait(inflight)  # its slots are about to be reused

    def _start(self, dst: list[torch.Tensor], src: list[torch.Tensor]) -> Future[None]:
        """Run the batched copy on the copier thread; return once it has begun.

        The copier needs the GIL until torch releases it inside the copy; waiting here for its
        start hands the GIL over at once, instead of after the interpreter's switch interval.
        """
        if self._pid != os.getpid():  # a forked child: the parent's copier thread is not here
            self._pid, self._copier = os.getpid(), None
        if self._copier is None:
            self._copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weightslab-stager")
        started = threading.Event()
        job = self._copier.submit(_copy_started, started, [dst, src])
        try:
            started.wait()
        except BaseException:  # interrupted: no copy may run on that nobody tracks
            _wait(job)
            raise
        return job

    def _fast_pass(self, state: Mapping[str, Any], arena: StagingArena) -> dict[str, Any] | None:
        """The steady state: every tensor a plain CPU tensor, in the layout of the arena.

        Tensors take the next slot without a look at them; one C-level comparison of all their
        signatures afterwards confirms the layout (None: it changed, take the general pass). Much
        cheaper per tensor than classifying each on its own.
        """
        srcs: list[torch.Tensor] = []
        add = srcs.append
        take = partial(next, iter(arena.tensors), None)
        tensor_type, leaves, scalars = torch.Tensor, _LEAVES, _SCALARS

        # no key paths here: a leaf this pass does not know sends the state to the general pass,
        # which names its path in the error
        def tree(obj: Any) -> Any:
            if isinstance(obj, tensor_type):
                add(obj)
                return take()
            if isinstance(obj, (dict, Mapping)):
                # `add(v) or take()`: record the source (add returns None), then hand out its slot
                return {
                    k: add(v) or take() if isinstance(v, tensor_type) else tree(v) for k, v in obj.items()
                }
            if isinstance(obj, list):
                if all(map(isinstance, obj, repeat(scalars))):  # an optimizer group's parameter ids
                    return obj.copy()
                return [tree(v) for v in obj]
            if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
                return tuple([tree(v) for v in obj])
            if obj is None or isinstance(obj, leaves):
                return obj
            raise _Unknown

        out: dict[str, Any] = {}
        marks: dict[str, int] = {}
        try:
            for k, v in state.items():
                out[k] = tree(v)
                marks[k] = len(srcs)
        except _Unknown:
            return None
        if (
            len(srcs) != len(arena)
            or list(map(type, srcs)) != self._types
            or list(map(_SIGNATURE, srcs)) != self._signature
        ):
            return None
        self._reset(None)
        self._batch_src = srcs
        self._batch_dst = arena.tensors
        self._marks = marks
        return out

    def _general_pass(self, state: Mapping[str, Any]) -> tuple[dict[str, Any], StagingArena | None]:
        """Classify every tensor on its own, with the slots of ``self._arena``; build a new arena
        when the layout changed. Returns the copy and the arena it uses."""
        arena = self._arena
        out: dict[str, Any] | None = self._pass(state, arena)
        if self._miss or self._n != (len(arena) if arena is not None else 0):
            # The layout changed (first save, new shapes, added or removed tensors). Release the old
            # arena before allocating the new one, so that the two never coexist; a pass without
            # slots collects the new layout.
            out = arena = self._arena = None
            self._pass(state, None)
            specs = [(t.shape, t.dtype) for t in self._srcs]
            pinned = self._wants_pin
            self._reset(None)
            arena = StagingArena(specs, pinned=pinned) if specs else None
            out = self._pass(state, arena)
            assert not self._miss
            self._specs, self._pinned = specs, pinned
        # the next snapshot may take the fast pass when every tensor went into the batched copy
        plain = not self._special and len(self._batch_src) == self._n
        self._types = list(map(type, self._batch_src)) if plain else []
        self._signature = list(map(_SIGNATURE, self._batch_src)) if plain else None
        assert out is not None
        return out, arena

    def _reset(self, arena: StagingArena | None) -> None:
        self._slots = arena.tensors if arena is not None else []
        self._shapes = arena.shapes if arena is not None else []
        self._dtypes = arena.dtypes if arena is not None else []
        self._nslots = len(self._slots)
        self._slots_pinned = arena is not None and arena.pinned
        self._n = 0
        self._miss = False
        self._special = False  # a tensor passed through or copied apart from the arena
        self._wants_pin = False
        self._srcs = []
        self._batch_src = []
        self._batch_dst = []
        self._single = []
        self._marks = {}

    def _pass(self, state: Mapping[str, Any], arena: StagingArena | None) -> dict[str, Any]:
        self._reset(arena)
        out: dict[str, Any] = {}
        for k, v in state.items():
            out[k] = self._tree((k,), v)
            self._marks[k] = len(self._batch_src)
        return out

    def _copy_singles(self) -> torch.cuda.Event | None:
        """The copies made one by one (device sources, other tensor types); the event to wait on."""
        pending = False
        with torch.no_grad():  # a source that requires grad must not make its copy part of a graph
            for dst, src, non_blocking in self._single:
                dst.copy_(src, non_blocking=non_blocking)
                pending = pending or non_blocking
        if pending:
            # record_event() is Event() recorded on the current stream (torch leaves Event.__new__ unannotated)
            event: torch.cuda.Event = torch.cuda.current_stream().record_event()
            return event
        return None

    def _tensor(self, src: torch.Tensor) -> torch.Tensor:
        if src.layout is not _STRIDED or src.is_quantized or src.is_meta:
            # rare layouts get a copy of their own (meta tensors hold no data to copy)
            self._special = True
            if src.is_meta:  # a Parameter (state_dict(keep_vars=True)) is saved as a plain tensor
                return src if type(src) is torch.Tensor else src.detach()
            return src.detach().clone().cpu()
        if src.is_cpu:
            if not self.copy_cpu:
                self._special = True
                return src.detach()
            batch, non_blocking = type(src) in _PLAIN, False
        else:
            # CUDA: into pinned memory without blocking; other devices: a plain synchronous copy
            batch, non_blocking = False, src.is_cuda
            self._wants_pin = self._wants_pin or non_blocking
        i = self._n
        self._n = i + 1
        self._srcs.append(src)
        if (
            i >= self._nslots
            or self._shapes[i] != src.shape
            or self._dtypes[i] != src.dtype
            or (non_blocking and not self._slots_pinned)
        ):
            self._miss = True  # this pass is redone with a new arena
            return src
        dst = self._slots[i]
        if batch:
            self._batch_src.append(src)
            self._batch_dst.append(dst)
        else:
            self._single.append((dst, src, non_blocking))
        return dst

    def _tree(self, key: Key, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return self._tensor(obj)
        if isinstance(obj, (dict, Mapping)):  # dict first: the ABC check is slow
            # tensors inline: most leaves of a state dict are tensors one level down
            tensor, tree = self._tensor, self._tree
            return {
                k: tensor(v) if isinstance(v, torch.Tensor) else tree((*key, k), v) for k, v in obj.items()
            }
        if isinstance(obj, list):
            return [self._tree((*key, i), v) for i, v in enumerate(obj)]
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return tuple(self._tree((*key, i), v) for i, v in enumerate(obj))
        if obj is None or isinstance(obj, _LEAVES):
            return obj
        _refuse(key, obj)


class _Unknown(Exception):
    """A leaf the fast pass does not handle."""


class StagedCopy:
    """A snapshot whose batched copy may still be running on the copier: :meth:`finish` waits for it."""

    def __init__(self, out: dict[str, Any], event: torch.cuda.Event | None, job: Future[None] | None) -> None:
        self._out = out
        self._event = event
        self._job = job

    def finish(self) -> tuple[dict[str, Any], torch.cuda.Event | None]:
        """The copy and the CUDA event to wait on (None when no device copy is in flight).

        Waits for the copier; re-raises an error of its copy. Idempotent."""
        job, self._job = self._job, None
        if job is not None:
            job.result()
        return self._out, self._event

    def drop(self) -> None:
        """Finish the copy of a snapshot nobody takes; an error of its copy has no taker then."""
        with suppress(Exception):
            self.finish()


def _lead(state: Mapping[str, Any], ahead_keys: Collection[str], marks: Mapping[str, int]) -> int:
    """How many of the pass's batched sources come from the leading ``ahead_keys`` of ``state``."""
    lead = 0
    for key in state:
        if key not in ahead_keys:
            break
        lead = marks.get(key, lead)
    return lead


def _wait(job: Future[None]) -> None:
    """Wait for a copy whose result nobody takes."""
    with suppress(Exception):
        job.result()


def _copy_batch(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    if not dst:
        return  # _foreach_copy_ refuses empty lists
    with torch.no_grad():  # a source that requires grad must not make its copy part of a graph
        if _foreach_copy is not None:
            _foreach_copy(dst, src)
        else:  # pragma: no cover - depends on the torch version
            for d, t in zip(dst, src, strict=True):
                d.copy_(t)


def _copy_started(started: threading.Event, box: list[list[torch.Tensor]]) -> None:
    """The copier's job: ``box`` holds the slots and the sources, and is emptied at once.

    Nothing of the job (its arguments, a failure's traceback) then refers to the slots once the
    copy ended, so an arena given up after the copy is freed before a new one is allocated, even
    while the executor still holds the finished work item.
    """
    dst, src = box
    box.clear()
    started.set()
    try:
        _copy_batch(dst, src)
    except BaseException as error:
        del dst, src
        raise error.with_traceback(None) from None


def _refuse(key: Key, obj: Any) -> NoReturn:
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
