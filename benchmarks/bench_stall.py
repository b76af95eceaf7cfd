"""Stall: how long one save blocks the training thread, at 80 large tensors and at 4,000 small ones.

    python benchmarks/bench_stall.py [--layers 10 --width 3072 --small-layers 500 --small-width 128
                                      --repeats 5]

Two states, measured one after the other: ``--layers`` Linear(width, width) layers with AdamW state
(default 10 x 3072: 80 tensors, 1.13 GB) and ``--small-layers`` Linear(small_width, small_width)
layers (default 500 x 128: 4,000 tensors, 0.1 GB). For each, the peers run interleaved in every
round:

- weightslab as the README drives it: ``wl.register_*``, ``get_checkpoint_system(...)`` with default
  options (async_save, ``max_staging_bytes`` 2 GiB) and the module function ``checkpoint_on_step``;
- weightslab with ``max_staging_bytes=None`` (its staging memory always kept; an isolated
  ``AutomaticCheckpointSystem`` on its own ledger, the same model and optimizer) - for a state over
  the bound this is the fast path the default gives up to keep memory bounded;
- ``torch.distributed.checkpoint.async_save`` (default mode: a background thread, staging into CPU
  memory it allocates per save);
- plain ``torch.save`` (blocks for the whole write);
- the floor: a bare ``copy_`` of the same tensors into preallocated CPU tensors, one call per tensor
  (and, for reference, the same copies in one ``torch._foreach_copy_`` call).

The first save of each peer allocates its staging memory and is reported apart; the steady figure is
the median of the later rounds, with their maximum beside it (a pause of Python's garbage collector
lands in some peer's round: the medians hide it, the maximum shows it). Between saves each peer's background write finishes outside the
timed region, and ``os.sync()`` puts what it wrote on disk before the next peer is timed. Ratios to the floor are taken per round (the peers of one round saw the same load), and
a ratio whose spread over the rounds includes 1.0 is marked as noise.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

import weightslab as wl
from weightslab.components import AutomaticCheckpointSystem, checkpoint_on_step, get_checkpoint_system

from _common import (
    build_state,
    ledger_for,
    machine,
    median,
    print_table,
    scratch,
    state_bytes,
    state_tensors,
    timed,
)

warnings.filterwarnings("ignore")

FLOOR = "bare copy (copy_ per tensor)"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--width", type=int, default=3072)
    p.add_argument("--small-layers", type=int, default=500)
    p.add_argument("--small-width", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="rounds after the first (default 5)")
    p.add_argument("--dir", type=Path, default=None, help="scratch folder (default ./.bench_tmp)")
    return p.parse_args()


def run_case(layers: int, width: int, repeats: int, base: Path | None) -> tuple[str, list[list[str]]]:
    model, opt = build_state(layers, width)
    nbytes = state_bytes(model, opt)
    tensors = state_tensors(model, opt)
    with scratch(base) as d:
        wl.register_model("model", model)
        wl.register_optimizer("optimizer", opt)
        wl.register_hyperparams("config", {"lr": 1e-4})
        system = get_checkpoint_system(root_log_dir=d / "wl", checkpoint_frequency=1, keep_last=1)
        kept = AutomaticCheckpointSystem(
            root_log_dir=d / "kept",
            checkpoint_frequency=1,
            ledger=ledger_for(model, opt),
            keep_last=1,
            max_staging_bytes=None,
        )
        floor_bufs = [torch.empty_like(t) for t in tensors]
        state = {"model": model.state_dict(), "optim": opt.state_dict()}
        dcp_futures: list[object] = []

        def bare_copy() -> None:
            for b, t in zip(floor_bufs, tensors, strict=True):
                b.copy_(t)

        def dcp_save(r: int) -> None:
            dcp_futures.append(dcp.async_save(state, checkpoint_id=str(d / f"dcp{r}")))

        def plain_save(r: int) -> None:
            torch.save(state, d / f"plain{r}.pt")

        peers: dict[str, tuple[Callable[[int], object], Callable[[int], object]]] = {
            "weightslab (default, max_staging_bytes 2 GiB)": (checkpoint_on_step, lambda r: system.flush()),
            "weightslab (max_staging_bytes=None)": (kept.checkpoint_on_step, lambda r: kept.flush()),
            "dcp.async_save (thread mode)": (dcp_save, lambda r: dcp_futures.pop().result()),  # type: ignore[attr-defined]
            "torch.save": (plain_save, lambda r: (d / f"plain{r}.pt").unlink()),
            FLOOR: (lambda r: bare_copy(), lambda r: None),
            "bare copy (one _foreach_copy_)": (
                lambda r: torch._foreach_copy_(floor_bufs, tensors),
                lambda r: None,
            ),
        }
        times: dict[str, list[float]] = {k: [] for k in peers}
        first: dict[str, float] = {}
        load0 = os.getloadavg()[0]
        for r in range(repeats + 1):
            for name, (save, settle) in peers.items():
                t = timed(lambda save=save, r=r: save(r + 1))  # type: ignore[misc]
                settle(r + 1)
                # untimed: the files a peer wrote are on disk before the next peer is timed, so the
                # kernel's writeback of one peer's bytes does not run inside another's stall
                os.sync()
                (first.setdefault(name, t) if r == 0 else times[name].append(t))
        load1 = os.getloadavg()[0]
        kept_bytes = kept._buffers.kept_bytes, system._buffers.kept_bytes
        system.close()
        kept.close()
        wl.clear_ledger()

    floor = times[FLOOR]
    rows = []
    for name, ts in times.items():
        ratios = [t / f for t, f in zip(ts, floor, strict=True)]
        lo, hi = min(ratios), max(ratios)
        noise = " (noise)" if lo <= 1.0 <= hi and name != FLOOR else ""
        rows.append(
            [
                name,
                f"{first[name]:.3f}",
                f"{median(ts):.4f}",
                f"{max(ts):.4f}",
                f"{median(ts) / median(times['dcp.async_save (thread mode)']):.2f}x",
                f"{median(ratios):.2f}x [{lo:.2f}-{hi:.2f}]{noise}",
            ]
        )
    title = (
        f"{len(tensors)} tensors, {nbytes / 1e9:.3f} GB ({layers} x Linear({width}, {width}) + AdamW); "
        f"load average {load0:.2f} -> {load1:.2f}; staging kept after the run: "
        f"default {kept_bytes[1] / 1e9:.2f} GB, max_staging_bytes=None {kept_bytes[0] / 1e9:.2f} GB"
    )
    return title, rows


def main() -> None:
    args = parse()
    print(f"{args.repeats} rounds after a first one; {machine()}")
    for layers, width in ((args.layers, args.width), (args.small_layers, args.small_width)):
        title, rows = run_case(layers, width, args.repeats, args.dir)
        print_table(
            f"stall (s the training thread is blocked by one save), {title}",
            [
                "peer",
                "first save (s)",
                "steady median (s)",
                "steady max (s)",
                "vs dcp.async_save",
                "vs bare copy: median [min-max of rounds]",
            ],
            rows,
        )


if __name__ == "__main__":
    main()
