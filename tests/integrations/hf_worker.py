"""Hugging Face Trainer runs for tests/integrations/test_transformers.py, in this process or a fresh one.

    python tests/integrations/hf_worker.py ROOT OUT [--stop-at N | --block-at N] [--frequency F]
        [--threads T] [--resume] [--plain]

Every run trains the same tiny GPT-2 (2 layers, built from a config, dropout on) on 64 random token
sequences shuffled by the default sampler (16 update steps per epoch, 60 steps in all), evaluating
every 10 steps with an EarlyStoppingCallback whose counter is part of the Trainer state. With
``--resume`` it passes ``callback.resume_path()`` to ``trainer.train``. ``--stop-at N`` stops training
after step N (``control.should_training_stop``, as a preemption handler would); ``--block-at N``
prints ``blocked at N`` after step N and waits for stdin, for the parent to kill it. ``--plain`` runs
without the callback (the uninterrupted reference). OUT receives ``final.pt`` (every parameter and
optimizer state tensor) and ``result.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # the test's subprocess never reaches the Hub; imported by the tests, it leaves their process's
    # environment alone (the analysis tests talk to a local Hub server in the same process)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from transformers import (
    EarlyStoppingCallback,
    GPT2Config,
    GPT2LMHeadModel,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

from weightslab.integrations.transformers import WeightslabCallback

MAX_STEPS = 60
BATCH = 4
SAMPLES = 64  # 16 update steps per epoch
LOGGING_STEPS = 10


class TokenDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random token sequences (fixed by ``seed``) as the dicts a causal LM takes."""

    def __init__(self, n: int, length: int = 16, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(1, 100, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


def tiny_model() -> GPT2LMHeadModel:
    """A 2-layer GPT-2 from a config (tied embeddings, dropout 0.1), the same weights every call."""
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config)


def training_args(output_dir: str | Path, **overrides: Any) -> TrainingArguments:
    """The arguments every run uses: CPU, no Hub, no HF checkpoints, eval every 10 steps."""
    options: dict[str, Any] = {
        "output_dir": str(output_dir),
        "use_cpu": True,
        "report_to": [],
        "save_strategy": "no",
        "logging_steps": LOGGING_STEPS,
        "eval_strategy": "steps",
        "eval_steps": 10,
        "metric_for_best_model": "eval_loss",
        "restore_callback_states_from_checkpoint": True,
        "seed": 7,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "max_steps": MAX_STEPS,
        "per_device_train_batch_size": BATCH,
        "per_device_eval_batch_size": 8,
        "learning_rate": 2e-3,
        "warmup_steps": 5,
        "weight_decay": 0.01,
    }
    options.update(overrides)
    return TrainingArguments(**options)


class StopAt(TrainerCallback):
    """Stops training after update step ``step``, or (``block``) waits there for the parent's SIGKILL."""

    def __init__(self, step: int, *, block: bool = False) -> None:
        self.step, self.block = step, block

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step != self.step:
            return
        if self.block:
            print(f"blocked at {self.step}", flush=True)
            sys.stdin.read()  # the parent kills this process; it never writes
        control.should_training_stop = True


def build(
    root: Path | None, output_dir: Path, *, callback_options: dict[str, Any] | None = None, **args: Any
) -> tuple[Trainer, WeightslabCallback | None, EarlyStoppingCallback]:
    """The Trainer of every run (``root=None``: without weightslab), its callback and early stopper."""
    early = EarlyStoppingCallback(early_stopping_patience=1000)
    callbacks: list[TrainerCallback] = [early]
    cb = None
    if root is not None:
        cb = WeightslabCallback(root_log_dir=root, **(callback_options or {}))
        callbacks.append(cb)
    trainer = Trainer(
        model=tiny_model(),
        args=training_args(output_dir, **args),
        train_dataset=TokenDataset(SAMPLES),
        eval_dataset=TokenDataset(16, seed=2),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm prints every log line instead of a bar
    return trainer, cb, early


def final_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, and every optimizer state tensor, by a stable name."""
    out = {f"model.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}
    assert trainer.optimizer is not None
    for pid, st in trainer.optimizer.state_dict()["state"].items():
        for key, value in st.items():
            out[f"optimizer.{pid}.{key}"] = torch.as_tensor(value).clone()
    return out


def early_stopping_counter(trainer: Trainer) -> int:
    """The patience counter of the EarlyStoppingCallback the Trainer runs now (restored on resume)."""
    found = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, EarlyStoppingCallback)]
    return int(found[0].early_stopping_patience_counter)


def run(
    root: Path | None,
    out: Path,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    block_at: int | None = None,
    callback_options: dict[str, Any] | None = None,
    **args: Any,
) -> dict[str, Any]:
    """Train (``resume``: from ``callback.resume_path()``), write OUT/final.pt, return the result."""
    out.mkdir(parents=True, exist_ok=True)
    output_dir = args.pop("output_dir", out / "hf_output")
    trainer, cb, _ = build(root, output_dir, callback_options=callback_options, **args)
    if stop_at is not None or block_at is not None:
        trainer.add_callback(StopAt(stop_at or block_at or 0, block=block_at is not None))
    path = cb.resume_path() if (resume and cb is not None) else None
    trainer.train(resume_from_checkpoint=path)
    torch.save(final_state(trainer), out / "final.pt")
    result = {
        "resume_path": path,
        "resume_path_exists_after": path is not None and Path(path).exists(),
        "global_step": trainer.state.global_step,
        "losses": {str(e["step"]): e["loss"] for e in trainer.state.log_history if "loss" in e},
        "eval_losses": {
            str(e["step"]): e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e
        },
        "best_metric": trainer.state.best_metric,
        "early_stopping_counter": early_stopping_counter(trainer),
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--stop-at", type=int)
    parser.add_argument("--block-at", type=int)
    parser.add_argument("--frequency", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--plain", action="store_true")
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    hf_logging.set_verbosity_error()
    run(
        None if a.plain else a.root,
        a.out,
        resume=a.resume,
        stop_at=a.stop_at,
        block_at=a.block_at,
        callback_options={"checkpoint_frequency": a.frequency},
    )


if __name__ == "__main__":
    main()
