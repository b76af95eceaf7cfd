"""Wrappers that distributed training and compilation add change neither the hash nor the step file."""

from __future__ import annotations

import torch

from weightslab.registry.core import Ledger
from weightslab.registry.wrappers import unwrap, user_class
from weightslab.system.identity import ExperimentHashGenerator


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))


def test_torch_compile_and_data_parallel_are_seen_through() -> None:
    model = _model()
    compiled = torch.compile(model)  # not called: nothing is compiled
    parallel = torch.nn.DataParallel(model)
    assert unwrap(compiled) is model
    assert unwrap(parallel) is model
    assert unwrap(torch.nn.DataParallel(compiled)) is model  # nested wrappers too
    hasher = ExperimentHashGenerator()
    plain = hasher.identity({"m": model}, {})
    for wrapped in (compiled, parallel):
        ledger = Ledger()
        ledger.register_model("m", wrapped)
        registered = ledger.items("model")["m"]
        assert registered is model
        assert set(registered.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
        assert hasher.identity(ledger.items("model"), {}) == plain


def test_user_class_is_the_class_itself_for_plain_modules() -> None:
    assert user_class(torch.nn.Linear(2, 2)) is torch.nn.Linear
