"""The automatic checkpoint system end to end, on real folders with real models and optimizers."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import weightslab as wl
from weightslab.components import (
    AutomaticCheckpointSystem,
    CheckpointManager,
    checkpoint_on_config_change,
    checkpoint_on_model_change,
    checkpoint_on_state_change,
    checkpoint_on_step,
    get_checkpoint_system,
)
from weightslab.errors import (
    ArchitectureMismatchError,
    CheckpointSaveError,
    RootLockedError,
    SystemConfigurationError,
)
from weightslab.registry.ledger import Ledger

from .conftest import mlp, train_step


def setup_run(
    ledger: Ledger, seed: int = 0, lr: float = 1e-2
) -> tuple[torch.nn.Sequential, torch.optim.Optimizer, dict[str, Any]]:
    model = mlp(seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    cfg = {"lr": lr, "batch_size": 16}
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_hyperparams("config", cfg)
    return model, opt, cfg


def manifest(system: AutomaticCheckpointSystem, h: str | None = None) -> dict[str, Any]:
    system.flush()
    h = h or system.exp_hash
    assert h is not None
    return json.loads((system.manager.root / "checkpoints" / h / "manifest.json").read_text())


def steps_and_triggers(system: AutomaticCheckpointSystem, h: str | None = None) -> list[tuple[int, str]]:
    return [(c["step"], c["trigger"]) for c in manifest(system, h)["checkpoints"]]


@pytest.mark.parametrize("async_save", [True, False])
def test_saves_at_each_positive_multiple_of_the_frequency(
    make_system: Any, ledger: Ledger, async_save: bool
) -> None:
    system = make_system(checkpoint_frequency=10, async_save=async_save)
    model, opt, _ = setup_run(ledger)
    for step in range(0, 35):
        checkpoint_metrics = {"train/loss": train_step(model, opt)}
        system.checkpoint_on_step(step, metrics=checkpoint_metrics)
    assert steps_and_triggers(system) == [(10, "step"), (20, "step"), (30, "step")]
    files = sorted(
        p.name for p in (system.manager.root / "checkpoints" / system.exp_hash / "model").glob("*_step_*")
    )
    assert files == [f"{system.exp_hash}_step_{s:06d}.pt" for s in (10, 20, 30)]


def test_never_twice_for_the_same_step_and_hash(make_system: Any, ledger: Ledger) -> None:
    system = make_system(checkpoint_frequency=10)
    setup_run(ledger)
    for _ in range(3):
        system.checkpoint_on_step(10)
    system.flush()
    saved = [e for e in system.manager.events() if e["event"] == "checkpoint_saved"]
    assert len(saved) == 1


def test_config_change_is_recorded_at_the_step_it_happens(make_system: Any, ledger: Ledger) -> None:
    system = make_system(checkpoint_frequency=10, async_save=False)
    model, opt, cfg = setup_run(ledger)
    for step in range(0, 30):
        train_step(model, opt)
        if step == 13:
            cfg["lr"] = 1e-3
        system.checkpoint_on_step(step)
    child = system.exp_hash
    m = manifest(system)
    parent = m["parent"]
    # the branch point is the step of the change; the parent's newest checkpoint is recorded beside it
    assert parent["reason"] == "config_change" and parent["step"] == 13 and parent["checkpoint"] == 10
    assert steps_and_triggers(system) == [(13, "config_change"), (20, "step")]
    assert steps_and_triggers(system, parent["exp_hash"]) == [(10, "step")]
    config = (system.manager.root / "checkpoints" / child / "hp" / f"{child}_config.yaml").read_text()
    assert "lr: 0.001" in config
    changes = [e for e in system.manager.events() if e["event"] == "change_detected"]
    assert changes[0]["kind"] == "config_change" and changes[0]["changed_keys"] == ["config.lr"]


def test_model_change_pruning_is_detected(make_system: Any, ledger: Ledger) -> None:
    system = make_system(checkpoint_frequency=10, async_save=False)
    model, opt, _ = setup_run(ledger)
    for step in range(0, 25):
        train_step(model, opt)
        if step == 15:  # prune output neurons of the first layer, in place (p.data = smaller)
            with torch.no_grad():
                keep = torch.arange(12)
                model[0].weight.data = model[0].weight.data[keep].clone()
                model[0].bias.data = model[0].bias.data[keep].clone()
                model[0].out_features = 12
                model[2].weight.data = model[2].weight.data[:, keep].clone()
                model[2].in_features = 12
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
            ledger.register_optimizer("optimizer", opt)
        system.checkpoint_on_step(step)
    m = manifest(system)
    assert m["parent"]["reason"] == "model_change" and m["parent"]["step"] == 15
    assert m["parent"]["checkpoint"] == 10
    assert steps_and_triggers(system) == [(15, "model_change"), (20, "step")]
    change = next(e for e in system.manager.events() if e["event"] == "change_detected")
    assert change["modules"]["changed"] == ["model.0", "model.2"]


def test_added_layer_is_detected_and_recorded(make_system: Any, ledger: Ledger) -> None:
    system = make_system(checkpoint_frequency=100, async_save=False)
    model, opt, _ = setup_run(ledger)
    system.checkpoint_on_step(0)
    first = system.exp_hash
    model.append(torch.nn.ReLU())
    model.append(torch.nn.Linear(4, 4))
    system.checkpoint_on_step(1)
    assert system.exp_hash != first
    assert steps_and_triggers(system) == [(1, "model_change")]
    change = next(e for e in system.manager.events() if e["event"] == "change_detected")
    assert change["modules"]["added"] == ["model.3", "model.4"]
    assert (
        system.manager.root
        / "checkpoints"
        / system.exp_hash
        / "model"
        / f"{system.exp_hash}_architecture.txt"
    ).is_file()


def test_freeze_is_detected_as_a_state_change_in_the_same_hash(make_system: Any, ledger: Ledger) -> None:
    system = make_system(checkpoint_frequency=100, async_save=False)
    model, opt, _ = setup_run(ledger)
    system.checkpoint_on_step(0)
    first = system.exp_hash
    for p in model[0].parameters():
        p.requires_grad_(False)
    system.checkpoint_on_step(1)
    assert system.exp_hash == first
    assert steps_and_triggers(system) == [(1, "freeze")]
    data = system.manager.load(first, 1)
    assert data["frozen"] == {"model": ["0.weight", "0.bias"]}


def test_announced_events_and_their_triggers(make_system: Any, ledger: Ledger) -> None:
    system = make_system(checkpoint_frequency=100, async_save=False)
    model, opt, cfg = setup_run(ledger)
    system.checkpoint_on_step(5)
    first = system.exp_hash
    system.checkpoint_on_state_change("reset")  # announced without step=: saved by the next step's call
    assert steps_and_triggers(system) == []
    system.checkpoint_on_step(6)
    system.checkpoint_on_state_change("warmup_done", step=7)  # with step=: saved at once
    assert steps_and_triggers(system) == [(6, "reset"), (7, "warmup_done")]
    cfg["batch_size"] = 64
    system.checkpoint_on_config_change(step=8)
    assert system.exp_hash != first and steps_and_triggers(system) == [(8, "config_change")]
    system.checkpoint_on_model_change(step=9)  # nothing structural changed: saved in the same hash
    assert steps_and_triggers(system)[-1] == (9, "model_change")
    with pytest.raises(ValueError, match="state change label"):
        system.checkpoint_on_state_change("")


def test_returning_to_an_earlier_configuration_returns_to_its_hash(make_system: Any, ledger: Ledger) -> None:
    system = make_system(checkpoint_frequency=10, async_save=False)
    model, opt, cfg = setup_run(ledger)
    system.checkpoint_on_step(10)
    a = system.exp_hash
    cfg["lr"] = 0.5
    system.checkpoint_on_step(11)
    b = system.exp_hash
    cfg["lr"] = 1e-2
    system.checkpoint_on_step(12)
    assert system.exp_hash == a != b
    assert steps_and_triggers(system, a) == [(10, "step"), (12, "config_change")]
    assert manifest(system, a)["parent"] is None  # its first parent stays
    assert sorted(p.name for p in (system.manager.root / "checkpoints").iterdir()) == sorted([a, b])
    assert any(e["event"] == "experiment_activated" and e["exp_hash"] == a for e in system.manager.events())


def test_registration_before_the_first_step_is_setup_not_a_change(make_system: Any, ledger: Ledger) -> None:
    system = make_system(checkpoint_frequency=10, async_save=False)
    model, opt, cfg = setup_run(ledger)
    cfg["lr"] = 0.3  # still setup
    ledger.register_hyperparams("extra", {"seed": 1})
    system.checkpoint_on_step(0)
    system.checkpoint_on_step(10)
    assert len(system.manager.experiments()) == 1
    assert manifest(system)["parent"] is None


def run_training(
    ledger: Ledger, system: AutomaticCheckpointSystem, start: int, stop: int, model: Any, opt: Any, sched: Any
) -> list[float]:
    losses = []
    for step in range(start, stop):
        x = torch.randn(16, 8)
        noise = float(np.random.rand()) + random.random()
        loss = torch.nn.functional.dropout(model(x), p=0.2).pow(2).mean() + 0 * noise
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()) + noise)
        system.checkpoint_on_step(step, metrics={"loss": float(loss.detach())})
    return losses


def fresh_objects(ledger: Ledger, seed: int) -> tuple[Any, Any, Any]:
    model = mlp(seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_scheduler("scheduler", sched)
    ledger.register_hyperparams("config", {"lr": 1e-2})
    return model, opt, sched


@pytest.mark.parametrize("async_save", [True, False])
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path: Path, async_save: bool) -> None:
    def seed_all() -> None:
        torch.manual_seed(7)
        np.random.seed(7)
        random.seed(7)

    # uninterrupted
    seed_all()
    ref_ledger = Ledger()
    ref = AutomaticCheckpointSystem(
        root_log_dir=tmp_path / "ref", checkpoint_frequency=10, async_save=async_save, ledger=ref_ledger
    )
    model, opt, sched = fresh_objects(ref_ledger, seed=0)
    ref_losses = run_training(ref_ledger, ref, 0, 50, model, opt, sched)
    ref_state = {k: v.clone() for k, v in model.state_dict().items()}
    ref.close()

    # stopped after step 34 (close() saves that last step), resumed by new objects in a new system
    seed_all()
    ledger1 = Ledger()
    run1 = AutomaticCheckpointSystem(
        root_log_dir=tmp_path / "run", checkpoint_frequency=10, async_save=async_save, ledger=ledger1
    )
    model1, opt1, sched1 = fresh_objects(ledger1, seed=0)
    losses1 = run_training(ledger1, run1, 0, 35, model1, opt1, sched1)
    run1.close()
    torch.manual_seed(999)  # the new process would start from other RNG states
    np.random.seed(999)
    random.seed(999)
    ledger2 = Ledger()
    run2 = AutomaticCheckpointSystem(
        root_log_dir=tmp_path / "run", checkpoint_frequency=10, async_save=async_save, ledger=ledger2
    )
    model2, opt2, sched2 = fresh_objects(ledger2, seed=123)
    start = run2.resume()
    assert start == 35
    losses2 = run_training(ledger2, run2, start, 50, model2, opt2, sched2)
    run2.close()

    assert losses1 == ref_losses[:35]
    assert losses2 == ref_losses[35:]  # step for step, RNG included
    for k, v in model2.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    assert (
        sched2.last_epoch == 50
        and opt2.param_groups[0]["lr"] == ref_ledger.get("optimizer").param_groups[0]["lr"]
    )


def test_resume_on_a_fresh_root_returns_zero(make_system: Any, ledger: Ledger) -> None:
    system = make_system()
    setup_run(ledger)
    assert system.resume() == 0


def test_resume_after_a_hash_change_finds_the_last_active_experiment(tmp_path: Path) -> None:
    ledger = Ledger()
    sys1 = AutomaticCheckpointSystem(root_log_dir=tmp_path / "r", checkpoint_frequency=10, ledger=ledger)
    model, opt, cfg = setup_run(ledger)
    for step in range(25):
        train_step(model, opt)
        if step == 12:
            cfg["lr"] = 5e-3
        sys1.checkpoint_on_step(step)
    active = sys1.exp_hash
    sys1.close()

    ledger2 = Ledger()
    sys2 = AutomaticCheckpointSystem(root_log_dir=tmp_path / "r", checkpoint_frequency=10, ledger=ledger2)
    _, opt2, cfg2 = setup_run(ledger2)  # the script starts from the original lr again
    assert sys2.resume() == 25  # close() saved the last step, 24
    assert sys2.exp_hash == active
    assert cfg2["lr"] == 5e-3  # the registered mapping is restored to that experiment's values
    cfg2["lr"] = 1e-4  # a change after resume branches from the resumed checkpoint
    sys2.checkpoint_on_step(25)
    m = manifest(sys2)
    assert m["parent"] == {"exp_hash": active, "step": 25, "reason": "config_change", "checkpoint": 24}
    sys2.close()


def test_a_change_after_resume_and_newer_saves_branches_from_the_newest(tmp_path: Path) -> None:
    ledger = Ledger()
    sys1 = AutomaticCheckpointSystem(root_log_dir=tmp_path / "r", checkpoint_frequency=10, ledger=ledger)
    setup_run(ledger)
    sys1.checkpoint_on_step(10)
    sys1.close()
    ledger2 = Ledger()
    sys2 = AutomaticCheckpointSystem(root_log_dir=tmp_path / "r", checkpoint_frequency=10, ledger=ledger2)
    _, _, cfg = setup_run(ledger2)
    assert sys2.resume() == 11
    parent_hash = sys2.exp_hash
    for step in range(11, 25):
        sys2.checkpoint_on_step(step)
    cfg["lr"] = 0.5
    sys2.checkpoint_on_step(25)
    assert manifest(sys2)["parent"] == {
        "exp_hash": parent_hash,
        "step": 25,
        "reason": "config_change",
        "checkpoint": 20,
    }
    sys2.close()


def test_flipped_byte_falls_back_to_the_previous_checkpoint(tmp_path: Path) -> None:
    ledger = Ledger()
    sys1 = AutomaticCheckpointSystem(root_log_dir=tmp_path / "r", checkpoint_frequency=10, ledger=ledger)
    model, opt, _ = setup_run(ledger)
    weights = {}
    for step in range(31):
        train_step(model, opt)
        sys1.checkpoint_on_step(step)
        if step in (20, 30):
            weights[step] = model[0].weight.detach().clone()
    h = sys1.exp_hash
    sys1.close()
    newest = tmp_path / "r" / "checkpoints" / h / "model" / f"{h}_step_000030.pt"
    data = bytearray(newest.read_bytes())
    data[-100] ^= 0xFF
    newest.write_bytes(bytes(data))

    ledger2 = Ledger()
    sys2 = AutomaticCheckpointSystem(root_log_dir=tmp_path / "r", checkpoint_frequency=10, ledger=ledger2)
    model2, _, _ = setup_run(ledger2, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sys2.resume() == 21
    assert torch.equal(model2[0].weight, weights[20])
    events = sys2.manager.events()
    assert any(e["event"] == "checkpoint_unreadable" and e["step"] == 30 for e in events)
    assert events[-1]["event"] == "resumed" and events[-1]["skipped"] == [f"model/{h}_step_000030.pt"]
    sys2.close()


def test_resume_modes_best_and_step(make_system: Any, ledger: Ledger, tmp_path: Path) -> None:
    system = make_system(checkpoint_frequency=10, keep_best=1, monitor="val", mode="min")
    setup_run(ledger)
    for step, val in [(10, 0.5), (20, 0.1), (30, 0.3)]:
        system.checkpoint_on_step(step, metrics={"val": val})
    assert system.resume("best") == 21  # going back: 30 is abandoned
    assert system.resume("latest") == 21
    assert system.resume(30) == 31  # an explicit step makes it the live run again
    assert system.resume("latest") == 31


def test_resume_with_a_model_that_no_longer_matches(tmp_path: Path) -> None:
    ledger = Ledger()
    sys1 = AutomaticCheckpointSystem(root_log_dir=tmp_path / "r", checkpoint_frequency=10, ledger=ledger)
    model, opt, _ = setup_run(ledger)
    sys1.checkpoint_on_step(5)
    model.append(torch.nn.Linear(4, 2))  # the model grew; the optimizer is rebuilt over it
    ledger.register_optimizer("optimizer", torch.optim.AdamW(model.parameters(), lr=1e-2))
    sys1.checkpoint_on_step(10)
    grown = sys1.exp_hash
    sys1.close()

    ledger2 = Ledger()
    sys2 = AutomaticCheckpointSystem(root_log_dir=tmp_path / "r", checkpoint_frequency=10, ledger=ledger2)
    setup_run(ledger2)  # the script builds the original model
    with pytest.raises(ArchitectureMismatchError, match=r"load_architecture\('" + grown + r"', trust=True\)"):
        sys2.resume()
    arch = CheckpointManager(tmp_path / "r", mode="r").load_architecture(grown, trust=True)
    rebuilt = arch["model"].to_empty(device="cpu")
    ledger2.register_model("model", rebuilt)
    ledger2.register_optimizer("optimizer", torch.optim.AdamW(rebuilt.parameters(), lr=1e-2))
    assert sys2.resume() == 11
    assert torch.equal(rebuilt[-1].weight, model[-1].weight)
    sys2.close()


def test_retention_keeps_exactly_what_it_should_across_a_restart(tmp_path: Path) -> None:
    def run(start: int, stop: int, losses: dict[int, float]) -> AutomaticCheckpointSystem:
        ledger = Ledger()
        system = AutomaticCheckpointSystem(
            root_log_dir=tmp_path / "r",
            checkpoint_frequency=10,
            keep_last=2,
            keep_best=1,
            monitor="val",
            keep_every=50,
            ledger=ledger,
        )
        setup_run(ledger)
        first = system.resume()
        assert first == start
        for step in range(first, stop):
            system.checkpoint_on_step(step, metrics={"val": losses.get(step, 1.0)})
        system.close()
        return system

    losses = {10: 0.9, 20: 0.05, 30: 0.8, 40: 0.7, 50: 0.6, 60: 0.5, 70: 0.4}
    run(0, 45, losses)  # saves 10..40 and, at close(), the last step 44
    mgr = CheckpointManager(tmp_path / "r", mode="r")
    (h,) = mgr.experiments()
    assert [e.step for e in mgr.checkpoints(h)] == [20, 40, 44]
    run(45, 75, losses)
    assert [e.step for e in mgr.checkpoints(h)] == [20, 50, 70, 74]
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints" / h / "model").glob("*_step_*")) == [
        f"{h}_step_{s:06d}.pt" for s in (20, 50, 70, 74)
    ]


def test_resumed_checkpoint_is_protected_until_a_newer_one_exists(tmp_path: Path) -> None:
    ledger = Ledger()
    sys1 = AutomaticCheckpointSystem(root_log_dir=tmp_path / "r", checkpoint_frequency=10, ledger=ledger)
    setup_run(ledger)
    for step in (10, 20, 30):
        sys1.checkpoint_on_step(step, metrics={"val": {10: 0.1, 20: 0.5, 30: 0.9}[step]})
    sys1.close()
    ledger2 = Ledger()
    sys2 = AutomaticCheckpointSystem(
        root_log_dir=tmp_path / "r", checkpoint_frequency=10, keep_last=1, ledger=ledger2, monitor="val"
    )
    setup_run(ledger2)
    assert sys2.resume(20) == 21
    sys2.checkpoint_on_state_change("probe", step=15)  # an older step: 20 stays protected
    sys2.flush()
    # commit order: 15 is the newest; 30 (abandoned by the resume) and 10 age out, 20 is protected
    assert [e.step for e in sys2.manager.checkpoints(sys2.exp_hash)] == [15, 20]
    sys2.checkpoint_on_step(40)
    sys2.flush()
    assert [e.step for e in sys2.manager.checkpoints(sys2.exp_hash)] == [40]
    sys2.close()


def test_rng_states_are_restored(make_system: Any, ledger: Ledger) -> None:
    system = make_system(checkpoint_frequency=10, async_save=False)
    setup_run(ledger)
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    system.checkpoint_on_step(10)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(2)
    np.random.seed(2)
    random.seed(2)
    system.resume()
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_stateful_objects_are_saved_under_extra(make_system: Any, ledger: Ledger) -> None:
    class Sampler:
        def __init__(self) -> None:
            self.epoch = 0
            self.order = torch.arange(5)

        def state_dict(self) -> dict[str, Any]:
            return {"epoch": self.epoch, "order": self.order}

        def load_state_dict(self, sd: dict[str, Any]) -> None:
            self.epoch, self.order = sd["epoch"], sd["order"].clone()

    system = make_system(checkpoint_frequency=10)
    setup_run(ledger)
    sampler = Sampler()
    ledger.register_stateful("sampler", sampler)
    sampler.epoch = 3
    system.checkpoint_on_step(10)
    sampler.epoch = 9
    system.resume()
    assert sampler.epoch == 3


def test_background_failure_surfaces_on_the_next_call_and_is_journalled(
    make_system: Any, ledger: Ledger
) -> None:
    import shutil

    system = make_system(checkpoint_frequency=10, async_save=True)
    setup_run(ledger)
    system.checkpoint_on_step(0)
    shutil.rmtree(system.manager.experiment(system.exp_hash).model_dir)  # deleted behind our back
    system.checkpoint_on_step(10)
    system._writer.wait()  # let the background write fail
    with pytest.warns(UserWarning, match="a checkpoint save failed: FileNotFoundError"):
        system.checkpoint_on_step(11)
    failed = [e for e in system.manager.events() if e["event"] == "save_failed"]
    assert len(failed) == 1 and failed[0]["step"] == 10 and "_step_000010.pt" in failed[0]["path"]
    assert system.failures == 1


def test_on_error_raise(make_system: Any, ledger: Ledger) -> None:
    class Broken:
        def state_dict(self) -> dict[str, Any]:
            return {"fn": print}

        def load_state_dict(self, sd: dict[str, Any]) -> None: ...

    system = make_system(checkpoint_frequency=10, on_error="raise")
    setup_run(ledger)
    ledger.register_stateful("broken", Broken())
    with pytest.raises(
        CheckpointSaveError, match=r"state at extra.broken.fn is a builtin_function_or_method"
    ):
        system.checkpoint_on_step(10)
    warn_system = make_system(root_log_dir=system.manager.root.parent / "warn", checkpoint_frequency=10)
    with pytest.warns(UserWarning, match="training continues"):
        warn_system.checkpoint_on_step(10)


def test_threads_calling_at_once(make_system: Any, ledger: Ledger) -> None:
    import threading

    system = make_system(checkpoint_frequency=5)
    setup_run(ledger)
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for step in range(offset, 200, 4):
                system.checkpoint_on_step(step)
                if step % 20 == 0:
                    system.checkpoint_on_state_change("probe", step=step)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    system.flush()
    assert not errors
    assert system.manager.verify().healthy
    entries = system.manager.checkpoints(system.exp_hash)
    assert [e.step for e in entries] == [0, *range(5, 200, 5)]
    assert {e.step for e in entries if e.trigger == "probe"} == set(range(0, 200, 20))


def test_singleton_lifecycle(tmp_path: Path) -> None:
    system = get_checkpoint_system(root_log_dir=tmp_path / "a", checkpoint_frequency=5)
    assert get_checkpoint_system() is system
    assert get_checkpoint_system(root_log_dir=tmp_path / "a", checkpoint_frequency=5) is system
    with pytest.raises(SystemConfigurationError, match=r"checkpoint_frequency=7 \(open: 5\)"):
        get_checkpoint_system(checkpoint_frequency=7)
    with pytest.raises(RootLockedError):
        AutomaticCheckpointSystem(root_log_dir=tmp_path / "a")
    model = mlp()
    wl.register_model(model)
    wl.register_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    wl.register_hyperparams("config", {"lr": 0.1})
    checkpoint_on_step(5)
    checkpoint_on_state_change("freeze")
    checkpoint_on_config_change()
    checkpoint_on_model_change()
    system.close()
    assert system.closed
    with pytest.raises(SystemConfigurationError, match="closed"):
        system.checkpoint_on_step(6)
    again = get_checkpoint_system(root_log_dir=tmp_path / "a", checkpoint_frequency=7)
    assert again is not system and again.config.checkpoint_frequency == 7
    again.close()
    with pytest.raises(SystemConfigurationError, match="no checkpoint system is open"):
        get_checkpoint_system(auto_init=False)


def test_process_exit_flushes_the_save_in_flight(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import torch, weightslab as wl
        from weightslab.components import get_checkpoint_system, checkpoint_on_step
        get_checkpoint_system(root_log_dir={str(tmp_path / "r")!r}, checkpoint_frequency=1)
        model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(8)])
        wl.register_model(model)
        checkpoint_on_step(1)
        # no close(): the interpreter exits with the write in flight
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    mgr = CheckpointManager(tmp_path / "r", mode="r")
    (h,) = mgr.experiments()
    assert [e.step for e in mgr.checkpoints(h)] == [1]
    assert mgr.verify().healthy
    assert mgr.events()[-1]["event"] == "system_closed"


def test_metrics_validation(make_system: Any, ledger: Ledger) -> None:
    system = make_system(checkpoint_frequency=10, async_save=False)
    setup_run(ledger)
    system.checkpoint_on_step(
        1, metrics={"loss": "high"}
    )  # metrics are checked when a checkpoint records them
    with pytest.raises(TypeError, match="metric 'loss' = 'high' is not a number"):
        system.checkpoint_on_step(10, metrics={"loss": "high"})
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        system.checkpoint_on_step(-1)
    with pytest.raises(TypeError, match="step must be an int"):
        system.checkpoint_on_step(1.5)  # type: ignore[arg-type]
    system.checkpoint_on_step(20, metrics={"loss": torch.tensor(0.25), "nan": float("nan")})
    assert manifest(system)["checkpoints"][0]["metrics"] == {"loss": 0.25, "nan": None}


def test_summary_checkpoints_and_tree_print_from_the_system(make_system: Any, ledger: Ledger) -> None:
    import io

    from rich.console import Console

    system = make_system(checkpoint_frequency=5, keep_last=2, monitor="val")
    _, _, cfg = setup_run(ledger)
    for step in range(12):
        if step == 7:
            cfg["lr"] = 0.5
        system.checkpoint_on_step(step, metrics={"val": 1.0 / (step + 1)})
    out = io.StringIO()
    console = Console(file=out, width=120, color_system=None)
    system.summary(console=console)
    system.print_checkpoints(console=console)
    system.print_tree(console=console)
    text = out.getvalue()
    first, second = system.manager.experiments()
    assert f"* {second}" in text or f"*  {second}" in text  # the active experiment is marked
    assert "config_change" in text and first in text
    assert f"checkpoints of {second}" in text and "newest" in text


def test_the_manifest_records_the_retention_in_force(tmp_path: Path) -> None:
    for keep_last in (None, 2):
        ledger = Ledger()
        system = AutomaticCheckpointSystem(
            root_log_dir=tmp_path / "r", checkpoint_frequency=5, keep_last=keep_last, ledger=ledger
        )
        setup_run(ledger)
        system.resume()
        system.checkpoint_on_step(5 if keep_last is None else 10)
        system.close()
        mgr = CheckpointManager(tmp_path / "r", mode="r")
        assert mgr.manifest(mgr.experiments()[0]).retention["keep_last"] == keep_last
