"""Distributed saves: FSDP2 at 2 ranks on CPU, weightslab against torch.distributed.checkpoint.

    python benchmarks/bench_distributed.py [--layers 8 --width 2048 --repeats 5 --dir ./.bench_tmp]

Two ranks are spawned with ``torch.multiprocessing.spawn`` (``file://`` rendezvous, gloo,
``GLOO_SOCKET_IFNAME=lo``: nothing listens beyond loopback), one intra-op thread each (as torchrun
sets). State under test: ``--layers`` Linear(width, width), ``fully_shard`` per layer then on the
model over ``init_device_mesh("cpu", (2,))``, AdamW stepped once (default about 0.40 GB of params +
AdamW state in all, half on each rank). Each save goes to a fresh folder on the disk of ``--dir``.

Peers, interleaved in each round (the order rotates from round to round), with a barrier before each
so that both ranks start together; every figure is the slower rank's:

* weightslab, built as in the README (``get_checkpoint_system(root_log_dir=..., checkpoint_frequency=1,
  keep_last=1)``, ``wl.register_*``, the module function ``checkpoint_on_step(step)``). With the
  default ``async_save=True`` the stall is the time of the call at a save step and durable is the
  call plus ``system.flush()`` (which returns once rank 0 committed the manifest entry). With
  ``async_save=False`` the call is durable;
* ``dcp.async_save(state, storage_writer=FileSystemWriter(dir), process_group=<own gloo group>)``,
  thread mode, default stager (the FileSystemWriter, which copies the state into new CPU tensors at
  every save): the call is its stall, call + ``future.result()`` its durable time;
* the same with ``async_stager=DefaultStager(StagingOptions(False, False, False, False))`` kept for
  the whole run (it reuses its CPU copies; the stager weightslab uses on CPU): "cached stager";
* ``dcp.save`` (synchronous; FileSystemWriter fsyncs its files): the call is durable.

The DCP peers' timed region includes ``get_state_dict(model, opt)`` (torch.distributed.checkpoint.
state_dict), which a training loop calls at every save, as weightslab's call includes its own.

The checkpoint system is one per process, and a second system in the same job is not safe (see
guides/performance.md), so the job runs twice: one 2-rank job with weightslab async_save=True and one
with async_save=False, each with the three DCP peers interleaved; each ratio compares series of the
same job. The first round (experiment creation, staging buffers) is reported apart; figures are
medians of the later rounds. Spread is (max - min) / median of a series over the rounds; a ratio
whose distance from 1 is within the larger spread of its two series is called noise. After each job
rank 0 verifies the weightslab root (sizes and xxh3-128 of every file, no orphans).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _common import machine, median, print_table

warnings.filterwarnings("ignore")

WL = "weightslab"
DCP_DEFAULT = "dcp.async_save, thread, default stager"
DCP_CACHED = "dcp.async_save, thread, cached stager"
DCP_SYNC = "dcp.save, sync"
PEERS = [WL, DCP_DEFAULT, DCP_CACHED, DCP_SYNC]
SHORT = {
    WL: "weightslab",
    DCP_DEFAULT: "dcp default stager",
    DCP_CACHED: "dcp cached stager",
    DCP_SYNC: "dcp.save",
}


def build_fsdp(layers: int, width: int, world: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, int]:
    """The sharded model with AdamW state, and the bytes of this rank's shards (params + state)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    mesh = init_device_mesh("cpu", (world,))
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(2, width)).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

    def local(t: torch.Tensor) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    n = sum(local(p) for p in model.parameters())
    n += sum(local(t) for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor))
    return model, opt, n


