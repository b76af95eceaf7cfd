"""Regression tests for defects an outside review found in the core (journal, resume, locks, inputs)."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn.utils import prune

from weightslab.components import CheckpointManager
from weightslab.errors import ArchitectureMismatchError, HyperparamsError, RootError, RootLockedError
from weightslab.format.journal import Journal, read_events
from weightslab.registry.ledger import Ledger
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig

from .conftest import mlp
from .test_faults import RealSmallDisk, mount_tmpfs

REPO = Path(__file__).resolve().parent.parent


def system_on(root: Path, ledger: Ledger, **options: Any) -> AutomaticCheckpointSystem:
    options.setdefault("checkpoint_frequency", 10)
    return AutomaticCheckpointSystem(
        CheckpointConfig(root_log_dir=root, durable=False, **options), ledger=ledger
    )


# -- 3. the journal writes whole lines ------------------------------------------------------------------
def test_a_short_write_on_a_full_disk_loses_only_its_own_event(tmp_path: Path) -> None:
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    reason = mount_tmpfs(mountpoint, "4m")
    if reason is not None:
        pytest.skip(reason)
    try:
        disk = RealSmallDisk(mountpoint)
        journal = Journal(mountpoint / "events.jsonl")
        journal.append("before", n=1)
        disk.fill(leave=0)
        room = disk.free_bytes()
        journal.append("too_big", blob="x" * (room + 64 * 1024))  # partly fits, then ENOSPC
        assert journal.failures == 1
        disk.release()
        journal.append("after", n=2)
        names = [e["event"] for e in read_events(mountpoint / "events.jsonl")]
        assert names == ["before", "after"]
        assert (mountpoint / "events.jsonl").read_bytes().endswith(b"\n")
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False, capture_output=True)


def test_an_event_after_a_torn_line_starts_on_a_new_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    journal = Journal(path, durable=False)
    journal.append("first")
    with open(path, "ab") as f:
        f.write(b'{"time": 1, "event": "torn", "exp')  # a process killed mid-append
    journal.append("second")
    assert [e["event"] for e in read_events(path)] == ["first", "second"]


# -- 4. hyperparameters come back with their types --------------------------------------------------------
class Activation(enum.Enum):
    RELU = "relu"
    GELU = "gelu"


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclasses.dataclass
class TrainConfig:
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    activation: Activation = Activation.RELU
    clip: float = math.inf
    milestones: tuple[int, ...] = (10, 20)
    per_layer: dict[int, str] = dataclasses.field(default_factory=lambda: {0: "a", 1: "b"})
    path: Path = Path("data")


def test_resume_restores_hyperparameters_with_their_types(tmp_path: Path) -> None:
    ledger = Ledger()
    cfg, plain = TrainConfig(), {"clip": math.inf, "ids": (1, 2), 3: "three", "low": -math.inf}
    ledger.register_model("model", mlp())
    ledger.register_hyperparams("config", cfg)
    ledger.register_hyperparams("extra", plain)
    system = system_on(tmp_path, ledger)
    cfg.optim.lr, cfg.activation, cfg.path = 5e-4, Activation.GELU, Path("other")
    plain["ids"] = (3, 4)
    for step in range(11):
        system.checkpoint_on_step(step)
    saved_hash = system.exp_hash
    system.close()

    ledger = Ledger()
    cfg2, plain2 = TrainConfig(), {"clip": 1.0, "ids": (0, 0), 3: "x", "low": 0.0}
    ledger.register_model("model", mlp())
    ledger.register_hyperparams("config", cfg2)
    ledger.register_hyperparams("extra", plain2)
    system = system_on(tmp_path, ledger)
    assert system.resume() == 11
    assert cfg2 == TrainConfig(optim=OptimConfig(lr=5e-4), activation=Activation.GELU, path=Path("other"))
    assert isinstance(cfg2.optim, OptimConfig) and cfg2.optim.lr == 5e-4  # cfg.optim.lr still works
    assert cfg2.activation is Activation.GELU and isinstance(cfg2.milestones, tuple)
    assert cfg2.per_layer == {0: "a", 1: "b"} and isinstance(cfg2.path, Path)
    assert plain2 == {"clip": math.inf, "ids": (3, 4), 3: "three", "low": -math.inf}
    assert system.exp_hash == saved_hash  # nothing moved: no spurious config change
    system.close()


def test_keys_that_collide_once_written_are_refused_at_registration() -> None:
    with pytest.raises(HyperparamsError, match=r"keys 1 and '1' at config.table collide once written"):
        Ledger().register_hyperparams("config", {"table": {1: "a", "1": "b"}})


def test_deep_nesting_is_a_clear_error_not_a_recursion_error() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["k"] = {}
        node = node["k"]
    with pytest.raises(HyperparamsError, match=r"nested more than 64 levels deep"):
        Ledger().register_hyperparams("config", deep)


def test_a_metric_too_large_for_a_float_is_a_clear_value_error(tmp_path: Path) -> None:
    ledger = Ledger()
    ledger.register_model("model", mlp())
    system = system_on(tmp_path, ledger)
    with pytest.raises(ValueError, match=r"metric 'val' \(an int of 401 digits\) does not fit a float"):
        system.checkpoint_on_step(10, metrics={"val": 10**400})
    system.close()


# -- 5, 6. resume checks everything first, then changes everything or nothing ---------------------------
def saved_run(root: Path) -> None:
    ledger = Ledger()
    model = mlp((8, 16, 16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", optimizer)
    ledger.register_scheduler("scheduler", torch.optim.lr_scheduler.StepLR(optimizer, 5))
    system = system_on(root, ledger)
    for step in range(11):
        model(torch.randn(4, 8)).pow(2).mean().backward()
        optimizer.step()
        system.checkpoint_on_step(step)
    system.close()


def test_optimizer_state_that_does_not_fit_the_parameters_is_refused_naming_the_parameter(
    tmp_path: Path,
) -> None:
    saved_run(tmp_path)
    ledger = Ledger()
    model = mlp((8, 16, 16, 4))
    # the same parameters, in another order: AdamW would crash at the next step
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([params[2], params[3], params[0], params[1], *params[4:]], lr=1e-2)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", optimizer)
    ledger.register_scheduler("scheduler", torch.optim.lr_scheduler.StepLR(optimizer, 5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    system = system_on(tmp_path, ledger)
    with pytest.raises(ArchitectureMismatchError, match=r"state 'exp_avg' for parameter model\.2\.weight"):
        system.resume()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    assert optimizer.state_dict()["state"] == {}
    system.close()


def test_resume_is_all_or_nothing_and_reports_what_the_checkpoint_lacks(tmp_path: Path) -> None:
    saved_run(tmp_path)

    class Refuses:
        def __init__(self) -> None:
            self.value = 1

        def state_dict(self) -> dict[str, Any]:
            return {"value": self.value}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            raise ValueError("this object refuses any state")

    ledger = Ledger()
    model = mlp((8, 16, 16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 5)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", optimizer)
    ledger.register_scheduler("scheduler", scheduler)
    ledger.register_optimizer("second", torch.optim.SGD(model.parameters(), lr=0.1))  # not in the file
    before = {k: v.clone() for k, v in model.state_dict().items()}
    system = system_on(tmp_path, ledger)
    with pytest.warns(UserWarning, match=r"holds no state for registered optimizer 'second'"):
        assert system.resume() == 11  # a missing object is reported, the rest restored
    assert not all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    system.close()

    # a scheduler that refuses its state: nothing at all is restored
    CheckpointManager(tmp_path, mode="r")
    ledger = Ledger()
    model = mlp((8, 16, 16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", optimizer)
    refuses = Refuses()
    ledger.register_scheduler("scheduler", refuses)  # type: ignore[arg-type]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    system = system_on(tmp_path, ledger)
    with pytest.raises(ArchitectureMismatchError, match=r"scheduler 'scheduler' does not accept .* nothing"):
        system.resume()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert optimizer.state_dict()["state"] == {} and refuses.value == 1
    system.close()


# -- 7. pruned models keep a working architecture file -----------------------------------------------------
def test_a_model_pruned_with_torch_prune_has_a_verified_architecture_file(tmp_path: Path) -> None:
    ledger = Ledger()
    model = mlp((8, 16, 4))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    ledger.register_model("model", model)
    system = system_on(tmp_path, ledger)
    system.checkpoint_on_step(10)
    h = system.exp_hash
    assert h is not None
    system.close()
    reader = CheckpointManager(tmp_path, mode="r")
    record = reader.manifest(h).architecture
    assert record is not None and record.file == f"model/{h}_architecture.pkl"
    rebuilt = reader.load_architecture(h, trust=True)["model"].to_empty(device="cpu")
    rebuilt.load_state_dict(reader.load(h, 10)["models"]["model"])
    x = torch.randn(3, 8)
    assert torch.equal(rebuilt(x), model(x))
    assert not [e for e in reader.events() if e["event"] == "architecture_not_saved"]
    # a changed pickle is refused before it is unpickled
    path = reader.experiment(h).architecture_pickle
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(Exception, match="architecture pickle changed"):
        reader.load_architecture(h, trust=True)


def test_the_rebuild_recipe_is_offered_only_when_it_can_work(tmp_path: Path) -> None:
    ledger = Ledger()
    ledger.register_model("model", mlp((8, 16, 4)))
    system = system_on(tmp_path, ledger, save_architecture=False)
    system.checkpoint_on_step(10)
    system.close()
    ledger = Ledger()
    ledger.register_model("model", mlp((8, 32, 4)))
    system = system_on(tmp_path, ledger)
    with pytest.raises(ArchitectureMismatchError) as exc:
        system.resume()
    assert "load_architecture" not in str(exc.value) and "has no architecture file" in str(exc.value)
    assert "0.weight: checkpoint (16, 8), model (32, 8)" in str(exc.value)
    system.close()


# -- 8, 9. the writer lock ---------------------------------------------------------------------------------
FORKING_TRAINER = textwrap.dedent(
    """
    import os, sys, time, torch
    from weightslab.system.automatic import AutomaticCheckpointSystem
    from weightslab.registry.ledger import Ledger
    ledger = Ledger(); ledger.register_model("model", torch.nn.Linear(2, 2))
    system = AutomaticCheckpointSystem(root_log_dir=sys.argv[1], checkpoint_frequency=1, ledger=ledger)
    system.checkpoint_on_step(1); system.flush()
    child = os.fork()
    if child == 0:          # a DataLoader-style worker that outlives the trainer
        time.sleep(600); os._exit(0)
    print(child, flush=True)
    time.sleep(600)
    """
)


def test_the_lock_does_not_survive_a_sigkill_in_a_forked_child(tmp_path: Path) -> None:
    root = tmp_path / "root"
    trainer = subprocess.Popen(
        [sys.executable, "-c", FORKING_TRAINER, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert trainer.stdout is not None
    child = int(trainer.stdout.readline())
    try:
        with pytest.raises(RootLockedError):  # the trainer holds it
            CheckpointManager(root)
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(timeout=60)
        os.kill(child, 0)  # the child still lives
        CheckpointManager(root).close()  # and the restart gets the root
    finally:
        for pid in (child, trainer.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with_deadline = time.monotonic() + 60
        while time.monotonic() < with_deadline:
            try:
                if os.waitpid(child, os.WNOHANG) != (0, 0):
                    break
            except ChildProcessError:
                break
            time.sleep(0.01)


def test_a_failed_open_releases_the_lock_and_names_the_file(tmp_path: Path) -> None:
    ledger = Ledger()
    ledger.register_model("model", mlp())
    system = system_on(tmp_path, ledger)
    system.checkpoint_on_step(10)
    h = system.exp_hash
    assert h is not None
    system.close()
    manifest = tmp_path / "checkpoints" / h / "manifest.json"
    saved = manifest.read_bytes()
    manifest.unlink()
    manifest.mkdir()  # unreadable, even for root: reading it is an IsADirectoryError
    with pytest.raises(RootError, match=r"cannot open checkpoint root .*manifest\.json"):
        CheckpointManager(tmp_path)
    manifest.rmdir()
    manifest.write_bytes(saved)
    CheckpointManager(tmp_path).close()  # the failed open did not keep the lock


# -- 13. tags and descriptions from the training loop -------------------------------------------------------
def test_tags_and_description_from_the_loop_and_afterwards(tmp_path: Path) -> None:
    import weightslab as wl
    from weightslab.components import checkpoint_on_step, get_checkpoint_system

    system = get_checkpoint_system(root_log_dir=tmp_path, checkpoint_frequency=10, durable=False)
    wl.register_model("model", mlp())
    for step in range(21):
        checkpoint_on_step(step, tags=["warmup"] if step < 15 else None, description=f"step {step}")
    system.tag(20, "candidate", "best-so-far", description="picked for eval")
    with pytest.raises(TypeError, match="tags must be a list of strings"):
        checkpoint_on_step(21, tags="oops")  # type: ignore[arg-type]
    system.close()
    reader = CheckpointManager(tmp_path, mode="r")
    (h,) = reader.experiments()
    entries = {e.step: e for e in reader.checkpoints(h)}
    assert entries[10].tags == ("warmup",) and entries[10].description == "step 10"
    assert entries[20].tags == ("candidate", "best-so-far") and entries[20].description == "picked for eval"
    raw = json.loads((tmp_path / "checkpoints" / h / "manifest.json").read_text())
    assert raw["checkpoints"][1]["tags"] == ["candidate", "best-so-far"]
    assert any(e["event"] == "checkpoint_tagged" for e in reader.events())


def test_a_writer_never_cleans_leftovers_through_a_symlinked_model_folder(tmp_path: Path) -> None:
    ledger = Ledger()
    ledger.register_model("model", mlp())
    system = system_on(tmp_path / "root", ledger)
    system.checkpoint_on_step(10)
    h = system.exp_hash
    assert h is not None
    system.close()
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / f"{h}_step_000099.pt"  # looks like a leftover step file
    precious.write_bytes(b"user data")
    model_dir = tmp_path / "root" / "checkpoints" / h / "model"
    model_dir.rename(tmp_path / "moved")
    model_dir.symlink_to(outside)
    CheckpointManager(tmp_path / "root").close()  # a writer opens the root and cleans leftovers
    assert precious.read_bytes() == b"user data"
