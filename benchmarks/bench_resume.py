"""Verified resume: ``system.resume()`` against ``torch.load(mmap=True)`` + ``load_state_dict``.

    python benchmarks/bench_resume.py [--layers 10 --width 3072 --repeats 5 --dir ./.bench_tmp]

One checkpoint is saved through the README's path (``wl.register_*``, ``get_checkpoint_system``,
the module function ``checkpoint_on_step``), and the same state with ``torch.save``; both files are
read once first, so they sit in the page cache (warm, as after a recent save). Peers, interleaved
in every round, each restoring into the same live model and optimizer:

- weightslab: a fresh system over the saved root (opened untimed), then the timed ``resume()``
  (``verify="split"``, the default): the journal lookup, the size check, ``weights_only`` + ``mmap``
  loading, the block digests of every 64 MiB block of the step file holding anything but the
  optimizer's moments (on every core, each model tensor copied out of the piece just hashed), and
  the restore of model, optimizer, hyperparameters and RNG; the moments' blocks are checked on a
  helper thread (the optimizer's ``step()`` and ``state_dict()`` and every save wait for them).
  Timed alone, and with ``wait_verified()`` after it (every block checked);
- the same with ``resume(verify="now")``: every block checked before it returns;
- the same with ``resume(verify="background")``, which returns once the state is restored while the
  whole checksum goes on behind the same gates; timed alone, and with ``wait_verified()`` after it.
  A deferred check is always waited for, untimed, before the next peer runs, so that no peer shares
  the machine with it;
- ``torch.load(path, mmap=True, weights_only=True)`` + ``load_state_dict`` (model and optimizer):
  the fastest peer, which checks no checksum;
- the same without ``mmap`` (every byte read into new tensors first);
- the checksums alone: the block digests on every core (``LocalStorage.block_checksums``, what
  resume checks) and the whole file's xxh3-128 on one core (``LocalStorage.checksum``, what a file
  without block digests costs), to show what verification costs;
- the fastest peer followed by the block digests: what a verified load costs at least, since it reads
  every byte of the file once where the peer reads only what ``load_state_dict`` copies (the model:
  the optimizer's moments stay mapped until the first step).

and, since a resume is followed by training, each of weightslab's two modes and the fastest peer
followed by the first training step (forward, backward, ``optimizer.step()``, which writes the
mapped moments and so reads them): the time to the first update, where the peer's deferred reads
are paid and where the background checksum must have ended.

Each peer starts, untimed, from the same optimizer state (a mapped one) and after a garbage
collection, so that none pays for freeing what the peer before it left.

Besides wall time it reports the CPU seconds of the whole process (all threads): on a loaded
machine the wall times stretch with the load, the CPU time says what each peer costs.
"""

from __future__ import annotations

import gc
import os
import time
import warnings
from collections.abc import Callable
from typing import Literal

import torch

import weightslab as wl
from weightslab.components import AutomaticCheckpointSystem, checkpoint_on_step, get_checkpoint_system
from weightslab.storage.local import LocalStorage
from weightslab.util.digests import BLOCK_BYTES

from _common import build_state, machine, median, parse_args, print_table, scratch, state_bytes, timed

warnings.filterwarnings("ignore")

WL = "weightslab resume() (default: verify='split')"
WL_WAIT = "weightslab resume() + wait_verified()"
NOW = "weightslab resume(verify='now')"
BG = "weightslab resume(verify='background')"
BG_WAIT = "weightslab resume(verify='background') + wait_verified()"
MMAP = "torch.load(mmap=True) + load_state_dict"
PLAIN = "torch.load + load_state_dict"
BLOCKS = "block digests of the step file alone (every core)"
CHECKSUM = "whole-file xxh3-128 of the step file alone (one core)"
FLOOR = "torch.load(mmap=True) + load_state_dict, then the block digests"
STEP = ", then the first training step"


