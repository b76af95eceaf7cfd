"""How a generic train_state maps onto a :class:`~weightslab.registry.ledger.Ledger` and back.

A train_state is any tree of dicts, lists and tuples. :func:`split_train_state` takes out the objects
the ledger saves by name (models, optimizers, LR schedulers, other objects with
``state_dict()``/``load_state_dict()``, each named by its key path) and leaves a reference in their
place; what remains (the tree's shape, tensors, numbers, strings) is held by a :class:`TreeState`,
one stateful object saved under the step file's ``extra``. :func:`rebuild_train_state` puts the
saved state dicts back where the references are; :func:`step_of` reads a train_state's step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from weightslab.errors import InvalidNameError
from weightslab.registry.events import Kind
from weightslab.util.names import validate_name

TREE_NAME = "checkpointer.tree"
TREE_FORMAT = "weightslab.train_state/1"
SECTIONS: dict[Kind, str] = {  # where the step file holds each kind of registered object
    "model": "models",
    "optimizer": "optimizers",
    "scheduler": "schedulers",
    "stateful": "extra",
}
_REF = "__weightslab_ref__"
_LEAVES = (bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)

__all__ = [
    "SECTIONS",
    "TREE_NAME",
    "TreeState",
    "kind_of",
    "rebuild_train_state",
    "split_train_state",
    "step_of",
]


class TreeState:
    """The plain part of a train_state (its shape, tensors and numbers) as one stateful object."""

    def __init__(self) -> None:
        self.tree: Any = None

    def state_dict(self) -> dict[str, Any]:
        """The tree, with the format it is written in."""
        return {"format": TREE_FORMAT, "tree": self.tree}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take the tree back from :meth:`state_dict`."""
        self.tree = state.get("tree")


def kind_of(obj: Any) -> Kind | None:
    """The ledger kind ``obj`` is registered as, or None for a value saved as it is."""
    if isinstance(obj, torch.nn.Module):
        return "model"
    if isinstance(obj, torch.optim.Optimizer):
        return "optimizer"
    if isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)):
        return "scheduler"
    if callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None)):
        return "stateful"
    return None


def split_train_state(state: Any) -> tuple[Any, dict[tuple[Kind, str], Any]]:
    """The tree of ``state`` with its objects replaced by references, and those objects by (kind, name).

    Raises TypeError naming the key path of a leaf that cannot be saved safely, InvalidNameError for
    a key path that cannot name an object.
    """
    objects: dict[tuple[Kind, str], Any] = {}
    refs: dict[int, list[str]] = {}  # an object reachable twice is saved once

    def walk(obj: Any, path: tuple[Any, ...]) -> Any:
        kind = kind_of(obj)
        if kind is not None:
            if id(obj) not in refs:
                name = ".".join(str(p) for p in path) or kind
                try:
                    validate_name(name, f"{kind} name")
                except InvalidNameError:
                    reason = (
                        f"train_state key path {path!r} holds a {kind}, and its keys name it in checkpoints"
                    )
                    raise InvalidNameError(name, reason) from None
                if (kind, name) == ("stateful", TREE_NAME):
                    raise InvalidNameError(name, "this name is reserved for the train_state's plain values")
                objects[(kind, name)] = obj
                refs[id(obj)] = [SECTIONS[kind], name]
            return {_REF: list(refs[id(obj)])}
        if isinstance(obj, Mapping):
            return {k: walk(v, (*path, k)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v, (*path, i)) for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return tuple(walk(v, (*path, i)) for i, v in enumerate(obj))
        if obj is None or isinstance(obj, (torch.Tensor, *_LEAVES)):
            return obj
        where = "".join(f"[{p!r}]" for p in path) or "itself"
        raise TypeError(
            f"train_state{where} is a {type(obj).__name__}, which cannot be saved without pickling code; "
            "give it state_dict()/load_state_dict(), or pass tensors, numbers, strings, lists and dicts "
            "(prepare_fn= can convert it)"
        )

    return walk(state, ()), objects


def rebuild_train_state(tree: Any, data: Mapping[str, Any]) -> Any:
    """The saved tree with each reference replaced by that object's state dict from step dict ``data``."""
    if isinstance(tree, dict):
        if set(tree) == {_REF}:
            section, name = tree[_REF]
            return data.get(section, {}).get(name)
        return {k: rebuild_train_state(v, data) for k, v in tree.items()}
    if isinstance(tree, list):
        return [rebuild_train_state(v, data) for v in tree]
    if isinstance(tree, tuple):
        return tuple(rebuild_train_state(v, data) for v in tree)
    return tree


def step_of(train_state: Any, prepared: Any) -> Any:
    """``step`` from the train_state (a "step" key or attribute), for saves called without one.

    ``prepared`` is the train_state after ``prepare_fn``; raises ValueError when neither has a step.
    """
    for state in (train_state, prepared):
        value = state.get("step") if isinstance(state, Mapping) else getattr(state, "step", None)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = int(value.item())
        if value is not None:
            return value
    raise ValueError("pass step=<int>: the train_state has no 'step' key or attribute to take it from")
