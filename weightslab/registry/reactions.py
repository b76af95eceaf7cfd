"""Ready-made reactions to hyperparameter changes: :func:`apply_lr_changes` sets a new learning rate."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from weightslab.registry.core import Ledger
from weightslab.registry.ledger import get_ledger

if TYPE_CHECKING:
    pass

log = logging.getLogger("weightslab")


# A little over 60 lines: the docstring and the argument checks are most of it.
def apply_lr_changes(
    key: str = "lr",
    optimizer: torch.optim.Optimizer | str | None = None,
    *,
    name: str | None = None,
    ledger: Ledger | None = None,
) -> Callable[[], None]:
    """React to changes of a learning-rate hyperparameter by setting it on an optimizer's param groups.

    So that editing ``lr`` in a watched file (or ``set_hyperparam("lr", ...)``) really changes
    training. Returns a function that removes the reaction.

    Args:
        key: dotted key of the learning rate inside its set ("lr", "optimizer.lr"); the set's name
            may lead it ("config.lr").
        optimizer: the optimizer, the name it is registered under, or None for the only registered
            optimizer (looked up at each change, so it may be registered later).
        name: react to this hyperparameter set only (default: any set with that key).
        ledger: the ledger to listen to (default: the global one).

    A value that is not a finite number >= 0 is logged and not applied. An LR scheduler that
    computes from its ``base_lrs`` (LambdaLR, OneCycleLR) overrides the new value at its next
    step; update the scheduler in your own ``on_hyperparams_change`` callback in that case.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty dotted key such as 'lr' or 'optimizer.lr', got {key!r}")
    if optimizer is not None and not isinstance(optimizer, (str, torch.optim.Optimizer)):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, its registered name or None, got {type(optimizer).__name__}"
        )
    led = ledger if ledger is not None else get_ledger()

    def react(set_name: str, keys: tuple[str, ...], values: Mapping[str, Any]) -> None:
        if name is not None and set_name != name:
            return
        inner = key[len(set_name) + 1 :] if key not in keys and key.startswith(set_name + ".") else key
        if inner not in keys:
            return
        found, value = _lookup(values, inner.split("."))
        if not found:
            log.warning(
                "weightslab: %s.%s was removed; the optimizer keeps its learning rate", set_name, inner
            )
            return
        lr = _as_lr(value)
        if lr is None:
            log.warning(
                "weightslab: %s.%s = %r is not a finite number >= 0; the optimizer keeps its learning rate",
                set_name,
                inner,
                value,
            )
            return
        opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else led.get("optimizer", optimizer)
        for group in opt.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)  # capturable/fused optimizers keep lr as a tensor
            else:
                group["lr"] = lr
        log.info("weightslab: learning rate set to %g from %s.%s", lr, set_name, inner)

    return led.on_hyperparams_change(react)


def _lookup(values: Any, parts: list[str]) -> tuple[bool, Any]:
    node = values
    for part in parts:
        if isinstance(node, Mapping):
            if part not in node:
                return False, None
            node = node[part]
        elif dataclasses.is_dataclass(node) and hasattr(node, part):
            node = getattr(node, part)
        else:
            return False, None
    return True, node


def _as_lr(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    try:
        lr = float(value)
    except (TypeError, ValueError):
        return None
    return lr if math.isfinite(lr) and lr >= 0 else None


__all__ = ["apply_lr_changes"]
