"""Garbage-collector pauses: the slowest saves of a run with thousands of tensors, with and without ``gc.freeze()``.

    python benchmarks/bench_gc_pause.py [--layers 500 --width 128 --saves 40]

The medians of ``bench_stall.py`` hide one cost: torch's import leaves a few hundred thousand objects
tracked by Python's cyclic garbage collector, and a generation-2 collection walks all of them. A
save of thousands of tensors allocates enough containers that one falls every few saves, on the
training thread inside a save or on the writer thread, which holds the GIL as long. This benchmark
drives the README's path (``wl.register_*``, ``get_checkpoint_system(...)`` with its defaults, the
module function ``checkpoint_on_step``) for ``--saves`` consecutive saves, each followed by
``flush()`` (untimed, so every save starts from the same point), and reports the median, the 95th
percentile and the maximum of the calls, with the generation-2 collections seen (``gc.callbacks``:
how many, on which thread, how long). Then it calls ``gc.collect(); gc.freeze()`` and runs the same
saves again. Unlike the other benchmarks, nothing here calls ``gc.collect()`` before a timed call
(that would run the pending collection outside the timed region). The bare copy of the same tensors (``copy_`` per tensor into preallocated buffers) is
the floor, timed before each series. The frozen series runs second, in the same process.
"""

from __future__ import annotations

import argparse
import gc
import os
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import weightslab as wl
from weightslab.components import checkpoint_on_step, get_checkpoint_system

from _common import build_state, machine, median, print_table, scratch, state_tensors

warnings.filterwarnings("ignore")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--layers", type=int, default=500)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--saves", type=int, default=40)
    p.add_argument("--dir", type=Path, default=None, help="scratch folder (default ./.bench_tmp)")
    return p.parse_args()


class Collections:
    """The generation-2 collections of the process while it is on: (thread name, seconds)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []
        self._started: dict[int, float] = {}

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        ident = threading.get_ident()
        if phase == "start":
            self._started[ident] = time.perf_counter()
        elif ident in self._started:
            self.seen.append(
                (threading.current_thread().name, time.perf_counter() - self._started.pop(ident))
            )


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes, as the training loop sees it: no ``gc.collect()`` before it (the
    other benchmarks collect first, which keeps these pauses out of their figures)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def percentile(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def series(
    system: Any, first_step: int, saves: int, floor: list[torch.Tensor], tensors: list[torch.Tensor]
) -> list[str]:
    def bare_copy() -> None:
        for b, t in zip(floor, tensors, strict=True):
            b.copy_(t)

    copy = median([timed(bare_copy) for _ in range(5)])
    watch = Collections()
    gc.callbacks.append(watch)
    try:
        calls = []
        for step in range(first_step, first_step + saves):
            calls.append(timed(lambda step=step: checkpoint_on_step(step)))  # type: ignore[misc]
            system.flush()
    finally:
        gc.callbacks.remove(watch)
    threads = sorted({name for name, _ in watch.seen})
    return [
        f"{median(calls) * 1e3:.1f}",
        f"{percentile(calls, 0.95) * 1e3:.1f}",
        f"{max(calls) * 1e3:.1f}",
        f"{copy * 1e3:.1f}",
        f"{len(watch.seen)}",
        f"{median([s for _, s in watch.seen]) * 1e3:.1f}" if watch.seen else "-",
        ", ".join(threads) or "-",
    ]


def main() -> None:
    args = parse()
    model, opt = build_state(args.layers, args.width)
    tensors = state_tensors(model, opt)
    floor = [torch.empty_like(t) for t in tensors]
    load0 = os.getloadavg()[0]
    with scratch(args.dir) as d:
        wl.register_model("model", model)
        wl.register_optimizer("optimizer", opt)
        wl.register_hyperparams("config", {"lr": 1e-4})
        system = get_checkpoint_system(root_log_dir=d / "wl", checkpoint_frequency=1, keep_last=1)
        for step in range(1, 4):  # untimed: the experiment, the staging arena, the steady state
            checkpoint_on_step(step)
            system.flush()
        tracked = len(gc.get_objects())
        plain = series(system, 4, args.saves, floor, tensors)
        gc.collect()
        gc.freeze()
        frozen = series(system, 4 + args.saves, args.saves, floor, tensors)
        system.close()
        wl.clear_ledger()
    load1 = os.getloadavg()[0]
    print(f"{args.saves} saves per series; {machine()}")
    print_table(
        f"one save's call (ms), {len(tensors)} tensors ({args.layers} x Linear({args.width}, {args.width}) + "
        f"AdamW), async_save default; {tracked:,} objects tracked by the collector before the first "
        f"series; load average {load0:.2f} -> {load1:.2f}",
        ["series", "median", "p95", "max", "bare copy", "gen-2 collections", "their median (ms)", "on"],
        [["as is", *plain], ["after gc.freeze()", *frozen]],
    )


if __name__ == "__main__":
    main()