def main() -> None:
    args = parse_args(__doc__ or "")
    model, opt = build_state(args.layers, args.width)
    nbytes = state_bytes(model, opt)
    load_before = os.getloadavg()
    with scratch(args.dir) as d:
        root = d / "wl"

        def open_system() -> AutomaticCheckpointSystem:
            wl.register_model("model", model)
            wl.register_optimizer("optimizer", opt)
            wl.register_hyperparams("config", {"lr": 1e-4})
            return get_checkpoint_system(
                root_log_dir=root, checkpoint_frequency=1, async_save=False, save_last=False
            )

        writer = open_system()
        checkpoint_on_step(1)
        writer.close()
        wl.clear_ledger()
        (step_file,) = (root / "checkpoints").rglob("*_step_*.pt")
        plain = d / "plain.pt"
        torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, plain)
        storage = LocalStorage(durable=False)
        for path in (step_file, plain):
            storage.checksum(path)  # read once: both in the page cache

        def load(mmap: bool) -> None:
            state = torch.load(plain, weights_only=True, mmap=mmap)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optim"])

        batch = torch.randn(8, args.width)

        def first_step() -> None:
            model(batch).square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        keys = [WL, WL_WAIT, NOW, BG, BG_WAIT, MMAP, PLAIN, BLOCKS, CHECKSUM, FLOOR]
        keys += [WL + STEP, NOW + STEP, BG + STEP, MMAP + STEP]
        times: dict[str, list[float]] = {k: [] for k in keys}
        cpu: dict[str, list[float]] = {k: [] for k in keys}

        # Every peer replaces the optimizer state the one before it left. Freeing 0.75 GB of heap
        # tensors (what the non-mmap load leaves) costs far more than dropping a mapping, so each
        # peer starts, untimed, from the same mapped state: no peer pays for another's leftovers.
        common = torch.load(plain, weights_only=True, mmap=True)["optim"]

        def run(key: str, fn: Callable[[], object]) -> None:
            opt.load_state_dict(common)
            gc.collect()
            before = time.process_time()
            times[key].append(timed(fn))
            cpu[key].append(time.process_time() - before)  # every thread of the process

        def resumed(
            key: str,
            verify: Literal["split", "now", "background"],
            then: Callable[[AutomaticCheckpointSystem], object] = lambda system: None,
        ) -> None:
            system = open_system()
            run(key, lambda: (system.resume(verify=verify), then(system)))
            system.close()  # untimed: waits for a background checksum still running
            wl.clear_ledger()

        for _ in range(args.repeats):
            resumed(WL, "split")
            run(MMAP, lambda: load(True))
            resumed(NOW, "now")
            resumed(BG, "background")
            resumed(WL_WAIT, "split", lambda system: system.wait_verified())
            resumed(BG_WAIT, "background", lambda system: system.wait_verified())
            run(PLAIN, lambda: load(False))
            run(BLOCKS, lambda: storage.block_checksums(step_file, BLOCK_BYTES))
            run(CHECKSUM, lambda: storage.checksum(step_file))
            run(FLOOR, lambda: (load(True), storage.block_checksums(step_file, BLOCK_BYTES)))
            resumed(WL + STEP, "split", lambda system: first_step())
            run(MMAP + STEP, lambda: (load(True), first_step()))
            resumed(NOW + STEP, "now", lambda system: first_step())
            resumed(BG + STEP, "background", lambda system: first_step())
    load_after = os.getloadavg()

    rows = []
    for k, v in times.items():
        base_key = MMAP + STEP if k.endswith(STEP) else MMAP
        base = times[base_key]
        r = median(v) / median(base)
        noise = min(v) <= max(base) and min(base) <= max(v) and k != base_key
        spread = (max(v) - min(v)) / median(v)
        rows.append(
            [
                k,
                f"{median(v):.3f}",
                f"{spread * 100:.0f}%",
                f"{r:.2f}x" + (" (noise)" if noise else ""),
                f"{median(cpu[k]):.3f}",
                f"{median(cpu[k]) / median(cpu[base_key]):.2f}x",
                ", ".join(f"{t:.3f}" for t in v),
            ]
        )
    print(f"state {nbytes / 1e9:.2f} GB; {args.repeats} rounds; {machine()}")
    print(f"block digests: {BLOCK_BYTES >> 20} MiB blocks on {LocalStorage().hash_threads()} threads")
    print(
        f"load average before {load_before[0]:.1f} / {load_before[1]:.1f} / {load_before[2]:.1f}, "
        f"after {load_after[0]:.1f} / {load_after[1]:.1f} / {load_after[2]:.1f} (1 / 5 / 15 min)"
    )
    print_table(
        f"resume, warm page cache (median seconds; ratio: time relative to {MMAP}, or to it then the "
        "first training step for the rows with that step; lower is faster; (noise): the rounds overlap "
        "the peer's)",
        ["peer", "median (s)", "spread", "vs the peer", "CPU (s)", "CPU vs peer", "all rounds (s)"],
        rows,
    )


if __name__ == "__main__":
    main()
