"""Distributed training runs for the tests: ``python dist_worker.py MODE ROOT OUT WORLD [STEPS] [RESUME]``.

Every rank runs the documented loop (``get_checkpoint_system``, ``register_*``, ``resume()``,
``checkpoint_on_step``, ``close()``) through ``torch.multiprocessing.spawn`` with a ``file://``
rendezvous on loopback gloo. MODE is ``ddp`` (a DistributedDataParallel model with dropout and
per-rank seeds) or ``fsdp`` (FSDP2 ``fully_shard`` on a CPU mesh, uneven layers, AdamW). At the end
each run writes the full state it ended with to OUT (rank 0, after gathering shards):
``final.pt`` = {"model": state_dict, "optim": flattened FQN optimizer state, "exp_hash", "step"}.
WORLD 1 runs one plain process without a process group.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

FREQ = 4


def build(mode: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if mode == "ddp":
        return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Dropout(0.3), torch.nn.Linear(10, 3))
    return torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.ReLU(), torch.nn.Linear(13, 5))


def full_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, flatten_optimizer_state_dict=True)
    return get_state_dict(model, opt, options=options)


def train(rank: int, world: int, mode: str, root: str, out: str, steps: int, init: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    diverge = mode == "diverge"  # rank 1 registers another learning rate: the hashes differ
    mode = "ddp" if diverge else mode
    if world > 1:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    import weightslab as wl
    from weightslab.components import checkpoint_on_step, get_checkpoint_system
    from weightslab.errors import DistributedError

    model = build(mode)
    if mode == "ddp" and world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
    elif mode == "fsdp" and world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if mode == "ddp"
        else torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    )
    system = get_checkpoint_system(root_log_dir=root, checkpoint_frequency=FREQ, distributed_timeout=120.0)
    wl.register_model("net", model)
    wl.register_optimizer("opt", opt)
    lr = 0.05 if mode == "ddp" else 1e-2
    wl.register_hyperparams("hp", {"lr": lr * (2 if diverge and rank == 1 else 1), "mode": mode})
    torch.manual_seed(1000 + rank)  # per-rank streams: dropout and data differ by rank
    start = system.resume()
    n_in = 6 if mode == "ddp" else 7
    for step in range(start, steps + 1):
        x = torch.randn(8, n_in)
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        try:
            checkpoint_on_step(step, {"loss": float(loss.detach())})
        except DistributedError as exc:
            (Path(out) / f"error_{rank}.txt").write_text(f"{step} {exc.ranks} {exc}")
            system.close()
            if world > 1:
                dist.destroy_process_group()
            return
    system.flush()
    exp_hash = system.exp_hash
    inner = model.module if hasattr(model, "module") else model
    msd, osd = full_state(inner, opt)
    system.close()
    if rank == 0:
        torch.save(
            {"model": msd, "optim": osd, "exp_hash": exp_hash, "step": steps, "rng": torch.get_rng_state()},
            Path(out) / "final.pt",
        )
    if world > 1:
        torch.save(torch.get_rng_state(), Path(out) / f"rng_{rank}.pt")
        dist.destroy_process_group()


def reopen(rank: int, world: int, root: str, out: str, init: str) -> None:
    """Two checkpoint systems one after the other in one job; rank 1 arrives late at every save."""
    import time

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    import weightslab as wl
    from weightslab.components import checkpoint_on_step, get_checkpoint_system

    model = build("ddp")
    for phase in range(2):
        system = get_checkpoint_system(
            root_log_dir=f"{root}/p{phase}", checkpoint_frequency=1, distributed_timeout=120.0
        )
        wl.register_model("net", model)
        for step in range(1 + 10 * phase, 4 + 10 * phase):
            if rank == 1:
                time.sleep(0.2)  # not a synchronisation: it makes rank 0 reach each save first
            checkpoint_on_step(step)
        system.close()
        dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    mode, root, out, world = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    steps = int(sys.argv[5]) if len(sys.argv) > 5 else 12
    Path(out).mkdir(parents=True, exist_ok=True)
    if world == 1:
        train(0, 1, mode, root, out, steps, "")
        return
    init = "file://" + os.path.join(tempfile.mkdtemp(), "rendezvous")
    if mode == "reopen":
        mp.spawn(reopen, args=(world, root, out, init), nprocs=world)
        return
    mp.spawn(train, args=(world, mode, root, out, steps, init), nprocs=world)


if __name__ == "__main__":
    main()
