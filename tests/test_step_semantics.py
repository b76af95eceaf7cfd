"""What step s means: the checkpoint labelled s holds the state after step s's update, always.

Announced changes are saved by the next ``checkpoint_on_step``; the parent is the branch point;
commit order defines the live run (going back abandons the future it leaves); a monitor that is
never reported deletes nothing; ``close()`` saves the last step.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from weightslab.cli import console as wl_console
from weightslab.components import CheckpointManager
from weightslab.errors import ConfigError
from weightslab.inspect.overview import checkpoint_infos, experiment_infos
from weightslab.registry.ledger import Ledger
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig

from .conftest import mlp
from .loop_worker import FREEZE_AT, LR_AT, PRUNE_AT, SNAPSHOT_STEPS, TOTAL

WORKER = Path(__file__).with_name("loop_worker.py")
REPO = Path(__file__).resolve().parent.parent


def worker(*args: str | Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def finish(proc: subprocess.Popen[bytes], expect: int = 0) -> None:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == expect, out.decode(errors="replace")[-3000:]


def steps_of(manager: CheckpointManager) -> list[list[tuple[int, str]]]:
    return [[(e.step, e.trigger) for e in manager.checkpoints(h)] for h in manager.experiments()]


@pytest.mark.slow
def test_every_checkpoint_of_a_run_with_announced_changes_resumes_bit_for_bit(tmp_path: Path) -> None:
    root, snapshots = tmp_path / "ref", tmp_path / "snapshots"
    snapshots.mkdir()
    finish(worker("announced", root, "--out", tmp_path / "ref.json", "--snapshots", snapshots))
    ref = json.loads((tmp_path / "ref.json").read_text())
    reader = CheckpointManager(root, mode="r")
    # each announced change is saved at its own step, with its trigger, holding that step's state
    assert steps_of(reader) == [
        [(10, "step")],
        [(LR_AT, "config_change"), (20, "step")],
        [(PRUNE_AT, "model_change"), (30, "step"), (FREEZE_AT, "freeze"), (40, "step"), (TOTAL - 1, "last")],
    ]
    _, second, third = reader.experiments()
    assert reader.manifest(second).parent.step == LR_AT  # type: ignore[union-attr]
    assert reader.manifest(third).parent.step == PRUNE_AT  # type: ignore[union-attr]

    # resume from every checkpoint, each in a fresh process, and continue to the end
    procs = {}
    for s in SNAPSHOT_STEPS:
        procs[s] = worker("announced", snapshots / str(s), "--out", tmp_path / f"{s}.json", "--resume", s)
        if len(procs) % 2 == 0:  # two at a time on two cores
            for p in procs.values():
                if p.returncode is None:
                    finish(p)
    for p in procs.values():
        if p.returncode is None:
            finish(p)
    for s in SNAPSHOT_STEPS:
        run = json.loads((tmp_path / f"{s}.json").read_text())
        assert run["start"] == s + 1, s
        later = [str(t) for t in range(s + 1, TOTAL)]
        assert list(run["losses"]) == later
        assert [run["losses"][t] for t in later] == [ref["losses"][t] for t in later], s
        assert [run["digests"][t] for t in later] == [ref["digests"][t] for t in later], s


def test_branch_steps_are_the_steps_of_the_changes(tmp_path: Path) -> None:
    ledger = Ledger()
    config = {"lr": 0.1}
    model = mlp((8, 32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", optimizer)
    ledger.register_hyperparams("config", config)
    system = AutomaticCheckpointSystem(
        CheckpointConfig(root_log_dir=tmp_path, checkpoint_frequency=50, durable=False), ledger=ledger
    )
    for step in range(221):
        loss = model(torch.randn(4, 8)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 120:
            config["lr"] = 0.05
            system.checkpoint_on_config_change()
        if step == 180:
            model[2] = torch.nn.Linear(32, 2)  # surgery: a new head
            system.checkpoint_on_model_change()
        if step == 220:
            model[0].requires_grad_(False)
            system.checkpoint_on_state_change("freeze")
        system.checkpoint_on_step(step)
    system.close()

    reader = CheckpointManager(tmp_path, mode="r")
    a, b, c = reader.experiments()
    assert steps_of(reader) == [
        [(50, "step"), (100, "step")],
        [(120, "config_change"), (150, "step")],
        [(180, "model_change"), (200, "step"), (220, "freeze")],
    ]
    pb, pc = reader.manifest(b).parent, reader.manifest(c).parent
    assert pb is not None and (pb.exp_hash, pb.step, pb.reason, pb.checkpoint) == (
        a,
        120,
        "config_change",
        100,
    )
    assert pc is not None and (pc.exp_hash, pc.step, pc.reason, pc.checkpoint) == (
        b,
        180,
        "model_change",
        150,
    )
    buf = StringIO()
    wl_console.print_tree(tmp_path, console=Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    assert f"config_change at step 120 -> {b}" in text and f"model_change at step 180 -> {c}" in text
    # the last step (220) was already saved as the freeze: close() saves nothing more
    assert not any(e.trigger == "last" for e in reader.checkpoints(c))


def test_going_back_then_sigkill_resumes_the_continued_run(tmp_path: Path) -> None:
    root = tmp_path / "root"
    finish(worker("rewind", root, "--out", tmp_path / "first.json", "--phase", "first"))
    reader = CheckpointManager(root, mode="r")
    (h,) = reader.experiments()
    assert [e.step for e in reader.checkpoints(h)] == [20, 60]  # the best and the newest

    finish(worker("rewind", root, "--out", tmp_path / "back.json", "--phase", "back"), expect=-9)
    back = json.loads((tmp_path / "back.json").read_text())
    assert back["start"] == 21
    # at every commit of the continued run, its newest checkpoint is the latest and exists on disk
    assert [c["step"] for c in back["commits"]] == [30, 40, 50]
    for c in back["commits"]:
        assert c["latest"] == c["step"] and c["exists"], c
        assert c["kept"] == [20, c["step"]], c  # 60 (abandoned) aged out; 20 is the best
    events = [e for e in reader.events() if e["event"] == "rewound"]
    assert events and events[0]["step"] == 20 and events[0]["abandoned"] == [60]

    finish(worker("rewind", root, "--out", tmp_path / "after.json", "--phase", "after"))
    after = json.loads((tmp_path / "after.json").read_text())
    assert after["start"] == 51  # the continued run's 50, not the abandoned 60
    assert after["resumed_digest"] == back["digests"]["50"]


def test_abandoned_checkpoints_are_shown_and_never_resumed_as_latest(tmp_path: Path) -> None:
    def open_system(ledger: Ledger, **options: Any) -> AutomaticCheckpointSystem:
        return AutomaticCheckpointSystem(
            CheckpointConfig(root_log_dir=tmp_path, checkpoint_frequency=10, durable=False, **options),
            ledger=ledger,
        )

    ledger = Ledger()
    ledger.register_model("model", mlp())
    system = open_system(ledger)
    for step in range(61):
        system.checkpoint_on_step(step)
    system.close()

    ledger = Ledger()
    ledger.register_model("model", mlp())
    system = open_system(ledger)
    assert system.resume(20) == 21
    h = system.exp_hash
    assert h is not None
    # going back is recorded at once: a crash now would resume 20, not 60
    assert system.manager.manifest(h).latest().step == 20  # type: ignore[union-attr]
    for step in range(21, 36):
        system.checkpoint_on_step(step)
    system.close()

    reader = CheckpointManager(tmp_path, mode="r")
    infos = {c.step: c for c in checkpoint_infos(reader, h)}
    assert [s for s, c in infos.items() if c.abandoned] == [40, 50, 60]
    assert not infos[30].abandoned and not infos[35].abandoned
    (info,) = experiment_infos(reader)
    assert info.latest_step == 35 and info.abandoned == 3
    done = subprocess.run(
        [sys.executable, "-m", "weightslab.cli", "show", str(tmp_path), h[:8], "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    shown = json.loads(done.stdout)
    assert [c["step"] for c in shown["checkpoints"] if c["abandoned"]] == [40, 50, 60]
    buf = StringIO()
    wl_console.print_tree(tmp_path, console=Console(file=buf, width=200, color_system=None))
    assert "3 abandoned" in buf.getvalue()

    ledger = Ledger()
    ledger.register_model("model", mlp())
    system = open_system(ledger)
    assert system.resume() == 36  # latest follows the commit order, not the step number
    system.close()


def test_a_restarted_step_counter_keeps_the_new_phase(tmp_path: Path, caplog: Any) -> None:
    ledger = Ledger()
    ledger.register_model("model", mlp())
    system = AutomaticCheckpointSystem(
        CheckpointConfig(root_log_dir=tmp_path, checkpoint_frequency=10, keep_last=2, durable=False),
        ledger=ledger,
    )
    for step in range(41):
        system.checkpoint_on_step(step)
    h = system.exp_hash
    with caplog.at_level(logging.WARNING, logger="weightslab"):
        for step in range(0, 25):  # a second phase that counts from 0 again
            system.checkpoint_on_step(step)
    system.flush()
    assert [e.step for e in system.manager.checkpoints(h) if not e.abandoned] == [10, 20]
    assert sum("abandons its checkpoints" in r.message for r in caplog.records) == 1
    system.close()
    reader = CheckpointManager(tmp_path, mode="r")
    assert [e.step for e in reader.checkpoints(h)] == [20, 24]  # the new phase's, and its last step
    assert any(e["event"] == "rewound" for e in reader.events())


def test_a_misspelt_monitor_warns_once_and_deletes_nothing(tmp_path: Path) -> None:
    ledger = Ledger()
    ledger.register_model("model", mlp())
    system = AutomaticCheckpointSystem(
        CheckpointConfig(
            root_log_dir=tmp_path, checkpoint_frequency=10, keep_best=1, monitor="val/acc", mode="max"
        ),
        ledger=ledger,
    )
    with pytest.warns(UserWarning) as caught:
        for step in range(45):
            system.checkpoint_on_step(step, metrics={"val_acc": step / 100, "train/loss": 1.0})
    messages = [str(w.message) for w in caught if "monitor" in str(w.message)]
    assert len(messages) == 1
    assert messages[0].startswith(
        "weightslab: monitor='val/acc' is not among the metrics of this save (got 'val_acc', "
        "'train/loss'); did you mean 'val_acc'?"
    )
    assert "retention deletes nothing by keep_best" in messages[0]
    system.flush()
    h = system.exp_hash
    assert h is not None
    assert [e.step for e in system.manager.checkpoints(h)] == [10, 20, 30, 40]  # nothing deleted
    # once the metric appears, keep_best works as configured
    system.checkpoint_on_step(50, metrics={"val/acc": 0.9})
    system.checkpoint_on_step(60, metrics={"val/acc": 0.1})
    system.flush()
    assert [e.step for e in system.manager.checkpoints(h)] == [50, 60]  # the best, and the newest
    system.close()


def test_a_missing_monitor_raises_with_on_error_raise(tmp_path: Path) -> None:
    ledger = Ledger()
    ledger.register_model("model", mlp())
    system = AutomaticCheckpointSystem(
        CheckpointConfig(
            root_log_dir=tmp_path, checkpoint_frequency=10, keep_best=1, monitor="val", on_error="raise"
        ),
        ledger=ledger,
    )
    with pytest.raises(ConfigError, match=r"monitor='val' is not among .* did you mean 'vall'\?"):
        for step in range(11):
            system.checkpoint_on_step(step, metrics={"vall": 0.5})
    system.flush()
    assert [e.step for e in system.manager.checkpoints(system.exp_hash or "")] == [10]  # saved first
    system.close()


def test_close_saves_the_last_step_and_pending_announcements(tmp_path: Path) -> None:
    def run(root: Path, **options: Any) -> CheckpointManager:
        ledger = Ledger()
        model = mlp()
        ledger.register_model("model", model)
        system = AutomaticCheckpointSystem(
            CheckpointConfig(root_log_dir=root, checkpoint_frequency=50, durable=False, **options),
            ledger=ledger,
        )
        for step in range(400):
            system.checkpoint_on_step(step, metrics={"loss": 1.0 / (step + 1)})
        system.close()
        return CheckpointManager(root, mode="r")

    reader = run(tmp_path / "a")
    (h,) = reader.experiments()
    last = reader.checkpoints(h)[-1]
    assert (last.step, last.trigger, last.metrics) == (399, "last", {"loss": 1.0 / 400})
    reader = run(tmp_path / "b", save_last=False)
    (h,) = reader.experiments()
    assert reader.checkpoints(h)[-1].step == 350

    # an announcement that no step followed is saved at close, at the last step seen
    ledger = Ledger()
    model = mlp()
    ledger.register_model("model", model)
    system = AutomaticCheckpointSystem(
        CheckpointConfig(root_log_dir=tmp_path / "c", checkpoint_frequency=50, durable=False), ledger=ledger
    )
    for step in range(30):
        system.checkpoint_on_step(step)
    model[0].requires_grad_(False)
    system.checkpoint_on_state_change("freeze")
    system.close()
    reader = CheckpointManager(tmp_path / "c", mode="r")
    (h,) = reader.experiments()
    assert [(e.step, e.trigger) for e in reader.checkpoints(h)] == [(29, "freeze")]
