"""Training loops that tests/test_step_semantics.py runs in fresh processes.

``announced``: a loop that announces all three kinds of change after the optimizer step, each at a
step that is not a multiple of the frequency (an lr change at 13, pruning at 27, a freeze at 34).
With ``--snapshots DIR`` it copies the whole root after each of those commits (the root as a kill
right after that commit would leave it); with ``--resume`` it resumes instead and continues.

``rewind``: keep_last=1 and keep_best=1; ``--phase first`` trains 0..60; ``--phase back`` resumes
the best checkpoint (step 20), continues, checks after every commit that the continued run's newest
checkpoint exists, and kills itself with SIGKILL at step 55; ``--phase after`` resumes and reports.

Each run writes a JSON result: the loss of every step it trained (``float.hex``), the digest of the
state after each step, and the step ``resume()`` returned.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import torch
import xxhash

FREQUENCY = 10
TOTAL = 45
LR_AT, PRUNE_AT, FREEZE_AT = 13, 27, 34
SNAPSHOT_STEPS = (10, LR_AT, 20, PRUNE_AT, 30, FREEZE_AT, 40)


def state_digest(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> str:
    h = xxhash.xxh3_64()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    for pid, st in sorted(optimizer.state_dict()["state"].items()):
        for key, value in sorted(st.items()):
            h.update(f"{pid}.{key}".encode())
            h.update(torch.as_tensor(value).contiguous().numpy().tobytes())
    h.update(repr([g["lr"] for g in optimizer.param_groups]).encode())
    h.update(repr([p.requires_grad for p in model.parameters()]).encode())
    return h.hexdigest()


def build(pruned: bool) -> torch.nn.Sequential:
    torch.manual_seed(0)
    hidden = 16 if pruned else 32
    return torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 4))


def prune(model: torch.nn.Sequential) -> None:
    """Keep the first 16 hidden neurons (structured pruning, new modules)."""
    first, last = model[0], model[2]
    new_first, new_last = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)
    with torch.no_grad():
        new_first.weight.copy_(first.weight[:16])
        new_first.bias.copy_(first.bias[:16])
        new_last.weight.copy_(last.weight[:, :16])
        new_last.bias.copy_(last.bias)
    model[0], model[2] = new_first, new_last


def announced(args: argparse.Namespace) -> dict[str, Any]:
    import weightslab as wl
    from weightslab.components import (
        checkpoint_on_config_change,
        checkpoint_on_model_change,
        checkpoint_on_state_change,
        checkpoint_on_step,
        get_checkpoint_system,
    )

    system = get_checkpoint_system(root_log_dir=args.root, checkpoint_frequency=FREQUENCY)
    pruned = args.resume is not None and args.resume >= PRUNE_AT
    model = build(pruned)
    config = {"lr": 1e-2}
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    if args.resume is not None and args.resume >= FREEZE_AT:
        model[0].requires_grad_(False)
    wl.register_model("model", model)
    wl.register_optimizer("optimizer", optimizer)
    wl.register_hyperparams("config", config)
    start = system.resume()
    result: dict[str, Any] = {"start": start, "losses": {}, "digests": {}}
    for step in range(start, TOTAL):
        x, y = torch.randn(16, 8), torch.randn(16, 4)
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # each change after the update, announced, at a step that is not a multiple of FREQUENCY
        if step == LR_AT:
            config["lr"] = 5e-3
            for group in optimizer.param_groups:
                group["lr"] = config["lr"]
            checkpoint_on_config_change()
        if step == PRUNE_AT:
            prune(model)
            optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"])
            wl.register_optimizer("optimizer", optimizer)
            checkpoint_on_model_change()
        if step == FREEZE_AT:
            model[0].requires_grad_(False)
            checkpoint_on_state_change("freeze")
        checkpoint_on_step(step, metrics={"loss": loss.item()})
        result["losses"][step] = loss.item().hex()
        result["digests"][step] = state_digest(model, optimizer)
        if args.snapshots is not None and step in SNAPSHOT_STEPS:
            system.flush()
            shutil.copytree(args.root, args.snapshots / str(step))
    system.close()
    return result


def val_of(step: int) -> float:
    return abs(step - 20) / 100 + 0.01  # step 20 is the best, and stays so


def rewind(args: argparse.Namespace) -> dict[str, Any]:
    import weightslab as wl
    from weightslab.components import checkpoint_on_step, get_checkpoint_system

    system = get_checkpoint_system(
        root_log_dir=args.root, checkpoint_frequency=FREQUENCY, keep_last=1, keep_best=1, monitor="val"
    )
    model = build(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    wl.register_model("model", model)
    wl.register_optimizer("optimizer", optimizer)
    start = system.resume("best" if args.phase == "back" else "latest")
    result: dict[str, Any] = {"start": start, "losses": {}, "digests": {}, "commits": []}
    result["resumed_digest"] = state_digest(model, optimizer)
    if args.phase == "after":
        system.close()
        return result
    for step in range(start, 61):
        loss = torch.nn.functional.mse_loss(model(torch.randn(16, 8)), torch.randn(16, 4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        checkpoint_on_step(step, metrics={"val": val_of(step)})
        result["digests"][step] = state_digest(model, optimizer)
        if step % FREQUENCY == 0 and args.phase == "back":
            system.flush()
            manifest = system.manager.manifest(system.exp_hash or "")
            latest = manifest.latest()
            path = system.manager.experiment(manifest.exp_hash).resolve(latest.file) if latest else None
            result["commits"].append(
                {
                    "step": step,
                    "latest": None if latest is None else latest.step,
                    "exists": path is not None and path.is_file(),
                    "kept": [e.step for e in manifest.checkpoints],
                }
            )
        if args.phase == "back" and step == 55:
            args.out.write_text(json.dumps(result))
            os.kill(os.getpid(), signal.SIGKILL)
    system.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["announced", "rewind"])
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--snapshots", type=Path, default=None)
    parser.add_argument("--resume", type=int, default=None, help="the step of the checkpoint resumed")
    parser.add_argument("--phase", choices=["first", "back", "after"], default="first")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = announced(args) if args.scenario == "announced" else rewind(args)
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
