"""Durable save: time from the save call to an fsync'd, committed checkpoint, against the fastest peers.

    python benchmarks/bench_throughput.py [--layers 10 --width 3072 --repeats 5 --dir ./.bench_tmp]

weightslab runs as the README drives it: ``wl.register_model``/``register_optimizer``,
``get_checkpoint_system(..., async_save=False)`` (and ``True``), the module function
``checkpoint_on_step(step)`` on a save step, then ``flush()``: snapshot (async), serialise, xxh3-128,
fsync, rename, folder fsync, manifest commit, journal. A process holds one system at a time, so
each round opens the system of each mode, times one save and closes it; the async system first
saves once untimed (a fresh one allocates its staging buffers then), and so does the very first
system (it creates the experiment).

Peers, interleaved in every round, each writing a new file of the same state: ``torch.save`` +
fsync, ``safetensors.torch.save_file`` + fsync (the model and the optimizer's tensors, flattened),
``dcp.save`` (mode: sync, one process, no process group; it fsyncs its files), and the disk's floor:
the same number of raw bytes from a preallocated buffer in 64 MB ``write()``s + fsync.
A first round of every peer is reported apart; the order of the peers rotates from round to round,
and each ratio is the median of the per-round ratios, with their range.
weightslab asks the kernel to start writing back every 32 MB as it goes (``sync_file_range``); the
raw floor with the same request is a row too, so that the table shows what that alone is worth.
Before each timed peer ``os.sync()`` runs (untimed), so that no fsync waits for the writeback of
what the peer before it left dirty. Every peer keeps its last file until its next one is durable,
as weightslab's ``keep_last=1`` and Lightning's ``ModelCheckpoint(save_top_k=1)`` do: on a
thin-provisioned virtual disk a write into blocks never written before runs several times slower
than one into blocks freed by a deleted file, so peers that deleted their file before the next
round would be measured on a different disk.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

import weightslab as wl
from weightslab.components import checkpoint_on_step, get_checkpoint_system
from weightslab.storage.local import fsync
from weightslab.storage.writeback import start_writeback

from _common import build_state, machine, median, parse_args, print_table, scratch, state_bytes, timed

warnings.filterwarnings("ignore")

WL_SYNC, WL_ASYNC = "weightslab, async_save=False", "weightslab, async_save=True (call + flush)"
ST, TS, DCP = "safetensors.save_file + fsync", "torch.save + fsync", "dcp.save (sync, 1 process)"
RAW = "raw: 64 MB writes + fsync (the floor)"
RAW_WB = "raw: 64 MB writes + writeback every 32 MB + fsync"


def flat_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """What safetensors can hold: every tensor of the model and of the optimizer state, by name."""
    out = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    for i, state in enumerate(opt.state_dict()["state"].values()):
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                out[f"optim.{i}.{k}"] = v.contiguous()
    return out


def raw_write(path: Path, buffer: bytearray, chunk: int, writeback: bool) -> None:
    view = memoryview(buffer)
    with open(path, "wb", buffering=0) as f:
        started = 0
        for start in range(0, len(view), chunk):
            f.write(view[start : start + chunk])
            end = start + len(view[start : start + chunk])
            if writeback and end - started >= 32 << 20:
                start_writeback(f.fileno(), started, end - started)
                started = end
        os.fsync(f.fileno())


def settled(fn: Callable[[], object]) -> float:
    """``timed(fn)`` after ``os.sync()`` (untimed): no peer's fsync waits for the writeback of what
    the peer before it left dirty (the first weightslab save, the previous peer's file)."""
    os.sync()
    return timed(fn)


def spread(xs: list[float]) -> float:
    """(max - min) / median of one series: the run-to-run spread."""
    return (max(xs) - min(xs)) / median(xs)


def ratio_cell(ours: list[float], theirs: list[float]) -> str:
    """Speed of ``ours`` relative to ``theirs`` (higher is faster): the median of the per-round
    ratios [their range]; marked noise when that range includes 1.0. Each round's peers ran
    back to back, so a round's ratio compares saves that saw the same disk and load."""
    ratios = [t / o for o, t in zip(ours, theirs, strict=True)]
    lo, hi = min(ratios), max(ratios)
    noise = " (noise)" if lo <= 1.0 <= hi and ours is not theirs else ""
    return f"{median(ratios):.2f}x [{lo:.2f}-{hi:.2f}]{noise}"


def main() -> None:
    args = parse_args(__doc__ or "")
    model, opt = build_state(args.layers, args.width)
    nbytes = state_bytes(model, opt)
    raw = bytearray(os.urandom(1 << 20)) * max(1, nbytes >> 20)
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    flat = flat_tensors(model, opt)
    times: dict[str, list[float]] = {k: [] for k in (WL_SYNC, WL_ASYNC, ST, TS, DCP, RAW, RAW_WB)}
    first: dict[str, float] = {}
    load_before = os.getloadavg()
    with scratch(args.dir) as d:
        step = 0

        def weightslab_save(mode: str) -> float:
            nonlocal step
            wl.register_model("model", model)
            wl.register_optimizer("optimizer", opt)
            wl.register_hyperparams("config", {"lr": 1e-4})
            system = get_checkpoint_system(
                root_log_dir=d / mode,
                checkpoint_frequency=1,
                keep_last=1,
                async_save=mode == "async",
                save_last=False,
            )
            if mode == "async" or step == 0:
                # untimed: a fresh async system allocates its staging buffers at its first save, and
                # the very first save creates the experiment
                step += 1
                checkpoint_on_step(step)
                system.flush()
            step += 1
            current = step

            def save() -> None:
                checkpoint_on_step(current)
                system.flush()

            took = settled(save)
            system.close()
            wl.clear_ledger()
            return took

        def keeping_last(name: str, r: int, write: Callable[[Path], object]) -> float:
            # like keep_last=1 (and Lightning's ModelCheckpoint(save_top_k=1)): the new file is
            # written while the last one is still on disk, which is removed (untimed) once the new
            # one is durable, so every peer writes with the same space taken
            path, last = d / f"{name}.{r}", d / f"{name}.{r - 1}"
            took = settled(lambda: write(path))
            if last.is_dir():
                shutil.rmtree(last)
            elif last.exists():
                last.unlink()
            return took

        def one_file(name: str, r: int, write: Callable[[Path], object]) -> float:
            def run(path: Path) -> None:
                write(path)
                fsync(path)

            return keeping_last(name, r, run)

        peers: list[tuple[str, Callable[[int], float]]] = [
            (WL_SYNC, lambda r: weightslab_save("sync")),
            (WL_ASYNC, lambda r: weightslab_save("async")),
            (ST, lambda r: one_file("st.safetensors", r, lambda p: save_file(flat, str(p)))),
            (TS, lambda r: one_file("plain.pt", r, lambda p: torch.save(state, p))),
            (DCP, lambda r: keeping_last("dcp", r, lambda p: dcp.save(state, checkpoint_id=str(p)))),
            (RAW, lambda r: keeping_last("raw", r, lambda p: raw_write(p, raw, 64 << 20, False))),
            (RAW_WB, lambda r: keeping_last("raw_wb", r, lambda p: raw_write(p, raw, 64 << 20, True))),
        ]
        for r in range(args.repeats + 1):
            # round 0 is reported apart (the first write of each peer into this process's page
            # cache); the order rotates every round, so that no peer always runs first
            shift = r % len(peers)
            for name, save in peers[shift:] + peers[:shift]:
                took = save(r)
                (first.__setitem__(name, took) if r == 0 else times[name].append(took))
            print(
                f"round {r}: "
                + ", ".join(
                    f"{k.split(',')[0].split(' ')[0]} {(v[-1] if r else first[k]):.3f}"
                    for k, v in times.items()
                ),
                flush=True,
            )
    load_after = os.getloadavg()

    rows = [
        [
            k,
            f"{first[k]:.3f}",
            f"{median(v):.3f}",
            f"{spread(v) * 100:.0f}%",
            f"{nbytes / median(v) / 1e9:.2f}",
            ratio_cell(v, times[ST]),
            ratio_cell(v, times[RAW]),
            ratio_cell(v, times[RAW_WB]),
        ]
        for k, v in times.items()
    ]
    print(f"state {nbytes / 1e9:.2f} GB; {args.repeats} rounds after a first one; {machine()}")
    print(
        f"load average before {load_before[0]:.1f} / {load_before[1]:.1f} / {load_before[2]:.1f}, "
        f"after {load_after[0]:.1f} / {load_after[1]:.1f} / {load_after[2]:.1f} (1 / 5 / 15 min)"
    )
    print_table(
        "durable save (median seconds of the rounds after the first; ratios: speed relative to the "
        "column's peer, higher is faster, median of the per-round ratios [their range]; (noise): the "
        "range includes 1.0)",
        [
            "peer",
            "first round (s)",
            "median (s)",
            "spread",
            "GB/s",
            "vs safetensors+fsync",
            "vs raw floor",
            "vs raw + writeback",
        ],
        rows,
    )
    print("rounds (s):")
    for k, v in times.items():
        print(f"  {k}: " + ", ".join(f"{t:.3f}" for t in v))


if __name__ == "__main__":
    main()
