"""storage="dedup": bytes written per save against the bytes that changed, and the save time it costs.

    python benchmarks/bench_dedup.py [--repeats 5] [--frozen 0.908] [--dir PATH]

The model is BERT-base built from ``transformers.BertConfig()`` (random weights, no download), with
the first parameters (embeddings, then encoder layers in order) frozen until ``--frozen`` of the
parameter count is. Three scenarios, each through the public API as the README shows it
(``get_checkpoint_system(...)``, ``wl.register_*``, ``checkpoint_on_step(step)``, ``close()``), with
durable saves (``async_save=False``: the call returns once the checkpoint is committed):

* (a) AdamW on the trainable rest; (b) plain SGD (no state) on it: one training step per round, then
  one save per peer, peers interleaved (their order alternates by round): weightslab
  ``storage="files"``, weightslab ``storage="dedup"``, ``torch.save`` + fsync and
  ``safetensors.save_file`` + fsync of the same state.
* (c) an lr-only branch: after (a), each root is resumed, the lr changed, and one save records the
  change (a new experiment whose parent is the last checkpoint); no tensor changed.

"Bytes written" is the process's ``wchar`` (``/proc/self/io``: every byte passed to write(2),
step files, blobs, manifest and journal included) across the call. "Changed" is the bytes of the
tensors (model + optimizer state) whose xxh3-128 differs from the previous round's. The first round
(every blob new) is reported apart and left out of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
import xxhash
from safetensors.torch import save_file

import weightslab as wl
from weightslab.components import checkpoint_on_step, get_checkpoint_system

from _common import machine, print_table, scratch

warnings.filterwarnings("ignore")


def wchar() -> int:
    """Bytes this process has passed to write(2) so far."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no wchar line")


def build_bert(frozen_fraction: float) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig())
    total = sum(p.numel() for p in model.parameters())
    frozen = 0
    for _, p in model.named_parameters():
        if frozen >= frozen_fraction * total:
            break
        p.requires_grad_(False)
        frozen += p.numel()
    return model, frozen / total


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(0, 30522, (2, 64), generator=g)
    out = model(input_ids=ids).last_hidden_state.pow(2).mean()
    opt.zero_grad()
    out.backward()
    opt.step()


