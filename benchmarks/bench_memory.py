"""Memory: the peak and the retained resident memory of saving, per mode, each in a fresh process.

    python benchmarks/bench_memory.py [--layers 10 --width 2048 --small-bound-mb 64 --saves 3 --repeats 5]

Each peer runs in a fresh subprocess per round (rounds interleave the peers). The child builds the
state (``--layers`` Linear(width, width) layers with AdamW state; default 10 x 2048, 0.50 GB, under
the default ``max_staging_bytes`` of 2 GiB; ``--layers 20 --width 3072`` gives 2.26 GB, over it), resets its
peak-RSS counter (``/proc/self/clear_refs``), then saves ``--saves`` times, each time after training
changed every tensor in place, waiting for each write to finish. It reports, above the RSS it had
before the first save:

- peak: VmHWM, the most memory resident at any time during the saves;
- retained: VmRSS after the last write finished (what the process keeps between saves);
- stall: the median seconds the save call blocked the training thread.

Peers: weightslab as the README drives it (``wl.register_*``, ``get_checkpoint_system(...)``, the
module function ``checkpoint_on_step``) async with the default bound, async with a small bound
(``--small-bound-mb``), async with no bound (``max_staging_bytes=None``) and synchronous
(``async_save=False``); ``torch.save`` (to a file, then deleted); ``dcp.async_save`` (default
thread mode). Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

PEERS = [
    "weightslab async (default bound, 2 GiB)",
    "weightslab async (small bound)",
    "weightslab async (max_staging_bytes=None)",
    "weightslab sync",
    "torch.save",
    "dcp.async_save (thread mode)",
]


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(args: argparse.Namespace) -> None:
    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed.checkpoint as dcp

    import weightslab as wl
    from weightslab.components import checkpoint_on_step, get_checkpoint_system

    from _common import build_state, state_bytes

    peer = PEERS[args.child]
    model, opt = build_state(args.layers, args.width)
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    d = Path(args.dir)
    system = None
    if peer.startswith("weightslab"):
        wl.register_model("model", model)
        wl.register_optimizer("optimizer", opt)
        wl.register_hyperparams("config", {"lr": 1e-4})
        options: dict[str, object] = {}
        if "small bound" in peer:
            options["max_staging_bytes"] = args.small_bound_mb << 20
        elif "None" in peer:
            options["max_staging_bytes"] = None
        elif peer == "weightslab sync":
            options["async_save"] = False
        system = get_checkpoint_system(root_log_dir=d / "wl", checkpoint_frequency=1, keep_last=1, **options)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = _status("VmRSS")
    stalls = []
    for step in range(1, args.saves + 1):
        with torch.no_grad():  # training changes every tensor in place between saves
            for p in model.parameters():
                p.add_(1e-3)
        t0 = time.perf_counter()
        if system is not None:
            checkpoint_on_step(step)
            stalls.append(time.perf_counter() - t0)
            system.flush()
        elif peer == "torch.save":
            torch.save(state, d / "plain.pt")
            stalls.append(time.perf_counter() - t0)
            (d / "plain.pt").unlink()
        else:
            future = dcp.async_save(state, checkpoint_id=str(d / f"dcp{step}"))
            stalls.append(time.perf_counter() - t0)
            future.result()
    gc.collect()
    out = {
        "state": state_bytes(model, opt),
        "peak": _status("VmHWM") - base,
        "retained": _status("VmRSS") - base,
        "stall": statistics.median(stalls),
    }
    print(json.dumps(out))
    if system is not None:
        system.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--small-bound-mb", type=int, default=64)
    p.add_argument("--saves", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dir", type=Path, default=None, help="scratch folder (default ./.bench_tmp)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child(args)
        return

    from _common import machine, print_table, scratch

    results: dict[str, list[dict[str, float]]] = {k: [] for k in PEERS}
    load0 = os.getloadavg()[0]
    for _ in range(args.repeats):
        for i, peer in enumerate(PEERS):
            with scratch(args.dir) as d:
                cmd = [sys.executable, __file__, "--child", str(i), "--dir", str(d)]
                cmd += ["--layers", str(args.layers), "--width", str(args.width)]
                cmd += ["--small-bound-mb", str(args.small_bound_mb), "--saves", str(args.saves)]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                results[peer].append(json.loads(done.stdout.strip().splitlines()[-1]))
    load1 = os.getloadavg()[0]
    nbytes = results[PEERS[0]][0]["state"]
    rows = []
    for peer, runs in results.items():

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        spread = [r["retained"] / nbytes for r in runs]
        rows.append(
            [
                peer,
                f"{med('peak') / 1e9:.2f} GB ({med('peak') / nbytes:.2f}x)",
                f"{med('retained') / 1e9:.2f} GB ({med('retained') / nbytes:.2f}x) "
                f"[{min(spread):.2f}-{max(spread):.2f}]",
                f"{med('stall'):.3f}",
            ]
        )
    print(
        f"state {nbytes / 1e9:.2f} GB ({args.layers} x Linear({args.width}, {args.width}) + AdamW); "
        f"{args.saves} saves per process, {args.repeats} rounds; small bound {args.small_bound_mb} MiB; "
        f"load average {load0:.2f} -> {load1:.2f}; {machine()}"
    )
    print_table(
        "resident memory above the state, median of rounds (x the state) [retained: min-max]",
        ["peer", "peak during saves", "retained after the last write", "stall median (s)"],
        rows,
    )


if __name__ == "__main__":
    main()