def rank_main(rank: int, world: int, mode: str, args: dict[str, Any], init: str, base: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
    from torch.distributed.checkpoint.state_dict import get_state_dict

    import weightslab as wl
    from weightslab.components import CheckpointManager, checkpoint_on_step, get_checkpoint_system

    root = Path(base) / f"wl-{mode}"
    scratch = Path(base) / f"dcp-{mode}"
    model, opt, nbytes = build_fsdp(args["layers"], args["width"], world)
    options: dict[str, Any] = {} if mode == "async" else {"async_save": False}
    system = get_checkpoint_system(
        root_log_dir=root, checkpoint_frequency=1, keep_last=1, on_error="raise", **options
    )
    wl.register_model("model", model)
    wl.register_optimizer("optimizer", opt)
    wl.register_hyperparams("config", {"lr": 1e-4})
    pg = dist.new_group(backend="gloo")  # the DCP peers' own group, as weightslab has its own
    cached = DefaultStager(StagingOptions(False, False, False, False))

    def weightslab_save(step: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        checkpoint_on_step(step)
        t1 = time.perf_counter()
        system.flush()
        return t1 - t0, time.perf_counter() - t0

    def dcp_async(folder: Path, stager: Any) -> tuple[float, float]:
        t0 = time.perf_counter()
        msd, osd = get_state_dict(model, opt)
        extra = {} if stager is None else {"async_stager": stager}
        fut = dcp.async_save(
            {"model": msd, "optim": osd},
            storage_writer=FileSystemWriter(folder),
            process_group=pg,
            **extra,
        )
        t1 = time.perf_counter()
        fut.result()
        return t1 - t0, time.perf_counter() - t0

    def dcp_sync(folder: Path) -> tuple[float, float]:
        t0 = time.perf_counter()
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "optim": osd}, storage_writer=FileSystemWriter(folder), process_group=pg)
        t = time.perf_counter() - t0
        return t, t

    def run(peer: str, r: int) -> tuple[float, float]:
        folder = scratch / f"{PEERS.index(peer)}-{r}"
        if peer == WL:
            return weightslab_save(r + 1)
        if peer == DCP_DEFAULT:
            return dcp_async(folder, None)
        if peer == DCP_CACHED:
            return dcp_async(folder, cached)
        return dcp_sync(folder)

    rounds: list[dict[str, tuple[float, float]]] = []
    t_start = time.perf_counter()
    for r in range(args["repeats"] + 1):
        got: dict[str, tuple[float, float]] = {}
        for i in range(len(PEERS)):
            peer = PEERS[(r + i) % len(PEERS)]
            gc.collect()
            dist.barrier()
            got[peer] = run(peer, r)
            dist.barrier()  # both ranks' saves are over before the folder goes
            if rank == 0 and peer != WL:
                shutil.rmtree(scratch / f"{PEERS.index(peer)}-{r}")
        everyone: list[Any] = [None] * world
        dist.all_gather_object(everyone, got)
        worst = {p: (max(g[p][0] for g in everyone), max(g[p][1] for g in everyone)) for p in PEERS}
        rounds.append(worst)
        if rank == 0:
            shown = ", ".join(f"{SHORT[p]} {worst[p][0]:.2f}/{worst[p][1]:.2f}" for p in PEERS)
            print(f"[{mode}] round {r} (stall/durable s, slower rank): {shown}", flush=True)
    elapsed = time.perf_counter() - t_start
    failures = system.failures
    system.close()
    cached.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    facts: list[Any] = [None] * world
    dist.all_gather_object(facts, (nbytes, peak, failures))
    if rank == 0:
        report = CheckpointManager(root, mode="r").verify()
        result = {
            "rounds": rounds,
            "elapsed": elapsed,
            "bytes": [f[0] for f in facts],
            "peak_rss": [f[1] for f in facts],
            "failures": sum(f[2] for f in facts),
            "verify": {
                "checked": report.checked,
                "ok": report.ok,
                "problems": [str(p) for p in report.problems],
            },
        }
        (Path(base) / f"result-{mode}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / median(xs)


def ratio_cell(wl_xs: list[float], peer_xs: list[float]) -> tuple[str, str]:
    r = median(wl_xs) / median(peer_xs)
    s = max(spread(wl_xs), spread(peer_xs))
    return f"{r:.2f}x" + (" (noise)" if abs(r - 1) <= s else ""), f"{s * 100:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=8, help="Linear(width, width) layers (default 8)")
    parser.add_argument(
        "--width", type=int, default=2048, help="layer width (default 2048: 0.40 GB with AdamW, in all)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="rounds after the first (default 5)")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default ./.bench_tmp)")
    args = parser.parse_args()
    world = 2
    load_before = os.getloadavg()
    base_root = args.dir or Path.cwd() / ".bench_tmp"
    base_root.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(dir=base_root))
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    try:
        for mode in ("async", "sync"):
            init = "file://" + str(base / f"rendezvous-{mode}")
            mp.spawn(rank_main, args=(world, mode, vars(args), init, str(base)), nprocs=world)
            results[mode] = json.loads((base / f"result-{mode}.json").read_text())
    finally:
        shutil.rmtree(base, ignore_errors=True)
    total = time.perf_counter() - t0
    load_after = os.getloadavg()

    # series[(mode, name)] = the slower rank's seconds, rounds 2..N
    series: dict[tuple[str, str], list[float]] = {}
    first: dict[tuple[str, str], float] = {}
    for mode, res in results.items():
        for r, worst in enumerate(res["rounds"]):
            for peer in PEERS:
                stall, durable = worst[peer]
                names = [(f"{peer}: stall", stall), (f"{peer}: durable", durable)]
                if peer == WL:
                    names = [(f"weightslab {mode}: stall", stall), (f"weightslab {mode}: durable", durable)]
                    if mode == "sync":
                        names = [(f"weightslab {mode}: durable (the call)", stall)]
                elif peer == DCP_SYNC:
                    names = [(f"{peer}: durable (the call)", stall)]
                for n, t in names:
                    if r == 0:
                        first[(mode, n)] = t
                    else:
                        series.setdefault((mode, n), []).append(t)
    med = {k: median(v) for k, v in series.items()}

    def fastest(mode: str, kind: str) -> tuple[str, str]:
        """The peer series of ``mode``'s job with the lowest median of that kind (stall or durable)."""
        keys = [k for k in series if k[0] == mode and not k[1].startswith(WL)]
        if kind == "stall":  # a synchronous peer stalls for its whole save
            keys = [k for k in keys if k[1].endswith("stall") or k[1].startswith(DCP_SYNC)]
        else:
            keys = [k for k in keys if not k[1].endswith("stall")]
        return min(keys, key=lambda k: med[k])

    rows = []
    compared: set[tuple[tuple[str, str], tuple[str, str]]] = set()
    for label, wl_key, peer_key in [
        ("stall, async_save=True (s)", ("async", "weightslab async: stall"), fastest("async", "stall")),
        (
            "stall, async_save=True vs the same stager (s)",
            ("async", "weightslab async: stall"),
            ("async", f"{DCP_CACHED}: stall"),
        ),
        (
            "durable, async_save=True: call + flush (s)",
            ("async", "weightslab async: durable"),
            fastest("async", "durable"),
        ),
        (
            "durable, async_save=False: the call (s)",
            ("sync", "weightslab sync: durable (the call)"),
            fastest("sync", "durable"),
        ),
        (
            "durable, async_save=False vs dcp.save (s)",
            ("sync", "weightslab sync: durable (the call)"),
            ("sync", f"{DCP_SYNC}: durable (the call)"),
        ),
    ]:
        if (wl_key, peer_key) in compared:
            continue  # the fastest peer is already the like-for-like one
        compared.add((wl_key, peer_key))
        ratio, spr = ratio_cell(series[wl_key], series[peer_key])
        rows.append([label, f"{med[wl_key]:.3f}", f"{med[peer_key]:.3f} ({peer_key[1]})", ratio, spr])

    nbytes = results["async"]["bytes"]
    print(
        f"\nFSDP2, {world} ranks (gloo, loopback, CPU, 1 thread each), {args.layers} x Linear({args.width}, "
        f"{args.width}) + AdamW: {sum(nbytes) / 1e9:.3f} GB of tensors in all "
        f"({', '.join(f'{b / 1e9:.3f}' for b in nbytes)} GB per rank); {args.repeats} rounds after a first "
        f"one in each of 2 jobs, {total:.0f} s in all; {machine()}"
    )
    print(
        "load average (1, 5, 15 min) before: "
        + " ".join(f"{x:.2f}" for x in load_before)
        + "; after: "
        + " ".join(f"{x:.2f}" for x in load_after)
        + f" (the benchmark itself keeps both of the {os.cpu_count()} cores busy)"
    )
    for mode, res in results.items():
        rss = ", ".join(f"rank {i} {b / 1e6:.0f} MB" for i, b in enumerate(res["peak_rss"]))
        v = res["verify"]
        state = "OK" if not v["problems"] and v["checked"] == v["ok"] == 1 else f"PROBLEMS: {v}"
        print(
            f"job {mode}: {res['elapsed']:.0f} s; peak RSS {rss}; weightslab failures {res['failures']}; "
            f"verify of the weightslab root: {v['checked']} checked, {v['ok']} ok -> {state}"
        )
    print_table(
        "weightslab against the fastest peer of the same job (medians of rounds 2..N, slower rank)",
        ["figure", "weightslab", "fastest peer", "ratio", "spread"],
        rows,
    )
    print_table(
        "every series (seconds, slower rank of each round)",
        ["job", "series", "first round", "median", "spread", "rounds"],
        [
            [
                m,
                n,
                f"{first[m, n]:.3f}",
                f"{med[m, n]:.3f}",
                f"{spread(xs) * 100:.0f}%",
                ", ".join(f"{x:.2f}" for x in xs),
            ]
            for (m, n), xs in series.items()
        ],
    )


if __name__ == "__main__":
    main()
