"""Lightning runs for the tests: ``python lightning_worker.py MODE ROOT OUT MAX_STEPS [options]``.

MODE ``fit`` trains :class:`TinyModule` (dropout, SGD with momentum, a per-step LR schedule) on a
shuffled, seeded dataset with :class:`WeightslabCheckpoint` and ``ckpt_path=cb.resume_path()``, then
writes the state it ended with to OUT (:func:`final_state`). ``--gate N --ready FILE`` makes the run
stop after step N's batch: it creates FILE and waits there for ever (the test kills it with SIGKILL).
MODE ``ddp`` runs the same on 2 CPU ranks (gloo on loopback, a ``file://`` rendezvous the worker
initialises itself, so Lightning launches nothing): an uninterrupted run to MAX_STEPS in ROOT/full,
and a run stopped at ``--stop`` and resumed to MAX_STEPS in ROOT/resumed, each rank writing
OUT/{full,resumed}_rank{r}.pt.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from weightslab.integrations.lightning import WeightslabCheckpoint

BATCH = 8
SAMPLES = 80  # 10 batches an epoch: step 10k ends epoch k-1


class TinyModule(pl.LightningModule):
    """A small regression model with dropout, so that a resume that loses the RNG shows."""

    def __init__(
        self, lr: float = 0.05, momentum: float = 0.9, hidden: int = 16, interval: str = "step"
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(6, hidden), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(hidden, 1)
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
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)
        step_size = 7 if self.hparams.interval == "step" else 1  # both change the lr within 60 steps
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.hparams.interval}}


def dataset(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, :3].sum(dim=1, keepdim=True) * 0.5).sin() + 0.05 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def loaders(val: bool = True, val_generator: bool = True) -> tuple[DataLoader, DataLoader | None]:
    """The shuffled training loader (global RNG) and a validation loader with its own generator.

    The validation loader's generator keeps its iterator from drawing on the global RNG: Lightning
    skips the validation due right after a checkpoint it resumes from, so a draw there would be
    one the resumed run never makes.
    """
    train = DataLoader(dataset(SAMPLES, 1), batch_size=BATCH, shuffle=True)
    if not val:
        return train, None
    generator = torch.Generator().manual_seed(0) if val_generator else None
    return train, DataLoader(dataset(24, 2), batch_size=BATCH, generator=generator)


def trainer(max_steps: int, callbacks: list[Any], **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "deterministic": True,
        "num_sanity_val_steps": 0,
    }
    options.update(kwargs)
    return pl.Trainer(max_steps=max_steps, callbacks=callbacks, **options)


def final_state(module: pl.LightningModule, tr: pl.Trainer) -> dict[str, Any]:
    """Everything a bit-exact comparison looks at: parameters, optimizer and scheduler states, step."""
    return {
        "params": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "optimizers": [o.state_dict() for o in tr.optimizers],
        "schedulers": [c.scheduler.state_dict() for c in tr.lr_scheduler_configs],
        "global_step": tr.global_step,
        "rng": torch.get_rng_state(),
    }


class Gate(pl.Callback):
    """After step ``at``'s batch: create ``ready`` and wait for ever (the test kills the process)."""

    def __init__(self, at: int, ready: Path) -> None:
        self.at, self.ready = at, ready

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at:
            self.ready.write_text(str(os.getpid()))
            threading.Event().wait()


def fit(
    root: Path,
    max_steps: int,
    *,
    lr: float = 0.05,
    gate: tuple[int, Path] | None = None,
    val: bool = True,
    val_generator: bool = True,
    interval: str = "step",
    extra: list[pl.Callback] | None = None,
    trainer_options: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[dict[str, Any], WeightslabCheckpoint]:
    """One run as a user script writes it: seed, build, ``fit(ckpt_path=cb.resume_path())``."""
    options.setdefault("checkpoint_frequency", 20)
    options.setdefault("async_save", True)
    pl.seed_everything(0, verbose=False)
    module = TinyModule(lr=lr, interval=interval)
    cb = WeightslabCheckpoint(root_log_dir=root, **options)
    callbacks: list[Any] = [*(extra or []), cb] if gate is None else [Gate(*gate), cb]
    tr = trainer(max_steps, callbacks, **(trainer_options or {}))
    train, valid = loaders(val, val_generator)
    tr.fit(module, train, valid, ckpt_path=cb.resume_path())
    return final_state(module, tr), cb


def _ddp_rank(rank: int, root: str, out: str, max_steps: int, stop: int, init: str) -> None:
    os.environ.update(
        {"GLOO_SOCKET_IFNAME": "lo", "LOCAL_RANK": str(rank), "NODE_RANK": "0", "WORLD_SIZE": "2"}
    )
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"})  # never dialled: the group exists
    os.environ.pop("PL_GLOBAL_SEED", None)  # else Lightning's DDP setup re-seeds every rank alike
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    from lightning.pytorch.strategies import DDPStrategy

    def run(where: str, steps: int) -> dict[str, Any]:
        torch.manual_seed(0)  # not seed_everything: Lightning would re-seed every rank alike
        module = TinyModule()
        torch.manual_seed(100 + rank)  # the ranks' dropout streams differ (the step file keeps each)
        cb = WeightslabCheckpoint(root_log_dir=Path(root) / where, checkpoint_frequency=20)
        tr = trainer(steps, [cb], devices=2, strategy=DDPStrategy(process_group_backend="gloo"))
        train, valid = loaders()
        tr.fit(module, train, valid, ckpt_path=cb.resume_path())
        return final_state(module, tr)

    torch.save(run("full", max_steps), Path(out) / f"full_rank{rank}.pt")
    run("resumed", stop)
    torch.save(run("resumed", max_steps), Path(out) / f"resumed_rank{rank}.pt")
    torch.distributed.destroy_process_group()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["fit", "ddp"])
    parser.add_argument("root", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("max_steps", type=int)
    parser.add_argument("--gate", type=int)
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--stop", type=int, default=0)
    args = parser.parse_args(argv)
    if args.mode == "fit":
        gate = (args.gate, args.ready) if args.gate is not None else None
        state, _ = fit(args.root, args.max_steps, gate=gate)
        torch.save(state, args.out)
        return
    import torch.multiprocessing as mp

    args.out.mkdir(parents=True, exist_ok=True)
    init = f"file://{args.root.resolve()}.rdzv"
    # fork: the children start with Lightning imported (a spawn would import it twice more)
    mp.start_processes(
        _ddp_rank,
        args=(str(args.root), str(args.out), args.max_steps, args.stop, init),
        nprocs=2,
        start_method="fork",
    )


if __name__ == "__main__":
    # run as this module, not as __main__: the experiment hash covers the LightningModule's class path,
    # and the test process knows it as tests.integrations.lightning_worker.TinyModule
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.integrations.lightning_worker import main as module_main

    module_main(sys.argv[1:])
