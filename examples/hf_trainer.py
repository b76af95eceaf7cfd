"""weightslab with the Hugging Face Trainer: checkpoint a run, stop it, resume it where it stopped.

    python examples/hf_trainer.py [ROOT]          (default ROOT: runs/hf_trainer)

A 2-layer BERT classifier, built from a config (nothing is downloaded), learns a synthetic task
(is the first token below 50?) for 60 update steps, evaluated every 15 steps:
  run 1: trains and is stopped after step 50, as a preempted job would be (the callback saves that
         last step);
  run 2: a new model, Trainer and callback, as a restarted job builds them; `callback.resume_path()`
         gives the Trainer a checkpoint-50/ folder built from the newest weightslab checkpoint, and
         the Trainer resumes there (weights, optimizer, scheduler, RNG, data position) and finishes.
Both runs share this process to keep the example short; the tests resume in a new process too.
Checkpoints every 15 steps, keeping the newest 2 and the best by eval_accuracy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach the Hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    EvalPrediction,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

from weightslab.components import CheckpointManager
from weightslab.integrations.transformers import WeightslabCallback

TOTAL_STEPS, STOP_AFTER, EVERY = 60, 50, 15


class FirstTokenTask(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Sequences of 12 random tokens; the label says whether the first one is below 50."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(1, 100, (n, 12), generator=g)
        self.labels = (self.tokens[:, 0] < 50).long()

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i], "labels": self.labels[i]}


def accuracy(pred: EvalPrediction) -> dict[str, float]:
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == pred.label_ids).mean())}


class StopAfter(TrainerCallback):
    """Stops training after update step ``step`` (what a preemption handler would do)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True


def train(root: Path, stop_after: int | None) -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    args = TrainingArguments(
        output_dir=str(root.with_name(f"{root.name}_hf_output")),
        save_strategy="no",  # weightslab saves; the Trainer's own checkpoints would only duplicate them
        eval_strategy="steps",
        eval_steps=EVERY,
        logging_steps=EVERY,
        max_steps=TOTAL_STEPS,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        warmup_steps=10,
        seed=0,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    cb = WeightslabCallback(
        root_log_dir=root,
        checkpoint_frequency=EVERY,
        keep_last=2,
        keep_best=1,
        monitor="eval_accuracy",
        mode="max",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=FirstTokenTask(256, seed=1),
        eval_dataset=FirstTokenTask(64, seed=2),
        compute_metrics=accuracy,
        callbacks=[cb],
    )
    trainer.remove_callback(PrinterCallback)
    if stop_after is not None:
        trainer.add_callback(StopAfter(stop_after))
    path = cb.resume_path()  # None on a fresh root
    print(f"[run] resume_from_checkpoint={path}")
    trainer.train(resume_from_checkpoint=path)
    evals = [e for e in trainer.state.log_history if "eval_accuracy" in e]
    print(
        f"[run] stopped at step {trainer.state.global_step}; eval_accuracy {evals[-1]['eval_accuracy']:.3f}; "
        f"resume folder still there: {path is not None and Path(path).exists()}"
    )


def report(root: Path) -> None:
    mgr = CheckpointManager(root, mode="r")
    print(f"\nCheckpoint root: {root}")
    for h in mgr.experiments():
        print(f"  experiment {h}: learning_rate {mgr.read_config(h)['training_args']['learning_rate']}")
        for e in mgr.manifest(h).checkpoints:
            print(
                f"      step {e.step:4d}  {e.trigger:<5} eval_accuracy={e.metrics.get('eval_accuracy', float('nan')):.3f}"
                f"  {e.file}"
            )
    for event in mgr.events():
        if event["event"] == "resumed":
            print(f"  journal: resumed {event['exp_hash']} at step {event['step']} from {event['file']}")
    print(f"look again any time: weightslab ls {root}; weightslab show {root} HASH")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", nargs="?", default="runs/hf_trainer", type=Path)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)  # a model this small trains faster on one thread than on two
    t0 = time.perf_counter()
    shutil.rmtree(args.root, ignore_errors=True)
    print(f"run 1: train, stopped after step {STOP_AFTER}")
    train(args.root, STOP_AFTER)
    print("\nrun 2: build everything again and resume")
    train(args.root, None)
    report(args.root)
    print(f"\nhf_trainer done in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
