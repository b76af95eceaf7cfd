"""What the ledger says when it changes: kinds, actions, :class:`LedgerEvent` and changed keys."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from weightslab.util.flatten import flatten

if TYPE_CHECKING:
    pass

log = logging.getLogger("weightslab")

Kind = Literal["model", "optimizer", "scheduler", "hyperparams", "stateful"]
KINDS: tuple[Kind, ...] = ("model", "optimizer", "scheduler", "hyperparams", "stateful")
Action = Literal["register", "unregister", "update", "rejected"]


@dataclass(frozen=True)
class LedgerEvent:
    """What changed in the ledger.

    ``keys`` lists changed hyperparameter key paths on ``update``; on ``rejected`` (an invalid edit
    of a watched file that changed nothing) ``detail`` says why and ``source`` names the file.
    """

    kind: Kind
    name: str
    action: Action
    keys: tuple[str, ...] = ()
    detail: str = ""
    source: str | None = None


Listener = Callable[[LedgerEvent], None]


def changed_keys(old: Any, new: Any) -> tuple[str, ...]:
    """Dotted key paths whose values differ between two canonical mappings."""
    a, b = flatten(old, empty_root_is_leaf=True), flatten(new, empty_root_is_leaf=True)
    return tuple(sorted(k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING)))


_MISSING = object()


__all__ = ["Action", "KINDS", "Kind", "LedgerEvent", "Listener", "changed_keys"]
