"""Live configuration: edit the YAML file of a running training and watch the run follow.

The training reads its hyperparameters from ``runs/live_config/train.yaml``, registered with
``watch=True``. A timer plays the researcher: it changes ``lr`` (saving like an editor does, by
renaming a temporary file over the original), then saves a broken edit, then fixes it. Valid edits
reach the optimizer at once (``apply_lr_changes``) and become new experiments at the next
checkpoint, each linked to its parent; the broken one changes nothing and is journalled. At the
end ``set_hyperparam`` changes ``lr`` from code and the file is written back to match.

Run from any folder: ``python examples/live_config.py``; everything goes under ``runs/live_config``.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

import weightslab as wl
from weightslab.components import CheckpointManager, checkpoint_on_step, get_checkpoint_system

OUT = Path("runs/live_config")
CONFIG_FILE = OUT / "train.yaml"
ROOT = OUT / "experiments"
FREQUENCY = 20  # checkpoint every 20 steps
STEP_SECONDS = 0.01  # a real step takes longer; this keeps the example short
# Each edit is waited for as an event (the watcher's callback), not in a time window, so a loaded
# machine only makes the example slower. This is only the guard against a hang: an edit that never
# arrives (a network disk without change notifications).
DEADLINE = 600.0

INITIAL = """\
# Hyperparameters of the live_config example. Edit me while it runs.
lr: 0.1          # read by the optimizer through wl.apply_lr_changes()
batch_size: 64
hidden: 32
"""


def save_like_an_editor(path: Path, text: str) -> None:
    """Write a temporary file and rename it over the original, as most editors do."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Run:
    """What the training thread and the watcher's callbacks share."""

    def __init__(self) -> None:
        self.step = 0
        self.applied = threading.Event()
        self.rejected = threading.Event()
        self.editor_done = threading.Event()


def researcher(run: Run) -> None:
    """The timer's job: three saves of the file, each after the run has seen the one before."""
    text = CONFIG_FILE.read_text(encoding="utf-8")
    for new_text, seen in (
        (text.replace("lr: 0.1 ", "lr: 0.05"), run.applied),
        (text.replace("lr: 0.1 ", "lr: [0.02"), run.rejected),  # a YAML syntax error
        (text.replace("lr: 0.1 ", "lr: 0.02"), run.applied),
    ):
        seen.clear()
        save_like_an_editor(CONFIG_FILE, new_text)
        if not seen.wait(timeout=DEADLINE):
            print(f"  (the edit was not seen within {DEADLINE:.0f} s)")
            break
        time.sleep(0.3)
    run.editor_done.set()


def main() -> None:
    started = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)  # the example's own output: start fresh each time
    OUT.mkdir(parents=True)
    CONFIG_FILE.write_text(INITIAL, encoding="utf-8")
    print("weightslab live configuration example")
    print(f"  config file:  {CONFIG_FILE} (watched; edit it while the example runs)")
    print(f"  checkpoints:  {ROOT}")

    system = get_checkpoint_system(root_log_dir=ROOT, checkpoint_frequency=FREQUENCY, durable=False)
    run = Run()
    try:
        config = wl.register_hyperparams("config", CONFIG_FILE, watch=True, check_types=True)
        torch.manual_seed(0)
        torch.set_num_threads(1)  # a model this small runs fastest on one thread
        model = torch.nn.Sequential(
            torch.nn.Linear(8, config["hidden"]), torch.nn.Tanh(), torch.nn.Linear(config["hidden"], 1)
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
        wl.register_model("model", model)
        wl.register_optimizer("optimizer", optimizer)
        wl.apply_lr_changes("lr")  # an edit of lr reaches the optimizer's param groups

        def on_change(name: str, keys: tuple[str, ...], values: Any) -> None:
            lr = optimizer.param_groups[0]["lr"]
            print(
                f"[step {run.step:3d}] {name} changed ({', '.join(keys)}): lr={values['lr']}, optimizer lr={lr}"
            )
            run.applied.set()

        def on_event(event: wl.LedgerEvent) -> None:
            if event.action == "rejected":
                print(f"[step {run.step:3d}] edit rejected, nothing changed: {event.detail}")
                run.rejected.set()

        wl.on_hyperparams_change(on_change)
        wl.get_ledger().add_listener(on_event)
        # the researcher starts editing a little after the first checkpoint
        timer = threading.Timer(0.05, researcher, args=(run,))
        timer.daemon = True

        x = torch.randn(256, 8)
        y = x.sum(dim=1, keepdim=True).sin()
        set_from_code_at: int | None = None
        while True:
            batch = torch.randint(0, len(x), (config["batch_size"],))
            loss = torch.nn.functional.mse_loss(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            checkpoint_on_step(run.step, metrics={"train/loss": loss.item()})
            time.sleep(STEP_SECONDS)
            run.step += 1
            if run.step == FREQUENCY + 5:
                timer.start()
            if run.editor_done.is_set() and set_from_code_at is None and run.step % FREQUENCY == 5:
                set_from_code_at = run.step
                wl.set_hyperparam("lr", 0.01)  # from code: same path, and the file is rewritten
                print(f"[step {run.step:3d}] set_hyperparam('lr', 0.01) wrote {CONFIG_FILE} back:")
                print("    " + CONFIG_FILE.read_text(encoding="utf-8").replace("\n", "\n    ").rstrip())
            if set_from_code_at is not None and run.step >= set_from_code_at + FREQUENCY:
                break
            if time.monotonic() - started > DEADLINE:
                raise SystemExit(f"the edits did not arrive within {DEADLINE}s; is {OUT} on a local disk?")
        timer.join()
    finally:
        system.close()  # flushes saves and stops the watcher (its threads are joined)
        wl.clear_ledger()

    reader = CheckpointManager(ROOT, mode="r")
    print(f"\nexperiments in {ROOT / 'checkpoints'} (oldest first):")
    for exp_hash in reader.experiments():
        manifest = reader.manifest(exp_hash)
        parent = manifest.parent
        origin = "first" if parent is None else f"from {parent.exp_hash} step {parent.step} ({parent.reason})"
        saved = ", ".join(f"{e.step} ({e.trigger})" for e in manifest.checkpoints)
        lr = reader.read_config(exp_hash)["config"]["lr"]
        print(f"  {exp_hash}  lr={lr:<5}  {origin}")
        print(f"      checkpoints: {saved}")
        print(f"      manifest:    {os.path.relpath(reader.experiment(exp_hash).manifest)}")
    counts = Counter(e["event"] for e in reader.events())
    journal = ROOT / "logs" / "events.jsonl"
    print(
        f"journal: {journal} ({counts['hyperparams_updated']} hyperparams_updated, "
        f"{counts['hyperparams_edit_rejected']} hyperparams_edit_rejected, "
        f"{counts['change_detected']} change_detected)"
    )
    print(f"done in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
