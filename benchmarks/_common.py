"""Shared helpers for the benchmarks: the state under test, timing, tables."""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from weightslab.registry.ledger import Ledger


def parse_args(description: str, repeats: int = 5) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--layers", type=int, default=10, help="Linear(width, width) layers (default 10)")
    parser.add_argument(
        "--width", type=int, default=3072, help="layer width (default 3072: about 1.13 GB with AdamW)"
    )
    parser.add_argument(
        "--repeats", type=int, default=repeats, help="rounds; peers interleaved in each round"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="scratch folder on the disk to test (default: ./.bench_tmp)"
    )
    return parser.parse_args()


def build_state(layers: int, width: int, seed: int = 0) -> tuple[torch.nn.Sequential, torch.optim.AdamW]:
    """Ten Linear(3072, 3072) layers with AdamW state: about 1.13 GB of tensors (params + exp_avg + exp_avg_sq)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(2, width)).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return model, opt


def ledger_for(model: torch.nn.Module, opt: torch.optim.Optimizer) -> Ledger:
    """An isolated ledger with the state under test registered."""
    ledger = Ledger()
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_hyperparams("config", {"lr": 1e-4})
    return ledger


def state_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor a checkpoint of ``model`` and ``opt`` holds: the model's, then the optimizer state's."""
    return list(model.state_dict().values()) + [
        t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)
    ]


def state_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for t in state_tensors(model, opt))


@contextmanager
def scratch(base: Path | None) -> Iterator[Path]:
    root = base or Path.cwd() / ".bench_tmp"
    root.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(dir=root))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def machine() -> str:
    return f"{os.cpu_count()} cores, torch {torch.__version__}, python {os.sys.version.split()[0]}"
