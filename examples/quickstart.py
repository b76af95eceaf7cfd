"""weightslab quickstart: a real training loop that checkpoints, changes, is stopped and resumes.

    python examples/quickstart.py [ROOT]          (default ROOT: runs/quickstart)

It trains a small MLP on synthetic data for 400 steps (0 to 399) in two processes:
  run 1: trains, changes the learning rate at step 100, and is stopped before step 180 (the exit
         saves its last step, 179);
  run 2: resumes at step 180, prunes the hidden layer at step 220, freezes the first layer at
         step 300 and finishes at step 399, which close() saves as the `last` checkpoint.
Each change is made after that step's optimizer update and announced; the checkpoint labelled s
always holds the state after step s's update. Then it prints where everything went.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

import weightslab as wl
from weightslab.components import (
    CheckpointManager,
    checkpoint_on_model_change,
    checkpoint_on_state_change,
    checkpoint_on_step,
    get_checkpoint_system,
)

TOTAL_STEPS = 400
LR_CHANGE_AT, STOP_AT, PRUNE_AT, FREEZE_AT = 100, 180, 220, 300


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = torch.sin(x[:, :4].sum(dim=1, keepdim=True)) + 0.1 * x[:, 4:5]
    return x, y


def prune_hidden(model: torch.nn.Sequential, keep: int) -> None:
    """Keep the ``keep`` hidden neurons with the largest weight norm (structured pruning)."""
    first, last = model[0], model[2]
    idx = first.weight.norm(dim=1).topk(keep).indices.sort().values
    new_first, new_last = torch.nn.Linear(16, keep), torch.nn.Linear(keep, 1)
    with torch.no_grad():
        new_first.weight.copy_(first.weight[idx])
        new_first.bias.copy_(first.bias[idx])
        new_last.weight.copy_(last.weight[:, idx])
        new_last.bias.copy_(last.bias)
    model[0], model[2] = new_first, new_last


def train(root: Path, stop_at: int | None) -> None:
    system = get_checkpoint_system(
        root_log_dir=root, checkpoint_frequency=50, keep_last=4, keep_best=1, monitor="val/loss"
    )
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    config = {"lr": 1e-2, "batch_size": 64, "hidden": 64}
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    wl.register_model("model", model)
    wl.register_optimizer("optimizer", optimizer)
    wl.register_hyperparams("config", config)

    start = system.resume()  # 0 on a fresh root, else the step after the last checkpoint
    print(f"[run] starting at step {start} in experiment {system.exp_hash or '(new)'}; lr={config['lr']}")
    x_train, y_train = make_data(4096, seed=1)
    x_val, y_val = make_data(512, seed=2)

    for step in range(start, TOTAL_STEPS):
        if stop_at is not None and step == stop_at:
            print(f"[run] stopped before step {step} (as if preempted)")
            return  # the exit flushes the save in flight and saves the last step seen

        idx = torch.randint(0, len(x_train), (config["batch_size"],))
        loss = torch.nn.functional.mse_loss(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        if step == LR_CHANGE_AT:
            config["lr"] = 3e-3  # detected automatically by this step's checkpoint_on_step
            for group in optimizer.param_groups:
                group["lr"] = config["lr"]
        if step == PRUNE_AT:
            prune_hidden(model, keep=32)
            config["hidden"] = 32
            optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"])
            wl.register_optimizer("optimizer", optimizer)
            checkpoint_on_model_change()  # announced: saved by this step's call, in a new experiment
        if step == FREEZE_AT:
            for p in model[0].parameters():
                p.requires_grad_(False)
            checkpoint_on_state_change("freeze")  # saved at this step, trigger "freeze"

        with torch.no_grad():
            val = torch.nn.functional.mse_loss(model(x_val), y_val).item()
        checkpoint_on_step(step, metrics={"train/loss": loss.item(), "val/loss": val})
    system.close()  # saves the last step (399) with trigger "last"
    print(f"[run] finished {TOTAL_STEPS} steps; final val/loss {val:.4f}")


def report(root: Path) -> None:
    from weightslab.cli import console

    print(f"\nCheckpoint root: {root}")
    console.print_summary(root)  # the same table as `weightslab ls ROOT`
    console.print_tree(root)  # and `weightslab tree ROOT`
    mgr = CheckpointManager(root, mode="r")
    for h in mgr.experiments():
        m = mgr.manifest(h)
        print(f"  {h}: config {mgr.read_config(h)['config']}")
        for e in m.checkpoints:
            metrics = ", ".join(f"{k}={v:.4f}" for k, v in e.metrics.items() if v is not None)
            print(f"      step {e.step:4d}  {e.trigger:<13} {e.file}  {metrics}")
    verified = mgr.verify()
    print(
        f"\nverify: {verified.ok}/{verified.checked} checkpoints verify; problems: {len(verified.problems)}"
    )
    print(f"journal: {mgr.layout.events_file} ({len(mgr.events())} events)")
    print(f"look again any time: weightslab ls {root}; weightslab tree {root}; weightslab show {root} HASH")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", nargs="?", default="runs/quickstart", type=Path)
    parser.add_argument("--phase", choices=["all", "train"], default="all")
    parser.add_argument("--stop-at", type=int, default=None)
    args = parser.parse_args()
    if args.phase == "train":
        train(args.root, args.stop_at)
        return
    t0 = time.perf_counter()
    shutil.rmtree(args.root, ignore_errors=True)
    for stop in (["--stop-at", str(STOP_AT)], []):
        print(f"$ python {Path(__file__).name} {args.root} --phase train {' '.join(stop)}")
        subprocess.run([sys.executable, __file__, str(args.root), "--phase", "train", *stop], check=True)
    report(args.root)
    print(f"\nquickstart done in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
