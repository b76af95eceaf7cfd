"""Step overhead: what ``checkpoint_on_step(step)`` costs on steps that do not save.

    python benchmarks/bench_step_overhead.py [--repeats 5] [--calls 20000]

Everything goes through the documented path, as the README writes it: ``wl.register_*`` on the
global ledger, ``get_checkpoint_system(...)`` and the module function
``weightslab.components.checkpoint_on_step(step)``. For each model (the 6-tensor MLP, 100 tensors,
1,000 tensors, each with a 20-key config) one round times, interleaved:

- the module function with the change check on (the default);
- the same with ``detect_changes=False`` (no per-step change check: the floor of the call itself);
- a Python function that does nothing with its argument (the floor of any per-step call).

It reports the median microseconds per call, the spread of the rounds, and how many calls the
amortised change check needs to read every parameter once (the detection window). A last table
puts the MLP's call next to a real training step of that MLP (batch 64, AdamW).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable

import torch

import weightslab as wl
from weightslab.components import checkpoint_on_step, get_checkpoint_system
from weightslab.system.changes import SCAN_BUDGET

from _common import machine, median, print_table


def mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(784, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )


def wide(tensors: int) -> torch.nn.Sequential:
    """``tensors // 2`` small Linear layers: ``tensors`` parameter tensors (weights and biases)."""
    return torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(tensors // 2)])


MODELS: list[tuple[str, Callable[[], torch.nn.Module]]] = [
    ("small MLP (6 tensors)", mlp),
    ("100 tensors", lambda: wide(100)),
    ("1,000 tensors", lambda: wide(1000)),
]


def nothing(step: int) -> None:
    """The floor: a module-level Python call that does nothing."""


def per_call(fn: Callable[[int], None], start: int, calls: int) -> float:
    t0 = time.perf_counter_ns()
    for step in range(start, start + calls):
        fn(step)
    return (time.perf_counter_ns() - t0) / calls / 1000


def open_system(root: str, model: torch.nn.Module, detect_changes: bool) -> None:
    """Register ``model`` on the global ledger and open the process-wide system."""
    wl.register_model("model", model)
    wl.register_optimizer("optimizer", torch.optim.AdamW(model.parameters()))
    wl.register_hyperparams("config", {f"key{i}": i * 0.5 for i in range(20)})
    get_checkpoint_system(
        root_log_dir=root, checkpoint_frequency=10**9, detect_changes=detect_changes, save_last=False
    )
    checkpoint_on_step(0)
    # opening the experiment writes its files from the writer thread; the calls are timed after that
    # (a write in flight shares the GIL with the timed loop, which is not what a non-save step costs)
    get_checkpoint_system().flush()


def close_system() -> None:
    get_checkpoint_system().close()
    wl.clear_ledger()


def measure(name: str, build: Callable[[], torch.nn.Module], repeats: int, calls: int) -> list[str]:
    rounds: dict[str, list[float]] = {"on": [], "off": [], "floor": []}
    window = math.ceil(len(list(build().parameters())) / SCAN_BUDGET)
    with tempfile.TemporaryDirectory() as d:
        step = 1
        for _ in range(repeats):
            # one system per mode per round (a process has one system at a time): reopening the root
            # keeps its experiment, and the steps keep rising
            for mode in ("on", "off"):
                open_system(os.path.join(d, mode), build(), detect_changes=mode == "on")
                per_call(checkpoint_on_step, step, calls // 10)  # warm up
                step += calls // 10
                rounds[mode].append(per_call(checkpoint_on_step, step, calls))
                print(f"{name}, change check {mode}: {rounds[mode][-1]:.2f} us", file=sys.stderr)
                step += calls
                close_system()
            rounds["floor"].append(per_call(nothing, 0, calls))
    on, off, floor = (median(rounds[k]) for k in ("on", "off", "floor"))
    spread = f"{min(rounds['on']):.2f}-{max(rounds['on']):.2f}"
    return [
        name,
        f"{on:.2f} us",
        spread,
        f"{off:.2f} us",
        f"{floor:.3f} us",
        f"{window} call{'s' if window > 1 else ''}",
    ]


def mlp_step(repeats: int, steps: int = 500) -> tuple[float, float]:
    """Median us of one MLP training step (batch 64, AdamW), and of the call on that MLP."""
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    with tempfile.TemporaryDirectory() as d:
        wl.register_model("model", model)
        wl.register_optimizer("optimizer", opt)
        wl.register_hyperparams("config", {"lr": 1e-3, "batch_size": 64})
        get_checkpoint_system(root_log_dir=d, checkpoint_frequency=10**9, save_last=False)
        checkpoint_on_step(0)
        get_checkpoint_system().flush()
        train, call = [], []
        step = 1
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            train.append((time.perf_counter() - t0) / steps * 1e6)
            call.append(per_call(checkpoint_on_step, step, 20_000))
            step += 20_000
        close_system()
    return median(train), median(call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = [measure(name, build, args.repeats, args.calls) for name, build in MODELS]
    step_us, call_us = mlp_step(args.repeats)
    load_after = os.getloadavg()
    print(
        f"{machine()}; {args.repeats} rounds of {args.calls} calls; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (1 min)"
    )
    print_table(
        "non-save checkpoint_on_step(step), the module function, 20-key config",
        [
            "model",
            "median",
            "rounds spread",
            "detect_changes=False",
            "empty Python call",
            "every tensor read within",
        ],
        rows,
    )
    print_table(
        "the call next to a training step of the small MLP",
        ["MLP step (batch 64, AdamW)", "checkpoint_on_step", "call / step"],
        [[f"{step_us:.1f} us", f"{call_us:.2f} us", f"{call_us / step_us * 100:.3f}%"]],
    )


if __name__ == "__main__":
    main()