def tensors_of(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The state a checkpoint holds, flat (what torch.save and safetensors peers write)."""
    flat = {f"model.{k}": v for k, v in model.state_dict().items()}
    for pid, state in opt.state_dict()["state"].items():
        for name, t in state.items():
            if isinstance(t, torch.Tensor):
                flat[f"optim.{pid}.{name}"] = t
    return flat


def digests(flat: dict[str, torch.Tensor]) -> dict[str, tuple[str, int]]:
    out = {}
    for k, t in flat.items():
        b = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        out[k] = (xxhash.xxh3_128(b).hexdigest(), t.numel() * t.element_size())
    return out


def changed_bytes(before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]]) -> int:
    return sum(n for k, (d, n) in after.items() if before.get(k, ("", 0))[0] != d)


def measured(fn: Callable[[], object]) -> tuple[float, int]:
    """(seconds, bytes written) of one call."""
    w0, t0 = wchar(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, wchar() - w0


def fsynced(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def weightslab_save(root: Path, storage: str, step: int) -> Callable[[], None]:
    def run() -> None:
        checkpoint_on_step(step)

    def opened() -> None:
        get_checkpoint_system(
            root_log_dir=root, checkpoint_frequency=1, async_save=False, storage=storage, keep_last=3
        )
        run()

    return opened


def torch_save(path: Path, flat: Callable[[], dict[str, torch.Tensor]]) -> Callable[[], None]:
    def run() -> None:
        torch.save(flat(), path)
        fsynced(path)

    return run


def safetensors_save(path: Path, flat: Callable[[], dict[str, torch.Tensor]]) -> Callable[[], None]:
    def run() -> None:
        save_file({k: v.contiguous() for k, v in flat().items()}, str(path))
        fsynced(path)

    return run


PEERS = ("weightslab files", "weightslab dedup", "torch.save+fsync", "safetensors+fsync")


def scenario(
    name: str, model: torch.nn.Module, opt: torch.optim.Optimizer, d: Path, rounds: int
) -> dict[str, Any]:
    """Rounds of (train, one save per peer); returns the per-peer seconds/bytes and the changed bytes."""
    wl.register_model("model", model)
    wl.register_optimizer("optimizer", opt)
    wl.register_hyperparams("config", {"lr": opt.param_groups[0]["lr"]})
    roots = {"weightslab files": d / f"{name}-files", "weightslab dedup": d / f"{name}-dedup"}
    flat = lambda: tensors_of(model, opt)  # noqa: E731
    peers: dict[str, Callable[[], None]] = {}
    times: dict[str, list[float]] = {p: [] for p in PEERS}
    written: dict[str, list[int]] = {p: [] for p in PEERS}
    first: dict[str, tuple[float, int]] = {}
    changed: list[int] = []
    hashing: list[float] = []  # xxh3-128 of every tensor of the state, as a dedup save does
    previous: dict[str, tuple[str, int]] = {}
    for r in range(rounds + 1):
        step = r + 1
        train_step(model, opt, step)
        t0 = time.perf_counter()
        now = digests(flat())
        hashing.append(time.perf_counter() - t0)
        changed.append(changed_bytes(previous, now))
        previous = now
        peers = {
            "weightslab files": weightslab_save(roots["weightslab files"], "files", step),
            "weightslab dedup": weightslab_save(roots["weightslab dedup"], "dedup", step),
            "torch.save+fsync": torch_save(d / f"{name}.pt", flat),
            "safetensors+fsync": safetensors_save(d / f"{name}.safetensors", flat),
        }
        order = list(PEERS) if r % 2 == 0 else list(reversed(PEERS))
        for peer in order:
            secs, nbytes = measured(peers[peer])
            if peer.startswith("weightslab"):
                get_checkpoint_system().close()  # the next peer opens its own root
            if r == 0:
                first[peer] = (secs, nbytes)
            else:
                times[peer].append(secs)
                written[peer].append(nbytes)
    return {
        "times": times,
        "written": written,
        "first": first,
        "changed": changed,
        "roots": roots,
        "hashing": hashing,
    }


def lr_branch(
    model: torch.nn.Module, opt: torch.optim.Optimizer, roots: dict[str, Path], step: int
) -> dict[str, int]:
    """Resume each root, change only the lr, save once: bytes written per mode."""
    out = {}
    for peer, root in roots.items():
        cfg = {"lr": opt.param_groups[0]["lr"]}
        wl.register_hyperparams("config", cfg)
        system = get_checkpoint_system(
            root_log_dir=root,
            checkpoint_frequency=1,
            async_save=False,
            storage="dedup" if "dedup" in peer else "files",
            keep_last=3,
        )
        system.resume()
        cfg["lr"] = cfg["lr"] / 2
        _, out[peer] = measured(lambda: checkpoint_on_step(step))
        system.close()
    return out


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def spread(xs: list[float]) -> float:
    """Run-to-run spread: (max - min) / median."""
    return (max(xs) - min(xs)) / statistics.median(xs) if xs else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="measured rounds after the first (default 5)")
    parser.add_argument("--frozen", type=float, default=0.908, help="fraction of parameters frozen")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default ./.bench_tmp)")
    args = parser.parse_args()
    model, frozen = build_bert(args.frozen)
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(f"machine: {machine()}; load average before: {os.getloadavg()}")
    print(
        f"BERT-base (BertConfig()), {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
        f"{frozen:.1%} frozen"
    )
    results = {}
    with scratch(args.dir) as d:
        adamw = torch.optim.AdamW(trainable, lr=1e-4)
        results["(a) AdamW"] = scenario("adamw", model, adamw, d, args.repeats)
        branch = lr_branch(model, adamw, results["(a) AdamW"]["roots"], args.repeats + 2)
        sgd = torch.optim.SGD(trainable, lr=1e-3)
        results["(b) SGD"] = scenario("sgd", model, sgd, d, args.repeats)
    load = os.getloadavg()
    for title, res in results.items():
        changed = statistics.median(res["changed"][1:])
        full = statistics.median(res["written"]["weightslab files"])
        rows = []
        for peer in PEERS:
            w = statistics.median(res["written"][peer])
            t = res["times"][peer]
            rows.append(
                [
                    peer,
                    mb(w),
                    f"{w / changed:.2f}x" if changed else "-",
                    f"{w / full:.1%}",
                    f"{statistics.median(t):.3f} s",
                    f"{spread(t):.0%}",
                    f"{res['first'][peer][0]:.3f} s / {mb(res['first'][peer][1])}",
                ]
            )
        print_table(
            f"{title}: median of {args.repeats} rounds; changed per save {mb(changed)}",
            ["peer", "bytes written/save", "/ changed", "/ full save", "save time", "spread", "first save"],
            rows,
        )
        ws = res["times"]
        ratio = statistics.median(ws["weightslab dedup"]) / statistics.median(ws["weightslab files"])
        noisy = abs(ratio - 1) < max(spread(ws["weightslab dedup"]), spread(ws["weightslab files"]))
        print(
            f"dedup / files save time: {ratio:.2f}x{' (inside the run-to-run spread: noise)' if noisy else ''}"
        )
        print(
            f"hashing the whole state (xxh3-128, one thread): {statistics.median(res['hashing']):.3f} s median"
        )
    print_table(
        "(c) lr-only branch after (a): one save, no tensor changed",
        ["peer", "bytes written"],
        [[peer, mb(n)] for peer, n in branch.items()],
    )
    print(f"\nload average after: {load} (2 cores, other jobs running: figures are noisy)")


if __name__ == "__main__":
    main()
