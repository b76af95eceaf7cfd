"""The per-step change check: whole on small models, amortised on large ones, whole before every save."""

from __future__ import annotations

import math
from typing import Any

import torch

from weightslab.registry.ledger import Ledger
from weightslab.system.changes import SCAN_BUDGET, ChangeDetector


def wide_model(layers: int) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(layers)])


def register(ledger: Ledger, model: torch.nn.Module) -> None:
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    ledger.register_hyperparams("config", {"lr": 0.1})


def triggers(system: Any) -> list[tuple[int, str]]:
    system.flush()
    return [(e.step, e.trigger) for e in system.manager.checkpoints(system.exp_hash)]


def test_a_model_within_the_budget_is_read_whole_on_every_call(ledger: Ledger) -> None:
    model = wide_model(SCAN_BUDGET // 2)  # SCAN_BUDGET tensors: weights and biases
    register(ledger, model)
    detector = ChangeDetector(ledger)
    try:
        detector.rebaseline()
        assert detector.window == 1
        assert not detector.changed()
        model[-1].bias.requires_grad_(False)  # the last tensor
        assert detector.changed()
    finally:
        detector.close()


def test_a_large_model_is_read_in_slices_and_every_tensor_is_read_within_the_window(ledger: Ledger) -> None:
    model = wide_model(500)  # 1,000 tensors
    register(ledger, model)
    detector = ChangeDetector(ledger)
    try:
        detector.rebaseline()
        assert detector.window == math.ceil(1000 / SCAN_BUDGET)
        assert not any(detector.changed() for _ in range(detector.window))
        for index in (0, 517, 999):  # first, middle and last tensor, each on its own
            tensor = list(model.parameters())[index]
            tensor.requires_grad_(False)
            seen = [detector.changed() for _ in range(detector.window)]
            assert seen.count(True) == 1, index  # one slice holds it, and it is read once a window
            tensor.requires_grad_(True)
            assert not any(detector.changed() for _ in range(detector.window))
    finally:
        detector.close()


def test_a_data_shrink_in_a_large_model_is_seen_within_the_window(ledger: Ledger) -> None:
    model = wide_model(500)
    register(ledger, model)
    detector = ChangeDetector(ledger)
    try:
        detector.rebaseline()
        with torch.no_grad():
            model[300].weight.data = model[300].weight.data[:2].clone()
        assert any(detector.changed() for _ in range(detector.window))
    finally:
        detector.close()


def test_versions_and_hyperparameters_are_read_on_every_call(ledger: Ledger) -> None:
    model = wide_model(500)
    register(ledger, model)
    detector = ChangeDetector(ledger)
    try:
        detector.rebaseline()
        ledger.get("hyperparams", "config")["lr"] = 0.2
        assert all(detector.changed() for _ in range(3))
        ledger.get("hyperparams", "config")["lr"] = 0.1
        model.append(torch.nn.Linear(4, 4))  # the registration hooks' counter moves
        assert detector.changed()
    finally:
        detector.close()


def test_a_freeze_in_a_large_model_is_saved_within_the_window(make_system: Any, ledger: Ledger) -> None:
    model = wide_model(500)
    register(ledger, model)
    system = make_system(checkpoint_frequency=10**6, async_save=False)
    system.checkpoint_on_step(0)
    window = system._detector.window
    model[250].weight.requires_grad_(False)
    for step in range(1, window + 1):
        system.checkpoint_on_step(step)
    saved = triggers(system)
    assert len(saved) == 1 and saved[0][1] == "freeze" and 1 <= saved[0][0] <= window
    data = system.manager.load(system.exp_hash, saved[0][0])
    assert data["frozen"] == {"model": ["250.weight"]}


def test_a_save_reads_every_tensor_whatever_the_slice(make_system: Any, ledger: Ledger) -> None:
    model = wide_model(500)
    register(ledger, model)
    system = make_system(checkpoint_frequency=2, async_save=False)
    system.checkpoint_on_step(1)
    first = system.exp_hash
    with torch.no_grad():  # the slice read at step 2 holds the first tensors, not this one
        model[499].weight.data = model[499].weight.data[:2].clone()
    system.checkpoint_on_step(2)
    assert system.exp_hash != first
    assert triggers(system) == [(2, "model_change")]


def test_a_small_model_freeze_is_saved_at_the_step_it_happens(make_system: Any, ledger: Ledger) -> None:
    model = wide_model(3)
    register(ledger, model)
    system = make_system(checkpoint_frequency=10**6, async_save=False)
    for step in range(5):
        system.checkpoint_on_step(step)
    model[1].bias.requires_grad_(False)
    system.checkpoint_on_step(5)
    assert triggers(system) == [(5, "freeze")]
