"""Experiment hashes: the model architecture plus the hyperparameters, as 16 hex digits.

``exp_hash = xxh3_64(canonical_json({"architecture": signature, "hyperparams": hp}))``.
The architecture signature lists every module (qualified name, class, ``extra_repr()``) and every
parameter and buffer (name, shape, dtype). It never includes weights, ``requires_grad``, ids or
addresses, so the same model built in another process or on another machine hashes the same, and
freezing or re-initialising a model keeps its hash.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import xxhash

from weightslab.registry.wrappers import user_class_of
from weightslab.util.canonical import canonical_json, canonicalize, strip_prefixes


@dataclass(frozen=True)
class ExperimentIdentity:
    """The three hashes of one configuration (16 lowercase hex digits each)."""

    exp_hash: str
    architecture_hash: str
    hyperparams_hash: str


def _hex16(data: bytes) -> str:
    return xxhash.xxh3_64(data).hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# One module as the architecture hash sees it: (qualified name, class, extra_repr, its own parameters
# and buffers as (name, shape, dtype)). Tuples of hashable, comparable values that hold no tensor or
# module, so that two walks compare in one C-level ``==`` and a cached walk keeps nothing alive.
_ModuleKey = tuple[
    str,
    str,
    str,
    tuple[tuple[str, torch.Size, torch.dtype], ...],
    tuple[tuple[str, torch.Size, torch.dtype], ...],
]


_TYPES: weakref.WeakKeyDictionary[type, tuple[str, bool, bool]] = weakref.WeakKeyDictionary()
"""Per module type: the user's class name, and whether the type keeps torch's own ``named_parameters``
and ``named_buffers`` (weak: torch.fx and parametrize make a class per instance)."""


def _type_info(cls: type) -> tuple[str, bool, bool]:
    info = _TYPES.get(cls)
    if info is None:
        user = user_class_of(cls)
        info = (
            f"{user.__module__}.{user.__qualname__}",
            getattr(cls, "named_parameters", None) is torch.nn.Module.named_parameters,
            getattr(cls, "named_buffers", None) is torch.nn.Module.named_buffers,
        )
        _TYPES[cls] = info
    return info


def _listed(named: Any) -> tuple[tuple[str, torch.Size, torch.dtype], ...]:
    """``(name, shape, dtype)`` of what ``named_parameters``/``named_buffers(recurse=False)`` lists."""
    return tuple([(name, t.shape, t.dtype) for name, t in named(recurse=False) if t is not None])


def _own(tensors: dict[str, Any], named: Any) -> tuple[tuple[str, torch.Size, torch.dtype], ...]:
    """The same read straight from a module's registry (``_parameters`` or ``_buffers``), without
    the generator; a tensor registered under two names is left to ``named`` (torch's own method),
    which lists it once."""
    if not tensors:
        return ()
    own = [(name, t) for name, t in tensors.items() if t is not None]
    if len(own) > 1 and len({id(t) for _, t in own}) != len(own):
        return _listed(named)
    return tuple([(name, t.shape, t.dtype) for name, t in own])


def _module_keys(model: torch.nn.Module) -> tuple[_ModuleKey, ...]:
    """The walk the architecture hash covers, in ``named_modules()`` order (shared modules repeated).

    A module's own tensors are read from its registries, as torch's ``named_parameters`` and
    ``named_buffers`` list them; a type that overrides either is asked through the override.
    """
    keys = []
    for qualname, module in model.named_modules(remove_duplicate=False):
        try:
            extra = module.extra_repr()
        except Exception as exc:  # a broken extra_repr must not stop a save
            extra = f"<extra_repr failed: {type(exc).__name__}>"
        name, plain_params, plain_buffers = _type_info(type(module))
        p, b = module.named_parameters, module.named_buffers
        params = _own(module._parameters, p) if plain_params else _listed(p)
        buffers = _own(module._buffers, b) if plain_buffers else _listed(b)
        keys.append((qualname, name, extra, params, buffers))
    return tuple(keys)


def _records(keys: tuple[_ModuleKey, ...]) -> list[dict[str, Any]]:
    return [
        {
            "name": qualname,
            "class": cls,
            "extra": extra,
            "params": [[n, list(shape), _dtype_name(dtype)] for n, shape, dtype in params],
            "buffers": [[n, list(shape), _dtype_name(dtype)] for n, shape, dtype in buffers],
        }
        for qualname, cls, extra, params, buffers in keys
    ]


def architecture_signature(model: torch.nn.Module) -> list[dict[str, Any]]:
    """One record per module, in ``named_modules()`` order (duplicates of shared modules included).

    Each record holds the module's qualified name, class, ``extra_repr()`` and its own parameters and
    buffers (name, shape, dtype): what the architecture hash covers, and what a change diff compares.
    """
    return _records(_module_keys(model))


class ExperimentHashGenerator:
    """Computes architecture signatures and experiment hashes.

    ``exclude_hyperparams`` lists dotted key paths that do not count, either inside every set
    ("log_every") or qualified by the set name ("config.log_every").
    """

    def __init__(self, exclude_hyperparams: Iterable[str] = ()) -> None:
        self.exclude_hyperparams = frozenset(exclude_hyperparams)
        # the last identity, with the walk and canonical hyperparameters it was computed from
        self._last: (
            tuple[tuple[tuple[str, tuple[_ModuleKey, ...]], ...], bytes, ExperimentIdentity] | None
        ) = None

    architecture_signature = staticmethod(architecture_signature)

    def architecture(self, models: Mapping[str, torch.nn.Module]) -> dict[str, Any]:
        return {name: self.architecture_signature(m) for name, m in sorted(models.items())}

    def hyperparams(self, sets: Mapping[str, Any]) -> dict[str, Any]:
        """The canonical form of every registered set, with excluded keys removed."""
        return {
            name: canonicalize(hp, "", strip_prefixes(self.exclude_hyperparams, name))
            for name, hp in sorted(sets.items())
            if name not in self.exclude_hyperparams
        }

    def hyperparams_hash(self, hyperparams: Mapping[str, Any]) -> str:
        """The 16-hex hash of the hyperparameter sets alone (cheap: no architecture walk)."""
        return _hex16(canonical_json(self.hyperparams(hyperparams)))

    def identity(
        self, models: Mapping[str, torch.nn.Module], hyperparams: Mapping[str, Any]
    ) -> ExperimentIdentity:
        """All three hashes at once (the architecture walk is made once).

        Runs before every save, so the last result is kept with the walk and the hyperparameters it
        came from: when the walk (every module's name, class and ``extra_repr()``, every parameter's
        and buffer's name, shape and dtype) and the hyperparameters compare equal, the hashes are
        the same and the canonical JSON is not built again. Nothing is assumed unchanged: the walk
        is taken anew on every call, only the serialisation and hashing are saved.
        """
        walk = tuple((name, _module_keys(m)) for name, m in sorted(models.items()))
        hp = self.hyperparams(hyperparams)
        hp_json = canonical_json(hp)
        last = self._last
        if last is not None and last[0] == walk and last[1] == hp_json:
            return last[2]
        arch = {name: _records(keys) for name, keys in walk}
        ident = ExperimentIdentity(
            exp_hash=_hex16(canonical_json({"architecture": arch, "hyperparams": hp})),
            architecture_hash=_hex16(canonical_json(arch)),
            hyperparams_hash=_hex16(hp_json),
        )
        self._last = (walk, hp_json, ident)
        return ident

    def generate(self, models: Mapping[str, torch.nn.Module], hyperparams: Mapping[str, Any]) -> str:
        """The 16-hex experiment hash of these models and hyperparameter sets."""
        return self.identity(models, hyperparams).exp_hash
