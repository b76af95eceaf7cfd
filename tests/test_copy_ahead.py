"""Saves whose copy starts before the state is read: the same tensors as the last save, copied ahead.

A scheduled asynchronous save copies the previous save's source tensors into the kept staging arena
on the copier thread, then reads the state trees; the copy is taken only when the state holds
exactly those tensor objects in that layout. These tests train real models between saves and read
every checkpoint back.
"""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path
from typing import Any

import torch

from weightslab.components import AutomaticCheckpointSystem
from weightslab.registry.ledger import Ledger
from weightslab.store.manager import CheckpointManager


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)  # 4 x Linear(256, 256): 1 MiB of weights, over the copier's threshold
    return torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)])


def _open(root: Path) -> tuple[AutomaticCheckpointSystem, Ledger, torch.nn.Module, torch.optim.Optimizer]:
    ledger = Ledger()
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_hyperparams("config", {"lr": 1e-3})
    system = AutomaticCheckpointSystem(
        root_log_dir=root, checkpoint_frequency=1, keep_last=100, ledger=ledger
    )
    return system, ledger, model, opt


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    loss = model(torch.randn(8, 256)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def _live(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optim": {i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(opt.state.values())},
    }


def _saved(root: Path, h: str, step: int) -> dict[str, Any]:
    data = CheckpointManager(root, mode="r").load(h, step)
    return {"model": data["models"]["model"], "optim": data["optimizers"]["optimizer"]["state"]}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a["model"].keys() != b["model"].keys() or a["optim"].keys() != b["optim"].keys():
        return False
    return all(torch.equal(v, b["model"][k]) for k, v in a["model"].items()) and all(
        torch.equal(t, b["optim"][i][k]) for i, s in a["optim"].items() for k, t in s.items()
    )


def test_every_save_copied_ahead_holds_the_state_of_its_own_step(tmp_path: Path) -> None:
    system, _, model, opt = _open(tmp_path)
    expected: dict[int, dict[str, Any]] = {}
    for step in range(1, 9):
        _train(model, opt)
        system.checkpoint_on_step(step)
        expected[step] = _live(model, opt)
    system.flush()
    h = system.exp_hash
    assert h is not None
    # step 1 stages the first layout (the optimizer's state appears with it); from then on every
    # save is copied ahead
    assert system._buffers.copied_ahead >= 5
    system.close()
    for step, live in expected.items():
        assert _same(live, _saved(tmp_path, h, step)), f"step {step}"


def test_new_source_tensors_are_copied_anew(tmp_path: Path) -> None:
    system, _, model, opt = _open(tmp_path)
    for step in range(3):
        _train(model, opt)
        system.checkpoint_on_step(step)
    system.flush()
    before = system._buffers.copied_ahead
    # load_state_dict gives the optimizer new state tensors, of the same shapes, with new values
    sd = opt.state_dict()
    for s in sd["state"].values():
        s["exp_avg"] = s["exp_avg"] + 1.0
    opt.load_state_dict(sd)
    with torch.no_grad():  # and a parameter keeps its object but gets another storage of its shape
        model[0].weight.data = torch.full((256, 256), 0.5)
    system.checkpoint_on_step(3)
    expected = _live(model, opt)
    system.flush()
    assert system._buffers.copied_ahead == before  # the copy made ahead was dropped
    h = system.exp_hash
    assert h is not None
    system.close()
    assert _same(expected, _saved(tmp_path, h, 3))


def test_a_parameter_given_another_shape_in_place_is_saved_with_it(tmp_path: Path) -> None:
    system, _, model, opt = _open(tmp_path)
    for step in range(3):
        _train(model, opt)
        system.checkpoint_on_step(step)
    weight = model[3].weight
    weight.data = torch.arange(128 * 256, dtype=torch.float32).reshape(128, 256)  # same object
    model[3].bias.data = torch.zeros(128)
    system.checkpoint_on_step(3)
    system.flush()
    h = system.exp_hash
    assert h is not None
    system.close()
    saved = CheckpointManager(tmp_path, mode="r").load(h, 3)["models"]["model"]
    assert saved["3.weight"].shape == (128, 256)
    assert torch.equal(saved["3.weight"], weight.detach())


def test_the_sources_of_the_last_copy_are_not_kept_alive(tmp_path: Path) -> None:
    system, ledger, model, opt = _open(tmp_path)
    for step in range(3):
        _train(model, opt)
        system.checkpoint_on_step(step)
    system.flush()
    old_state = weakref.ref(next(iter(opt.state.values()))["exp_avg"])
    fresh = torch.optim.SGD(model.parameters(), lr=1e-3)
    ledger.register_optimizer("optimizer", fresh)  # replaces the AdamW
    del opt
    gc.collect()
    assert old_state() is None
    _train(model, fresh)
    system.checkpoint_on_step(3)
    expected = _live(model, fresh)
    system.flush()
    h = system.exp_hash
    assert h is not None
    system.close()
    saved = CheckpointManager(tmp_path, mode="r").load(h, 3)["models"]["model"]
    assert all(torch.equal(v, saved[k]) for k, v in expected["model"].items())


def test_staged_parameters_are_saved_as_plain_tensors_without_grad(tmp_path: Path) -> None:
    system, _, model, opt = _open(tmp_path)
    for step in range(3):
        _train(model, opt)
        system.checkpoint_on_step(step)
    system.flush()
    h = system.exp_hash
    assert h is not None
    system.close()
    saved = CheckpointManager(tmp_path, mode="r").load(h, 2)["models"]["model"]
    assert all(type(t) is torch.Tensor and not t.requires_grad for t in saved.values())


def test_a_freeze_between_saves_is_in_the_next_checkpoint(tmp_path: Path) -> None:
    system, _, model, opt = _open(tmp_path)
    for step in range(3):
        _train(model, opt)
        system.checkpoint_on_step(step)
    model[1].weight.requires_grad_(False)
    system.checkpoint_on_step(3)
    model[1].weight.requires_grad_(True)
    system.checkpoint_on_step(4)
    system.flush()
    h = system.exp_hash
    assert h is not None
    system.close()
    manager = CheckpointManager(tmp_path, mode="r")
    assert manager.load(h, 3)["frozen"] == {"model": ["1.weight"]}
    assert manager.load(h, 4)["frozen"] == {"model": []}


def test_close_stops_the_copier_thread(tmp_path: Path) -> None:
    system, _, model, opt = _open(tmp_path)
    for step in range(3):
        _train(model, opt)
        system.checkpoint_on_step(step)
    assert any(t.name.startswith("weightslab-stager") for t in threading.enumerate())
    system.close()
    assert not any(t.name.startswith("weightslab-stager") for t in threading.enumerate())


def test_saves_through_save_as_trainer_callbacks_make_them_are_copied_ahead_too(tmp_path: Path) -> None:
    system, _, model, opt = _open(tmp_path)
    expected: dict[int, dict[str, Any]] = {}
    for step in range(1, 6):
        _train(model, opt)
        system.save(step * 100)  # what the Lightning and HF Trainer adapters call
        expected[step * 100] = _live(model, opt)
    system.flush()
    assert system._buffers.copied_ahead >= 3
    h = system.exp_hash
    assert h is not None
    system.close()
    for step, live in expected.items():
        assert _same(live, _saved(tmp_path, h, step)), f"step {step}"
