"""Experiment hashes: the model architecture plus the hyperparameters, as 16 hex digits.

``exp_hash = xxh3_64(canonical_json({"architecture": signature, "hyperparams": hp}))``.
The architecture signature lists every module (qualified name, class, ``extra_repr()``) and every
parameter and buffer (name, shape, dtype). It never includes weights, ``requires_grad``, ids or
addresses, so the same model built in another process or on another machine hashes the same, and
freezing or re-initialising a model keeps its hash.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import xxhash

from weightslab.registry.wrappers import user_class
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


def architecture_signature(model: torch.nn.Module) -> list[dict[str, Any]]:
    """One record per module, in ``named_modules()`` order (duplicates of shared modules included).

    Each record holds the module's qualified name, class, ``extra_repr()`` and its own parameters and
    buffers (name, shape, dtype): what the architecture hash covers, and what a change diff compares.
    """
    records: list[dict[str, Any]] = []
    for qualname, module in model.named_modules(remove_duplicate=False):
        try:
            extra = module.extra_repr()
        except Exception as exc:  # a broken extra_repr must not stop a save
            extra = f"<extra_repr failed: {type(exc).__name__}>"
        records.append(
            {
                "name": qualname,
                "class": f"{user_class(module).__module__}.{user_class(module).__qualname__}",
                "extra": extra,
                "params": [
                    [n, list(p.shape), _dtype_name(p.dtype)]
                    for n, p in module.named_parameters(recurse=False)
                ],
                "buffers": [
                    [n, list(b.shape), _dtype_name(b.dtype)]
                    for n, b in module.named_buffers(recurse=False)
                    if b is not None
                ],
            }
        )
    return records


class ExperimentHashGenerator:
    """Computes architecture signatures and experiment hashes.

    ``exclude_hyperparams`` lists dotted key paths that do not count, either inside every set
    ("log_every") or qualified by the set name ("config.log_every").
    """

    def __init__(self, exclude_hyperparams: Iterable[str] = ()) -> None:
        self.exclude_hyperparams = frozenset(exclude_hyperparams)

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
        """All three hashes at once (the architecture signature is computed once)."""
        arch = self.architecture(models)
        hp = self.hyperparams(hyperparams)
        return ExperimentIdentity(
            exp_hash=_hex16(canonical_json({"architecture": arch, "hyperparams": hp})),
            architecture_hash=_hex16(canonical_json(arch)),
            hyperparams_hash=_hex16(canonical_json(hp)),
        )

    def generate(self, models: Mapping[str, torch.nn.Module], hyperparams: Mapping[str, Any]) -> str:
        """The 16-hex experiment hash of these models and hyperparameter sets."""
        return self.identity(models, hyperparams).exp_hash
