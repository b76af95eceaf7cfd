"""A training process on a storage="dedup" root that tests/test_dedup_crash.py kills with SIGKILL.

It trains a model whose first layers are frozen (their blobs are shared by every checkpoint) through
the public API (``get_checkpoint_system(storage="dedup")``, ``register_*``, ``resume()``,
``checkpoint_on_step``), with durable saves on the background writer and ``keep_last=1``, so that
every save after the first collects the blobs of the checkpoint it replaces. The batch of step s
comes from a generator seeded with s, so a resumed run computes exactly what an uninterrupted one
does. At the end it writes ``done <xxh3 of the final weights>`` to the progress file.

Crash points (test instrumentation of this process only; the package is not modified): a profile
hook on the training and writer threads kills the process with SIGKILL

* ``after-blobs``: when a save of step ``--crash-after`` or later starts writing its step file: its
  new blobs are durable, the checkpoint is not committed;
* ``during-gc``: at the second blob removal of one collection (one blob of a dropped checkpoint is
  gone, the others are not).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

TOTAL_STEPS = 12
FROZEN = 3


def _install(point: str, after: int, progress: Any) -> None:
    """Kill this process with SIGKILL at ``point`` (see the module docstring)."""
    removals = [0]

    def hook(frame: FrameType, event: str, _arg: Any) -> None:
        if event != "call":
            return
        name = frame.f_code.co_name
        path = frame.f_locals.get("path")
        if not isinstance(path, Path) or CURRENT[0] < after:
            return
        if (
            point == "after-blobs"
            and name == "write_atomic"
            and path.suffix == ".pt"
            and "_step_" in path.name
        ):
            _die(progress, f"killed after-blobs {CURRENT[0]}")
        if point == "during-gc" and name == "remove" and "blobs" in path.parts:
            removals[0] += 1
            if removals[0] == 2:
                _die(progress, f"killed during-gc {CURRENT[0]}")

    sys.setprofile(hook)
    threading.setprofile(hook)


def _die(progress: Any, line: str) -> None:
    progress.write(f"{line}\n")
    progress.flush()
    os.kill(os.getpid(), signal.SIGKILL)


CURRENT = [-1]  # the loop step the training thread is at


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--progress", required=True)
    parser.add_argument("--crash-point", choices=["after-blobs", "during-gc"])
    parser.add_argument("--crash-after", type=int, default=0)
    args = parser.parse_args()
    progress = open(args.progress, "a", buffering=1)  # noqa: SIM115 (lives as long as the process)

    import torch
    import xxhash

    import weightslab as wl
    from weightslab.components import checkpoint_on_step, get_checkpoint_system

    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [torch.nn.Linear(128, 128) for _ in range(FROZEN)]
    for layer in layers:
        layer.requires_grad_(False)
    model = torch.nn.Sequential(*layers, torch.nn.Linear(128, 128))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    system = get_checkpoint_system(
        root_log_dir=args.root, storage="dedup", checkpoint_frequency=1, keep_last=1, save_rng=False
    )
    wl.register_model("model", model)
    wl.register_optimizer("optimizer", opt)
    wl.register_hyperparams("config", {"lr": 1e-2})
    start = system.resume()
    progress.write(f"resumed {start}\n")
    if args.crash_point:
        _install(args.crash_point, args.crash_after, progress)
    for step in range(start, TOTAL_STEPS):
        CURRENT[0] = step
        x = torch.randn(16, 128, generator=torch.Generator().manual_seed(step))
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        checkpoint_on_step(step)
        progress.write(f"step {step}\n")
    system.close()
    sys.setprofile(None)
    threading.setprofile(None)  # type: ignore[arg-type]
    digest = xxhash.xxh3_128()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    progress.write(f"done {digest.hexdigest()}\n")


if __name__ == "__main__":
    main()
