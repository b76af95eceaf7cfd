"""Shared fixtures: isolated ledgers, systems that always close, tiny real models."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from weightslab.registry.ledger import Ledger, get_ledger
from weightslab.system import api as system_api
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig


@pytest.fixture(autouse=True)
def _isolate_globals() -> Iterator[None]:
    """No test leaks a global system or global registrations into the next."""
    yield
    system = system_api._SYSTEM
    if system is not None and not system.closed:
        system.close()
    get_ledger().clear()


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
def make_system(tmp_path: Path, ledger: Ledger) -> Iterator[Callable[..., AutomaticCheckpointSystem]]:
    """Build systems on an isolated ledger (root defaults to tmp_path/'root'); all closed at teardown."""
    made: list[AutomaticCheckpointSystem] = []

    def make(**options: Any) -> AutomaticCheckpointSystem:
        options.setdefault("root_log_dir", tmp_path / "root")
        options.setdefault("checkpoint_frequency", 10)
        lg = options.pop("ledger", ledger)
        system = AutomaticCheckpointSystem(CheckpointConfig(**options), ledger=lg)
        made.append(system)
        return system

    yield make
    for system in made:
        if not system.closed:
            system.close()


def mlp(sizes: tuple[int, ...] = (8, 16, 4), seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, in_features: int = 8) -> float:
    x = torch.randn(16, in_features)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


# -- checkpoint-manager helpers ---------------------------------------------------------------------
def writes(data: bytes) -> Callable[[Any], None]:
    """A payload function for ``CheckpointManager.save``: writes ``data`` as the step file."""

    def produce(w: Any) -> None:
        w.write(data)

    return produce


def bare_experiment(
    mgr: Any, exp_hash: str, retention: dict[str, Any] | None = None, parent: Any = None
) -> None:
    """Create experiment ``exp_hash`` in ``mgr`` (a writer) with no model and one small config."""
    mgr.create_experiment(
        exp_hash=exp_hash,
        architecture_hash="a",
        hyperparams_hash="h",
        parent=parent,
        retention={} if retention is None else retention,
        hyperparams={"lr": 0.1},
        models={},
    )
