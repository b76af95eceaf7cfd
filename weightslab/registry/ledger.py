"""The ledger: what a training run registered, by kind and name.

One global :class:`Ledger` backs the module-level ``register_*``/``get_*`` functions here; build your own
``Ledger()`` for isolated use (tests, two runs in one process). The class lives in
:mod:`weightslab.registry.core` and the event types in :mod:`weightslab.registry.events`; they are
re-exported because this module is the ledger's public import path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from weightslab.registry.core import Ledger
from weightslab.registry.events import KINDS, Action, Kind, LedgerEvent, Listener, changed_keys
from weightslab.registry.yamlfile import load_yaml_mapping

if TYPE_CHECKING:
    pass

log = logging.getLogger("weightslab")

# -- the global ledger ------------------------------------------------------------------------------
_GLOBAL = Ledger()


def get_ledger() -> Ledger:
    """The process-wide ledger behind the module-level functions."""
    return _GLOBAL


def register_model(name_or_obj: Any, obj: Any = None) -> str:
    """Register a ``torch.nn.Module``: ``register_model("name", model)`` or ``register_model(model)``."""
    return _GLOBAL.register_model(name_or_obj, obj)


def register_optimizer(name_or_obj: Any, obj: Any = None) -> str:
    """Register a ``torch.optim.Optimizer`` (name defaults to "optimizer")."""
    return _GLOBAL.register_optimizer(name_or_obj, obj)


def register_scheduler(name_or_obj: Any, obj: Any = None) -> str:
    """Register anything with ``state_dict()``/``load_state_dict()`` as a scheduler."""
    return _GLOBAL.register_scheduler(name_or_obj, obj)


def register_stateful(name: str, obj: Any) -> str:
    """Register another stateful object (a data sampler, an EMA, a counter...)."""
    return _GLOBAL.register_stateful(name, obj)


def register_hyperparams(
    name_or_obj: Any, obj: Any = None, *, watch: bool = False, check_types: bool = False
) -> Any:
    """Register hyperparameters: a mapping, a dataclass instance or a YAML file path (``watch=True``: live)."""
    return _GLOBAL.register_hyperparams(name_or_obj, obj, watch=watch, check_types=check_types)


def set_hyperparam(key: str, value: Any, name: str | None = None) -> None:
    """Set a dotted hyperparameter key, e.g. ``set_hyperparam("optimizer.lr", 1e-4)``."""
    _GLOBAL.set_hyperparam(key, value, name)


def on_hyperparams_change(
    callback: Callable[[str, tuple[str, ...], Mapping[str, Any]], None],
) -> Callable[[], None]:
    """Call ``callback(name, keys, values)`` after every hyperparameter update; returns a remover."""
    return _GLOBAL.on_hyperparams_change(callback)


def get_model(name: str | None = None) -> Any:
    return _GLOBAL.get("model", name)


def get_optimizer(name: str | None = None) -> Any:
    return _GLOBAL.get("optimizer", name)


def get_scheduler(name: str | None = None) -> Any:
    return _GLOBAL.get("scheduler", name)


def get_hyperparams(name: str | None = None) -> Any:
    return _GLOBAL.get("hyperparams", name)


def get_stateful(name: str | None = None) -> Any:
    return _GLOBAL.get("stateful", name)


def list_models() -> list[str]:
    return _GLOBAL.list("model")


def list_optimizers() -> list[str]:
    return _GLOBAL.list("optimizer")


def list_schedulers() -> list[str]:
    return _GLOBAL.list("scheduler")


def list_hyperparams() -> list[str]:
    return _GLOBAL.list("hyperparams")


def unregister_model(name: str = "model") -> None:
    _GLOBAL.unregister("model", name)


def unregister_optimizer(name: str = "optimizer") -> None:
    _GLOBAL.unregister("optimizer", name)


def unregister_scheduler(name: str = "scheduler") -> None:
    _GLOBAL.unregister("scheduler", name)


def unregister_hyperparams(name: str = "hyperparams") -> None:
    _GLOBAL.unregister("hyperparams", name)


def clear_ledger() -> None:
    """Forget everything registered in the global ledger."""
    _GLOBAL.clear()


__all__ = [
    "Action",
    "KINDS",
    "Kind",
    "Ledger",
    "LedgerEvent",
    "Listener",
    "changed_keys",
    "clear_ledger",
    "get_hyperparams",
    "get_ledger",
    "get_model",
    "get_optimizer",
    "get_scheduler",
    "get_stateful",
    "list_hyperparams",
    "list_models",
    "list_optimizers",
    "list_schedulers",
    "load_yaml_mapping",
    "on_hyperparams_change",
    "register_hyperparams",
    "register_model",
    "register_optimizer",
    "register_scheduler",
    "register_stateful",
    "set_hyperparam",
    "unregister_hyperparams",
    "unregister_model",
    "unregister_optimizer",
    "unregister_scheduler",
]
