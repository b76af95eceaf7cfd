"""What an imported checkpoint is, as an experiment: its model name, its fit to a model, its hyperparameters.

With a model, the source's state dict is put in that model's names (a shared prefix dropped, tied
weights filled in) and checked against it. Without one, :func:`state_dict_skeleton` stands in for the
model: a tree of plain modules on the meta device whose architecture signature lists every tensor's
name, shape and dtype, hashed by the same :class:`~weightslab.system.identity.ExperimentHashGenerator`
as a training run's model.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from weightslab.errors import ArchitectureMismatchError, CheckpointFormatError, ConfigError, HyperparamsError
from weightslab.inspect.importing_formats import Source
from weightslab.util.canonical import canonicalize
from weightslab.util.names import validate_name


def models_of(
    model: torch.nn.Module | Mapping[str, torch.nn.Module] | None, default: str
) -> dict[str, torch.nn.Module]:
    """``{name: model}`` for the ``model`` argument (``default`` names a bare module); ``{}`` for None.

    Raises ConfigError unless it is one module, InvalidNameError for a name unfit for the ledger.
    """
    if model is None:
        return {}
    models = {default: model} if isinstance(model, torch.nn.Module) else dict(model)
    if len(models) != 1 or not all(isinstance(m, torch.nn.Module) for m in models.values()):
        raise ConfigError(
            "model must be one torch.nn.Module, or {name: module} with one entry: a checkpoint to import "
            f"holds one model's weights (got {type(model).__name__})"
        )
    for n in models:
        validate_name(n, "model name")
    return models


def fit_state_dict(src: Source, model: torch.nn.Module) -> dict[str, Any]:
    """The source's state dict in the names of ``model``: a shared prefix dropped, tied weights filled in.

    Raises ArchitectureMismatchError naming what differs when the model does not fit it.
    """
    live = model.state_dict()
    state = dict(src.model)
    heads = {k.split(".", 1)[0] for k in state}
    if set(state) != set(live) and len(heads) == 1 and all("." in k for k in state):
        # a wrapper's state dict (a LightningModule holding ``self.net``) imported for the inner module
        prefix = f"{heads.pop()}."
        stripped = {k[len(prefix) :]: v for k, v in state.items()}
        if set(stripped) <= set(live):
            state = stripped
            src.notes.append(f"the prefix {prefix!r} of every name was dropped to fit the model")
    # tied weights are saved once (safetensors keeps one name): fill in the other names of that tensor
    by_storage: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
    for k, v in live.items():
        ptr = v.untyped_storage().data_ptr() if isinstance(v, torch.Tensor) and v.numel() else 0
        if ptr:  # a model built on the meta device has no storage: its ties cannot be seen
            by_storage.setdefault((ptr, int(v.storage_offset()), tuple(v.shape)), []).append(k)
    for aliases in by_storage.values():
        present = [a for a in aliases if a in state]
        for a in aliases:
            if present and a not in state:
                state[a] = state[present[0]]
    missing = [k for k in live if k not in state]
    unexpected = [k for k in state if k not in live]
    wrong = [
        f"{k}: source {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in live.items()
        if isinstance(state.get(k), torch.Tensor)
        and isinstance(v, torch.Tensor)
        and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = [f"shapes differ: {'; '.join(wrong[:5])}"] if wrong else []
        parts += [f"missing from the source: {', '.join(missing[:5])}"] if missing else []
        parts += [f"not in the model: {', '.join(unexpected[:5])}"] if unexpected else []
        raise ArchitectureMismatchError(
            f"the model given does not fit the weights of {src.path} ({'; '.join(parts)}); nothing was "
            "imported. Pass the module the checkpoint was trained with, or no model (the hash then comes "
            "from the state dict)"
        )
    return {k: state[k] for k in live}


def hyperparameter_sets(hyperparams: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameter sets, checked: each a mapping (or dataclass) under a valid name."""
    if not isinstance(hyperparams, Mapping):
        raise ConfigError(
            f"hyperparams must map set names to sets, as register_hyperparams(name, values) takes them "
            f"(for example {{'config': {{'lr': 0.001}}}}), got {type(hyperparams).__name__}"
        )
    for n, hp in hyperparams.items():
        validate_name(n, "hyperparameter set name")
        if not isinstance(hp, Mapping) and not hasattr(hp, "__dataclass_fields__"):
            raise ConfigError(
                f"hyperparameter set {n!r} is a {type(hp).__name__}; hyperparams maps set names to sets "
                f"(for example {{'config': {{{n!r}: {hp!r}}}}})"
            )
        canonicalize(hp, n)  # HyperparamsError names a value that cannot be recorded
    return dict(hyperparams)


def recordable(value: Any, path: str, notes: list[str]) -> Any:
    """What a source records as hyperparameters, without the values no config file can hold (each noted).

    A Namespace (Lightning hparams loaded with trust) becomes its fields. Only for what the source
    records: hyperparameters the caller passes are taken as they are, or refused.
    """
    if isinstance(value, (Mapping, argparse.Namespace, types.SimpleNamespace)):
        items = value.items() if isinstance(value, Mapping) else vars(value).items()
        return {
            k: v
            for k, v in ((k, recordable(v, f"{path}.{k}" if path else str(k), notes)) for k, v in items)
            if v is not _DROP
        }
    try:
        canonicalize(value, path)
    except HyperparamsError as exc:
        notes.append(f"hyperparameter {path} not recorded: {exc}")
        return _DROP
    return value


_DROP = object()


def state_dict_skeleton(state: Mapping[str, Any], source: Path | str = "the source") -> torch.nn.Module:
    """A tree of plain modules holding every tensor of ``state`` on the meta device, under its name.

    Its architecture signature (names, shapes, dtypes) is the experiment's when no model is given, and
    its summary is what ``weightslab show`` lists. Floating tensors become parameters, others buffers.
    Raises CheckpointFormatError for names no module tree can hold (empty parts, module attributes).
    """
    root = torch.nn.Module()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        *parents, leaf = key.split(".")
        node = root
        try:
            for part in parents:
                child = node._modules.get(part)
                if child is None:
                    child = torch.nn.Module()
                    node.add_module(part, child)
                node = child
            meta = torch.empty(value.shape, dtype=value.dtype, device="meta")
            if meta.is_floating_point() or meta.is_complex():
                node.register_parameter(leaf, torch.nn.Parameter(meta))
            else:
                node.register_buffer(leaf, meta)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointFormatError(
                f"tensor name {key!r} in {source} cannot be laid out as modules ({exc}); pass the model the "
                "checkpoint was trained with (model=...)"
            ) from exc
    return root


__all__ = ["fit_state_dict", "hyperparameter_sets", "models_of", "recordable", "state_dict_skeleton"]
