"""The ledger: registration by kind and name, type checks, hyperparameters, listeners, threads."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
import torch

import weightslab as wl
from weightslab.errors import HyperparamsError, InvalidNameError
from weightslab.registry.ledger import Ledger, LedgerEvent


def test_register_with_and_without_a_name(ledger: Ledger) -> None:
    m1, m2 = torch.nn.Linear(2, 2), torch.nn.Linear(3, 3)
    assert ledger.register_model(m1) == "model"
    assert ledger.register_model("encoder", m2) == "encoder"
    assert ledger.get("model", "model") is m1
    assert ledger.get("model", "encoder") is m2
    assert ledger.list("model") == ["encoder", "model"]
    ledger.unregister("model", "encoder")
    assert ledger.get("model") is m1  # the only one


def test_module_level_functions_use_the_global_ledger() -> None:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    wl.register_model("model", model)
    wl.register_optimizer(opt)
    sched = torch.optim.lr_scheduler.StepLR(opt, 10)
    wl.register_scheduler("scheduler", sched)
    assert wl.get_model() is model and wl.get_optimizer() is opt and wl.get_scheduler() is sched
    assert wl.list_models() == ["model"] and wl.list_optimizers() == ["optimizer"]
    assert wl.get_ledger().get("scheduler", "scheduler") is sched
    wl.unregister_model()
    assert wl.list_models() == []


@pytest.mark.parametrize(
    ("method", "obj", "expected"),
    [
        ("register_model", object(), "register_model expects a torch.nn.Module, got object"),
        (
            "register_optimizer",
            torch.nn.Linear(1, 1),
            "register_optimizer expects a torch.optim.Optimizer, got Linear",
        ),
        (
            "register_scheduler",
            3,
            "register_scheduler expects an object with state_dict\\(\\) and load_state_dict\\(\\), got int",
        ),
        (
            "register_hyperparams",
            3.5,
            "register_hyperparams expects a mapping, a dataclass instance or the path",
        ),
    ],
)
def test_wrong_types_name_what_was_expected(ledger: Ledger, method: str, obj: object, expected: str) -> None:
    with pytest.raises(TypeError, match=expected):
        getattr(ledger, method)("x", obj)


def test_register_stateful_requires_state_dict(ledger: Ledger) -> None:
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def state_dict(self) -> dict[str, int]:
            return {"n": self.n}

        def load_state_dict(self, sd: dict[str, int]) -> None:
            self.n = sd["n"]

    ledger.register_stateful("counter", Counter())
    with pytest.raises(TypeError, match="register_stateful expects an object with state_dict"):
        ledger.register_stateful("bad", object())


def test_missing_object_is_a_clear_error(ledger: Ledger) -> None:
    with pytest.raises(TypeError, match=r"register_model\('model'\) is missing the object"):
        ledger.register_model("model")


@pytest.mark.parametrize("name", ["", "a/b", "..", "x\x00y", "../etc", "a\\b"])
def test_unsafe_names_are_refused(ledger: Ledger, name: str) -> None:
    with pytest.raises(InvalidNameError, match="invalid name"):
        ledger.register_model(name, torch.nn.Linear(1, 1))


def test_get_unknown_and_ambiguous(ledger: Ledger) -> None:
    with pytest.raises(KeyError, match="no model named 'nope' is registered"):
        ledger.get("model", "nope")
    ledger.register_model("a", torch.nn.Linear(1, 1))
    ledger.register_model("b", torch.nn.Linear(1, 1))
    with pytest.raises(KeyError, match="pass the name"):
        ledger.get("model")


def test_hyperparams_dict_is_kept_by_reference(ledger: Ledger) -> None:
    cfg = {"lr": 0.1, "optimizer": {"betas": (0.9, 0.99)}}
    assert ledger.register_hyperparams("config", cfg) is cfg
    ledger.set_hyperparam("optimizer.lr", 1e-4)
    assert cfg["optimizer"]["lr"] == 1e-4  # type: ignore[index]


def test_hyperparams_from_yaml_and_dataclass(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("lr: 0.01\nmodel:\n  width: 64\n")
    cfg = ledger.register_hyperparams("config", str(path))
    assert cfg == {"lr": 0.01, "model": {"width": 64}}
    assert ledger.hyperparams_source("config") == path.resolve()

    @dataclasses.dataclass
    class Train:
        lr: float = 0.1
        epochs: int = 3

    train = Train()
    assert ledger.register_hyperparams("train", train) is train
    ledger.set_hyperparam("epochs", 5, name="train")
    assert train.epochs == 5
    with pytest.raises(KeyError, match="not a field of Train"):
        ledger.set_hyperparam("nope", 1, name="train")


def test_yaml_with_python_tags_is_refused(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("lr: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(HyperparamsError, match="not valid safe YAML at line 1"):
        ledger.register_hyperparams("config", str(path))


def test_yaml_that_is_not_a_mapping_is_refused(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(HyperparamsError, match="holds a list, expected a mapping"):
        ledger.register_hyperparams("config", str(path))


def test_unserialisable_hyperparams_are_refused_at_registration(ledger: Ledger) -> None:
    with pytest.raises(
        HyperparamsError, match=r"hyperparameter config.act = .* of type function cannot be serialised"
    ):
        ledger.register_hyperparams("config", {"act": lambda x: x})


def test_set_hyperparam_ambiguity(ledger: Ledger) -> None:
    ledger.register_hyperparams("a", {"lr": 1})
    ledger.register_hyperparams("b", {"lr": 2})
    with pytest.raises(KeyError, match="ambiguous"):
        ledger.set_hyperparam("lr", 3)
    ledger.set_hyperparam("b.lr", 3)
    assert ledger.get("hyperparams", "b") == {"lr": 3}


def test_listeners_hear_registrations_and_updates(ledger: Ledger) -> None:
    heard: list[LedgerEvent] = []
    remove = ledger.add_listener(heard.append)
    ledger.register_hyperparams("config", {"lr": 0.1, "wd": 0.0})
    ledger.set_hyperparam("lr", 0.2)
    ledger.unregister("hyperparams", "config")
    remove()
    ledger.register_model(torch.nn.Linear(1, 1))
    assert [(e.kind, e.name, e.action, e.keys) for e in heard] == [
        ("hyperparams", "config", "register", ()),
        ("hyperparams", "config", "update", ("lr",)),
        ("hyperparams", "config", "unregister", ()),
    ]


def test_a_failing_listener_does_not_break_registration(ledger: Ledger) -> None:
    def boom(event: LedgerEvent) -> None:
        raise RuntimeError("listener bug")

    ledger.add_listener(boom)
    ledger.register_model(torch.nn.Linear(1, 1))
    assert ledger.list("model") == ["model"]


def test_version_moves_on_every_change(ledger: Ledger) -> None:
    v0 = ledger.version
    ledger.register_hyperparams("config", {"lr": 1})
    ledger.set_hyperparam("lr", 2)
    assert ledger.version == v0 + 2


def test_concurrent_registration_is_safe(ledger: Ledger) -> None:
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(50):
                ledger.register_model(f"m{i}_{j}", torch.nn.Identity())
                ledger.register_hyperparams(f"h{i}", {"j": j})
                ledger.list("model")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(ledger.list("model")) == 400
    assert ledger.list("hyperparams") == [f"h{i}" for i in range(8)]
