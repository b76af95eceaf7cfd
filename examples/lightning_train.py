"""weightslab with PyTorch Lightning: a Trainer run that is stopped, resumes exactly, and is checked.

    python examples/lightning_train.py [ROOT]          (default ROOT: runs/lightning)

A small regression LightningModule (dropout, AdamW, a cosine LR schedule) trains on a shuffled
dataset for 100 steps (10 epochs of 10 batches) with ``WeightslabCheckpoint``:
  run 1: starts from scratch and is stopped after step 60 (as if the job was preempted);
  run 2: builds everything again and continues with ``ckpt_path=cb.resume_path()``, to step 100.
A third, uninterrupted run in another root shows that the resumed run ends with the same weights,
bit for bit. Then it prints what is in the root.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from weightslab.components import CheckpointManager
from weightslab.integrations.lightning import WeightslabCheckpoint

TOTAL_STEPS, STOP_AT = 100, 60


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 3e-3, hidden: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()  # what the experiment hash covers, with the architecture
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, hidden), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(hidden, 1)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=TOTAL_STEPS)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def data() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(352, 8, generator=g)
    y = torch.sin(x[:, :3].sum(dim=1, keepdim=True)) + 0.1 * x[:, 3:4]
    train = DataLoader(TensorDataset(x[:320], y[:320]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[320:], y[320:]), batch_size=32, generator=torch.Generator())
    return train, val


def run(root: Path, max_steps: int) -> tuple[Regressor, WeightslabCheckpoint]:
    """What a training script does: build everything, then fit from wherever the root left off."""
    L.seed_everything(0, verbose=False)
    model = Regressor()
    cb = WeightslabCheckpoint(root_log_dir=root, checkpoint_frequency=25, monitor="val_loss", keep_best=2)
    trainer = L.Trainer(
        max_steps=max_steps,
        callbacks=[cb],
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    ckpt_path = cb.resume_path()  # None on a fresh root
    print(
        f"[run] max_steps={max_steps}, ckpt_path={ckpt_path and Path(ckpt_path).relative_to(root.resolve())}"
    )
    trainer.fit(model, *data(), ckpt_path=ckpt_path)
    print(
        f"[run] stopped at global_step {trainer.global_step}; val_loss {trainer.callback_metrics['val_loss']:.4f}"
    )
    return model, cb


def report(root: Path) -> None:
    mgr = CheckpointManager(root, mode="r")
    print(f"\nCheckpoint root: {root}")
    for h in mgr.experiments():
        print(f"  experiment {h}: hparams {mgr.read_config(h)['hparams']}")
        for e in mgr.checkpoints(h):
            metrics = ", ".join(f"{k}={v:.4f}" for k, v in e.metrics.items() if v is not None)
            print(f"      step {e.step:4d}  {e.trigger:<6} {e.file}  {metrics}")
    resumed = [e for e in mgr.events() if e["event"] == "resumed"]
    for e in resumed:
        print(
            f"  journal: resumed {e['exp_hash']} at step {e['step']} from {e['file']} (through {e['mode']})"
        )
    verified = mgr.verify()
    print(
        f"  verify: {verified.ok}/{verified.checked} checkpoints verify; problems: {len(verified.problems)}"
    )
    print(f"look again any time: weightslab ls {root}; weightslab show {root} HASH")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", nargs="?", default="runs/lightning", type=Path)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # keep the output to what we print
    warnings.filterwarnings("ignore", module="lightning")
    t0 = time.perf_counter()
    shutil.rmtree(args.root, ignore_errors=True)
    run(args.root, STOP_AT)
    resumed, _ = run(args.root, TOTAL_STEPS)
    reference_root = args.root.with_name(args.root.name + "-uninterrupted")
    shutil.rmtree(reference_root, ignore_errors=True)
    reference, _ = run(reference_root, TOTAL_STEPS)
    theirs = reference.state_dict()
    same = all(torch.equal(w, theirs[k]) for k, w in resumed.state_dict().items())
    print(f"[check] stopped + resumed == uninterrupted, every weight bit for bit: {same}")
    report(args.root)
    print(f"\nlightning example done in {time.perf_counter() - t0:.1f}s")
    if not same:
        raise SystemExit("the resumed run differs from the uninterrupted one")


if __name__ == "__main__":
    main()
