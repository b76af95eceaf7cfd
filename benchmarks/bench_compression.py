"""Lossless compression of trained weights: byte-grouped zstd against plain zstd and zlib.

    python benchmarks/bench_compression.py [--steps 200 --embd 256 --layers 4 --repeats 5]

A small GPT-2 (``transformers.GPT2Config``, tied embeddings) is trained on CPU with AdamW for
``--steps`` steps on a synthetic language: token sequences drawn from a fixed random Markov chain,
so the weights move away from their initialisation the way a real run's do. Its state is then
compressed tensor by tensor, the way a ``compression="zstd"`` dedup root stores it, in five sets:
the float32 weights, the same cast to bfloat16 and to float16, and AdamW's exp_avg and exp_avg_sq.

Peers, interleaved in each round (their order rotates), each compressing every tensor of a set and
decompressing it again (checked bit-exact in the first round):

* ``grouped+zstd L3`` / ``L1``: :func:`weightslab.format.codec.compress_tensor_bytes` (byte planes,
  zstd per plane, incompressible planes stored raw) at zstd level 3 and level 1;
* ``grouped+zstd L3, 2 threads``: the same, two tensors at a time (zstd releases the GIL);
* ``plain zstd L3``: ``zstandard.ZstdCompressor(level=3)`` on the bytes as they are;
* ``zlib 6``: ``zlib.compress(level=6)``, the familiar peer (torch.save's zip format does not compress).

Sizes are the compressed bytes over the raw bytes. Speeds are raw MB per second, medians of the
rounds with their range, by the wall clock and by this process's CPU time (which the other work on
a shared machine disturbs less). The "vs plain" columns are the median of the per-round CPU-speed
ratios against plain zstd at the same level, called noise when their range includes 1. A
``memcpy`` row (``bytes()`` of every tensor) shows what the machine could copy in the same round.

Then the same trained model and optimizer go through the public API as the README shows it
(``wl.register_model``, ``get_checkpoint_system(..., storage="dedup", compression="zstd")``,
``checkpoint_on_step``): one synchronous (durable) save into a fresh root per peer and round,
against ``storage="dedup"`` uncompressed and ``torch.save`` + fsync of the same state; the table
gives the bytes on disk and the save time (``--skip-save`` leaves it out).
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import zstandard

import weightslab as wl
from weightslab.components import checkpoint_on_step, get_checkpoint_system
from weightslab.format.codec import compress_tensor_bytes, decompress_tensor_bytes

from _common import machine, median, print_table, scratch

warnings.filterwarnings("ignore")

Compress = Callable[[bytes, int], bytes]
Decompress = Callable[[bytes], bytes]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200, help="AdamW training steps (default 200)")
    parser.add_argument("--embd", type=int, default=256, help="GPT-2 n_embd (default 256)")
    parser.add_argument("--layers", type=int, default=4, help="GPT-2 n_layer (default 4)")
    parser.add_argument("--vocab", type=int, default=512, help="vocabulary size (default 512)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="rounds; peers interleaved in each (default 5)"
    )
    parser.add_argument("--skip-save", action="store_true", help="leave out the saves through the public API")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder for the saves (./.bench_tmp)")
    return parser.parse_args()


def train(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.optim.Optimizer, float, float]:
    """A tiny GPT-2 trained on a random Markov-chain language; returns (model, optimizer, first loss, last loss)."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as exc:
        raise SystemExit(
            f"this benchmark trains a GPT-2 from transformers: pip install transformers ({exc})"
        ) from exc
    torch.manual_seed(0)
    # one thread: on a loaded 2-core machine torch's thread pool spins against the other work
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    seq, batch = 32, 16
    config = GPT2Config(
        vocab_size=args.vocab, n_positions=seq, n_embd=args.embd, n_layer=args.layers, n_head=4
    )
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    # each token has 8 likely successors: a language a model can learn in a few hundred steps
    successors = torch.randint(0, args.vocab, (args.vocab, 8))
    first = last = 0.0
    for step in range(args.steps):
        tokens = torch.empty(batch, seq, dtype=torch.long)
        tokens[:, 0] = torch.randint(0, args.vocab, (batch,))
        for i in range(1, seq):
            tokens[:, i] = successors[tokens[:, i - 1], torch.randint(0, 8, (batch,))]
        loss = model(input_ids=tokens, labels=tokens).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        first = loss.item() if step == 0 else first
        last = loss.item()
    torch.set_num_threads(threads)
    return model, opt, first, last


