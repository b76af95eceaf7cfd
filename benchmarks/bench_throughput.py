"""Throughput: time from the save call to a durable (fsync'd) checkpoint.

    python benchmarks/bench_throughput.py [--layers 10 --width 3072 --repeats 5]

Peers, interleaved in each round, each writing a new file: weightslab (async_save=False: snapshot,
serialise, xxh3, fsync, rename, folder fsync, manifest commit, journal), weightslab (async: call to
commit), torch.save + fsync, torch.distributed.checkpoint.save (fsyncs its files), and the disk's
limit: the same number of raw bytes written with one write() + fsync, and written in 64 MB write()s +
fsync (on the CI disk one giant write() is markedly slower; the faster of the two is the limit we
compare against).
"""

from __future__ import annotations

import os
import shutil
import warnings

import torch
import torch.distributed.checkpoint as dcp

from weightslab.components import AutomaticCheckpointSystem
from weightslab.storage.local import fsync

from _common import (
    build_state,
    ledger_for,
    machine,
    median,
    parse_args,
    print_table,
    scratch,
    state_bytes,
    timed,
)

warnings.filterwarnings("ignore")


def main() -> None:
    args = parse_args(__doc__ or "")
    model, opt = build_state(args.layers, args.width)
    nbytes = state_bytes(model, opt)
    raw = bytearray(os.urandom(1 << 20)) * (nbytes >> 20)
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    times: dict[str, list[float]] = {
        k: []
        for k in (
            "weightslab (sync)",
            "weightslab (async)",
            "torch.save + fsync",
            "dcp.save",
            "raw: one write + fsync",
            "raw: 64 MB writes + fsync",
        )
    }
    with scratch(args.dir) as d:
        systems = {}
        for mode in ("sync", "async"):
            ledger = ledger_for(model, opt)
            systems[mode] = AutomaticCheckpointSystem(
                root_log_dir=d / mode,
                checkpoint_frequency=1,
                keep_last=1,
                async_save=(mode == "async"),
                ledger=ledger,
            )
            systems[mode].checkpoint_on_step(1)  # open the experiment and warm the buffers
            systems[mode].flush()

        def wl(mode: str, step: int) -> None:
            systems[mode].checkpoint_on_step(step)
            systems[mode].flush()

        def plain(r: int) -> None:
            torch.save(state, d / f"plain{r}.pt")
            fsync(d / f"plain{r}.pt")

        def raw_write(r: int, chunk: int) -> None:
            view = memoryview(raw)
            with open(d / f"raw{r}", "wb", buffering=0) as f:
                for start in range(0, len(view), chunk):
                    f.write(view[start : start + chunk])
                os.fsync(f.fileno())
            (d / f"raw{r}").unlink()

        for r in range(args.repeats):
            step = r + 2
            times["weightslab (sync)"].append(timed(lambda: wl("sync", step)))
            times["weightslab (async)"].append(timed(lambda: wl("async", step)))
            times["torch.save + fsync"].append(timed(lambda: plain(r)))
            times["dcp.save"].append(timed(lambda: dcp.save(state, checkpoint_id=str(d / f"dcp{r}"))))
            times["raw: one write + fsync"].append(timed(lambda: raw_write(r, len(raw))))
            times["raw: 64 MB writes + fsync"].append(timed(lambda: raw_write(r, 64 << 20)))
            (d / f"plain{r}.pt").unlink()
            shutil.rmtree(d / f"dcp{r}")
        for s in systems.values():
            s.close()

    med = {k: median(v) for k, v in times.items()}
    limit = min(med["raw: one write + fsync"], med["raw: 64 MB writes + fsync"])
    rows = [
        [
            k,
            f"{med[k]:.3f}",
            f"{nbytes / med[k] / 1e9:.2f}",
            f"{med['torch.save + fsync'] / med[k]:.2f}x",
            f"{limit / med[k]:.2f}x",
        ]
        for k in times
    ]
    print(f"state {nbytes / 1e9:.2f} GB; {args.repeats} rounds; {machine()}")
    print_table(
        "durable throughput (median seconds per checkpoint; ratios: higher is faster)",
        ["peer", "median (s)", "GB/s", "speed vs torch.save+fsync", "speed vs raw limit"],
        rows,
    )


if __name__ == "__main__":
    main()
