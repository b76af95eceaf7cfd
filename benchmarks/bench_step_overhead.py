"""Step overhead: what checkpoint_on_step costs on steps that do not save.

    python benchmarks/bench_step_overhead.py [--repeats 5]

1. Microbenchmark, the issue's case: a 100-tensor model (50 Linear(64, 64)) and a 20-key config;
   microseconds per non-save call (median of rounds of 20,000 calls), with the change check on (the
   default) and off (``detect_changes=False``), which shows what the per-parameter check costs.
2. A small MLP training loop (784-256-256-10, batch 64, AdamW) with and without checkpoint_on_step on
   every step (frequency high enough that no step saves); microseconds per call and percent of a step.
3. The documented path, as the README writes it: ``wl.register_*`` on the global ledger,
   ``get_checkpoint_system(...)`` and the module function ``checkpoint_on_step(step)``, interleaved
   with the method ``system.checkpoint_on_step(step)`` on the same system, for the 6-tensor MLP and
   the 100-tensor model: what the module-level lookup adds.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

import weightslab as wl
from weightslab.components import AutomaticCheckpointSystem, checkpoint_on_step, get_checkpoint_system
from weightslab.registry.ledger import Ledger

from _common import machine, median, print_table


def per_call(repeats: int, n: int = 20_000, detect_changes: bool = True) -> tuple[list[float], int]:
    ledger = Ledger()
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(50)])
    tensors = len(list(model.parameters()))
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", torch.optim.AdamW(model.parameters()))
    ledger.register_hyperparams("config", {f"key{i}": i * 0.5 for i in range(20)})
    with tempfile.TemporaryDirectory() as d:
        system = AutomaticCheckpointSystem(
            root_log_dir=d, checkpoint_frequency=10**9, ledger=ledger, detect_changes=detect_changes
        )
        system.checkpoint_on_step(0)
        out = []
        step = 1
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            for _ in range(n):
                system.checkpoint_on_step(step)
                step += 1
            out.append((time.perf_counter_ns() - t0) / n / 1000)
        system.close()
    return out, tensors


def mlp_loop(repeats: int, steps: int = 1500) -> tuple[list[float], list[float], list[float]]:
    """Per-step time of a small MLP without and with checkpoint_on_step, and the call alone."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    ledger = Ledger()
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_hyperparams("config", {"lr": 1e-3, "batch_size": 64, "hidden": 256})
    counter = iter(range(1, 10**9))  # one global step across rounds, as a training loop passes

    def train(n: int, system: AutomaticCheckpointSystem | None) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if system is not None:
                system.checkpoint_on_step(next(counter), {"train/loss": 0.0})
        return (time.perf_counter() - t0) / n * 1e6

    def calls_only(system: AutomaticCheckpointSystem, n: int = 20_000) -> float:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            system.checkpoint_on_step(next(counter), {"train/loss": 0.0})
        return (time.perf_counter_ns() - t0) / n / 1000

    with tempfile.TemporaryDirectory() as d:
        system = AutomaticCheckpointSystem(root_log_dir=d, checkpoint_frequency=10**9, ledger=ledger)
        system.checkpoint_on_step(0)
        train(200, None)  # warm up
        base, with_wl, alone = [], [], []
        for _ in range(repeats):
            base.append(train(steps, None))
            with_wl.append(train(steps, system))
            alone.append(calls_only(system))
        system.close()
    return base, with_wl, alone


def documented_path(repeats: int, model: torch.nn.Module, n: int = 20_000) -> tuple[list[float], list[float]]:
    """us per non-save call through the module function and through the method, interleaved."""
    wl.register_model("model", model)
    wl.register_optimizer("optimizer", torch.optim.AdamW(model.parameters()))
    wl.register_hyperparams("config", {"lr": 1e-3, "batch_size": 64})
    function, method = [], []
    with tempfile.TemporaryDirectory() as d:
        system = get_checkpoint_system(root_log_dir=d, checkpoint_frequency=10**9)
        checkpoint_on_step(0)
        step = 1
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            for _ in range(n):
                checkpoint_on_step(step)
                step += 1
            function.append((time.perf_counter_ns() - t0) / n / 1000)
            t0 = time.perf_counter_ns()
            for _ in range(n):
                system.checkpoint_on_step(step)
                step += 1
            method.append((time.perf_counter_ns() - t0) / n / 1000)
        system.close()
    wl.clear_ledger()
    return function, method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    calls, tensors = per_call(args.repeats)
    no_detect, _ = per_call(args.repeats, detect_changes=False)
    base, with_wl, alone = mlp_loop(args.repeats)
    mb, mw, ma = median(base), median(with_wl), median(alone)
    torch.manual_seed(0)
    small = torch.nn.Sequential(
        torch.nn.Linear(784, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )
    f_small, m_small = documented_path(args.repeats, small)
    f_big, m_big = documented_path(
        args.repeats, torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(50)])
    )
    print(f"{machine()}; {args.repeats} rounds")
    print_table(
        "non-save checkpoint_on_step",
        ["case", "median", "all rounds"],
        [
            [
                f"{tensors}-tensor model, 20-key config: us per call",
                f"{median(calls):.2f} us",
                _join(calls, 2),
            ],
            [
                "same, detect_changes=False (no per-step change check)",
                f"{median(no_detect):.2f} us",
                _join(no_detect, 2),
            ],
            ["small MLP (6 tensors): us per call", f"{ma:.2f} us", _join(alone, 2)],
            ["small MLP step without weightslab", f"{mb:.1f} us", _join(base, 1)],
            ["small MLP step with checkpoint_on_step", f"{mw:.1f} us", _join(with_wl, 1)],
            [
                "small MLP: call cost / step time",
                f"{ma / mb * 100:.3f}%",
                "the loop difference is within run-to-run noise",
            ],
        ],
    )
    print_table(
        "the documented path: module function checkpoint_on_step(step) vs the method, same system",
        ["model", "module function", "method", "function / method", "all rounds (function)"],
        [
            [
                "small MLP (6 tensors)",
                f"{median(f_small):.2f} us",
                f"{median(m_small):.2f} us",
                f"{median(f_small) / median(m_small):.2f}x",
                _join(f_small, 2),
            ],
            [
                "100 tensors (50 Linear(64, 64))",
                f"{median(f_big):.2f} us",
                f"{median(m_big):.2f} us",
                f"{median(f_big) / median(m_big):.2f}x",
                _join(f_big, 2),
            ],
        ],
    )


def _join(values: list[float], digits: int) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


if __name__ == "__main__":
    main()