def tensor_sets(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, list[tuple[bytes, int]]]:
    """``{set name: [(raw bytes, element size)]}``, each storage once (GPT-2 ties lm_head to wte)."""
    seen: set[int] = set()
    weights: list[torch.Tensor] = []
    for t in model.state_dict().values():
        if t.is_floating_point() and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            weights.append(t.detach())

    def raw(tensors: list[torch.Tensor]) -> list[tuple[bytes, int]]:
        return [(t.contiguous().view(torch.uint8).numpy().tobytes(), t.element_size()) for t in tensors]

    moments = {name: [s[name] for s in opt.state.values()] for name in ("exp_avg", "exp_avg_sq")}
    return {
        "weights float32": raw(weights),
        "weights bfloat16": raw([t.to(torch.bfloat16) for t in weights]),
        "weights float16": raw([t.to(torch.float16) for t in weights]),
        "AdamW exp_avg float32": raw(moments["exp_avg"]),
        "AdamW exp_avg_sq float32": raw(moments["exp_avg_sq"]),
    }


def zstd_plain(level: int) -> tuple[Compress, Decompress]:
    compressor = zstandard.ZstdCompressor(level=level)
    decompressor = zstandard.ZstdDecompressor()
    return (lambda data, _size: compressor.compress(data)), decompressor.decompress


def peers() -> dict[str, tuple[Compress, Decompress, int]]:
    """``{name: (compress(data, element size), decompress(blob), threads)}``."""
    plain3 = zstd_plain(3)
    return {
        "grouped+zstd L3": (lambda d, s: compress_tensor_bytes(d, s, 3), decompress_tensor_bytes, 1),
        "grouped+zstd L1": (lambda d, s: compress_tensor_bytes(d, s, 1), decompress_tensor_bytes, 1),
        "grouped+zstd L3, 2 threads": (
            lambda d, s: compress_tensor_bytes(d, s, 3),
            decompress_tensor_bytes,
            2,
        ),
        "plain zstd L3": (plain3[0], plain3[1], 1),
        "plain zstd L1": (*zstd_plain(1), 1),
        "zlib 6": ((lambda d, _s: zlib.compress(d, 6)), zlib.decompress, 1),
        "memcpy": ((lambda d, _s: bytes(bytearray(d))), (lambda b: bytes(bytearray(b))), 1),
    }


BASELINE = {"grouped+zstd L3": "plain zstd L3", "grouped+zstd L1": "plain zstd L1"}
BASELINE["grouped+zstd L3, 2 threads"] = "plain zstd L3"


def run_once(
    tensors: list[tuple[bytes, int]], compress: Compress, decompress: Decompress, threads: int, check: bool
) -> tuple[int, list[float]]:
    """(compressed bytes, [compress wall s, decompress wall s, compress CPU s, decompress CPU s]) for one set."""
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        w0, c0 = time.perf_counter(), time.process_time()
        blobs = (
            [compress(data, size) for data, size in tensors]
            if pool is None
            else list(pool.map(lambda item: compress(*item), tensors))
        )
        w1, c1 = time.perf_counter(), time.process_time()
        back = [decompress(blob) for blob in blobs] if pool is None else list(pool.map(decompress, blobs))
        w2, c2 = time.perf_counter(), time.process_time()
    finally:
        if pool is not None:
            pool.shutdown()
    if check:
        assert all(b == data for b, (data, _) in zip(back, tensors, strict=True)), "round trip differs"
    return sum(len(b) for b in blobs), [w1 - w0, w2 - w1, c1 - c0, c2 - c1]


def speed_ratio(ours: list[float], peer: list[float]) -> str:
    """Median and range of the per-round ratios of two series of speeds; noise when the range holds 1."""
    ratios = [a / b for a, b in zip(ours, peer, strict=True)]
    lo, hi = min(ratios), max(ratios)
    return f"{median(ratios):.2f}x ({lo:.2f}-{hi:.2f})" + (" noise" if lo <= 1 <= hi else "")


def spread(xs: list[float]) -> str:
    return f"{median(xs):.0f} ({min(xs):.0f}-{max(xs):.0f})"


COLUMNS = ("compress wall", "decompress wall", "compress CPU", "decompress CPU")


def main() -> None:
    args = parse()
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    model, opt, first, last = train(args)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"GPT-2 n_embd={args.embd} n_layer={args.layers} vocab={args.vocab}: {params / 1e6:.2f} M parameters, "
        f"{args.steps} AdamW steps in {time.perf_counter() - t0:.0f} s, loss {first:.2f} -> {last:.2f} "
        f"(a uniform guess is {math.log(args.vocab):.2f}, the language's own entropy {math.log(8):.2f})"
    )
    sets = tensor_sets(model, opt)
    methods = peers()
    names = list(methods)
    sizes: dict[tuple[str, str], int] = {}
    # (set, peer, column) -> raw MB per second, one per round
    speeds: dict[tuple[str, str, str], list[float]] = {}
    loads: list[float] = [load_start[0]]
    for round_ in range(args.repeats):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for set_name, tensors in sets.items():
            raw_mb = sum(len(d) for d, _ in tensors) / 1e6
            for name in order:
                compress, decompress, threads = methods[name]
                size, seconds = run_once(tensors, compress, decompress, threads, check=round_ == 0)
                sizes[(set_name, name)] = size
                for column, sec in zip(COLUMNS, seconds, strict=True):
                    speeds.setdefault((set_name, name, column), []).append(raw_mb / max(sec, 1e-9))
        loads.append(os.getloadavg()[0])
    print(f"machine: {machine()}, zstandard {zstandard.__version__}")
    print(
        f"load average (1 min) at start and after each round: {', '.join(f'{x:.1f}' for x in loads)} "
        f"on {os.cpu_count()} cores: other work shares this machine, so wall-clock speeds are noisy. "
        "CPU columns divide by this process's CPU time (all its threads), which the load disturbs less; "
        "sizes are exact"
    )
    for set_name, tensors in sets.items():
        raw = sum(len(d) for d, _ in tensors)
        rows = []
        for name in names:
            key = (set_name, name)
            base = BASELINE.get(name)
            cells = [spread(speeds[(set_name, name, column)]) for column in COLUMNS]
            ratios = [
                speed_ratio(speeds[(set_name, name, column)], speeds[(set_name, base, column)])
                if base
                else ""
                for column in ("compress CPU", "decompress CPU")
            ]
            rows.append(
                [
                    name,
                    f"{sizes[key] / raw * 100:.1f}%",
                    f"{(1 - sizes[key] / raw) * 100:.1f}%",
                    *cells,
                    *ratios,
                ]
            )
        print_table(
            f"{set_name}: {len(tensors)} tensors, {raw / 1e6:.1f} MB raw; MB/s of raw bytes, "
            f"medians (range) of {args.repeats} rounds",
            [
                "peer",
                "size",
                "saved",
                *(f"{c} MB/s" for c in COLUMNS),
                "compress CPU vs plain",
                "decompress CPU vs plain",
            ],
            rows,
        )
    if not args.skip_save:
        saves(args, model, opt)


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def saves(args: argparse.Namespace, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """One durable save per peer and round through the public API; bytes on disk and seconds."""
    wl.register_model("model", model)
    wl.register_optimizer("optimizer", opt)
    wl.register_hyperparams("config", {"lr": 3e-3})
    kinds = {
        'storage="dedup", compression="zstd"': {"compression": "zstd"},
        'storage="dedup"': {},
    }
    names = [*kinds, "torch.save + fsync"]
    seconds: dict[str, list[float]] = {n: [] for n in names}
    sizes: dict[str, int] = {}
    with scratch(args.dir) as d:
        for round_ in range(args.repeats):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                root = d / f"r{round_}_{names.index(name)}"
                if name in kinds:
                    system = get_checkpoint_system(
                        root_log_dir=str(root),
                        checkpoint_frequency=1,
                        async_save=False,
                        storage="dedup",
                        **kinds[name],
                    )
                    t0 = time.perf_counter()
                    checkpoint_on_step(1)
                    seconds[name].append(time.perf_counter() - t0)
                    system.close()
                else:
                    root.mkdir()
                    t0 = time.perf_counter()
                    with open(root / "state.pt", "wb") as f:
                        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, f)
                        f.flush()
                        os.fsync(f.fileno())
                    seconds[name].append(time.perf_counter() - t0)
                sizes[name] = folder_bytes(root)
    base = sizes["torch.save + fsync"]
    print_table(
        f"one durable save of the trained GPT-2 + AdamW through the public API, medians (range) of {args.repeats} "
        f"rounds; load average now {os.getloadavg()[0]:.1f}",
        ["peer", "bytes on disk", "vs torch.save", "save s"],
        [
            [
                n,
                f"{sizes[n] / 1e6:.1f} MB",
                f"{sizes[n] / base * 100:.1f}%",
                f"{median(seconds[n]):.3f} ({min(seconds[n]):.3f}-{max(seconds[n]):.3f})",
            ]
            for n in names
        ],
    )


if __name__ == "__main__":
    main()
