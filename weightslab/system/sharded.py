"""Sharded training state (FSDP2, tensor parallel, any DTensor) in and out of DCP's flat form.

The state dicts come from ``torch.distributed.checkpoint.state_dict`` (``get_model_state_dict``,
``get_optimizer_state_dict`` with FQN keys), the supported way to read a sharded module and its
optimizer; the keys they are stored under are described in :mod:`weightslab.format.sharded`.
Loading goes into the live objects' own (sharded or plain) tensors, so DCP reshards to whatever
world size and wrapping the resuming run has, one plain process included.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

import torch

from weightslab.errors import ArchitectureMismatchError
from weightslab.format.sharded import describe, model_key, optimizer_key
from weightslab.registry.ledger import Ledger

log = logging.getLogger("weightslab")


def _dsd() -> Any:
    from torch.distributed.checkpoint import state_dict

    return state_dict


def _flat_options() -> Any:
    return _dsd().StateDictOptions(flatten_optimizer_state_dict=True)


def is_sharded(
    models: Mapping[str, torch.nn.Module], params: Sequence[torch.nn.Parameter] | None = None
) -> bool:
    """Whether any registered model holds a DTensor (FSDP2 ``fully_shard``, tensor parallel).

    No DTensor can exist before its package is imported, so until something imports
    ``torch.distributed.tensor`` no parameter is read (this runs before every save). The process
    group is no guide: DTensors outlive ``destroy_process_group()``. ``params``: the models'
    parameters when the caller has them already (no walk of the module trees).
    """
    if not torch.distributed.is_available() or "torch.distributed.tensor" not in sys.modules:
        return False
    from torch.distributed.tensor import DTensor

    if params is None:
        params = [p for m in models.values() for p in m.parameters()]
    return any(map(isinstance, params, repeat(DTensor)))


def _owner(models: Mapping[str, torch.nn.Module], optimizer: torch.optim.Optimizer, name: str) -> str:
    """The registered model whose parameters ``optimizer`` updates."""
    ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for model_name, model in models.items():
        if any(id(p) in ids for p in model.parameters()):
            return model_name
    raise ArchitectureMismatchError(
        f"optimizer {name!r} updates no parameter of the registered models ({', '.join(models)}); a sharded "
        "checkpoint stores optimizer state by parameter name, so register the model it trains"
    )


def capture(ledger: Ledger, world_size: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors DCP saves (this rank's shards, by global key) and the ``sharded`` record of state.pt."""
    dsd = _dsd()
    models = ledger.items("model")
    tensors: dict[str, torch.Tensor] = {}
    model_keys: dict[str, list[str]] = {}
    for name, model in models.items():
        sd = dsd.get_model_state_dict(model)
        model_keys[name] = list(sd)
        tensors.update({model_key(name, fqn): t for fqn, t in sd.items()})
    optimizers: dict[str, tuple[str, list[str], dict[str, Any]]] = {}
    for name, opt in ledger.items("optimizer").items():
        owner = _owner(models, opt, name)
        if not opt.state:
            # never stepped: reading its state would initialise it (a zero-grad step), changing the
            # run; a fresh optimizer is restored as fresh
            optimizers[name] = (owner, [], {})
            continue
        sd = dsd.get_optimizer_state_dict(models[owner], opt, options=_flat_options())
        keys = [k for k, v in sd.items() if isinstance(v, torch.Tensor)]
        values = {k: v for k, v in sd.items() if not isinstance(v, torch.Tensor)}
        tensors.update({optimizer_key(name, k): sd[k] for k in keys})
        optimizers[name] = (owner, keys, values)
    return tensors, describe(world_size, model_keys, optimizers)


def restore(ledger: Ledger, record: Mapping[str, Any], reader: Any, process_group: Any, where: str) -> None:
    """Load a sharded checkpoint into the registered models and optimizers, resharding as needed.

    Every rank calls it together (DCP's load is a collective). Raises ArchitectureMismatchError,
    naming the keys, when a model's parameters differ from the checkpoint's.
    """
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    dsd = _dsd()
    models = ledger.items("model")
    optimizers = ledger.items("optimizer")
    targets: dict[str, torch.Tensor] = {}
    live_models: dict[str, dict[str, Any]] = {}
    for name, fqns in record["models"].items():
        model = models.get(name)
        if model is None:
            log.warning("weightslab: %s holds model %r, which is not registered; not restored", where, name)
            continue
        sd = dsd.get_model_state_dict(model)
        missing, unexpected = sorted(set(fqns) - set(sd)), sorted(set(sd) - set(fqns))
        if missing or unexpected:
            raise ArchitectureMismatchError(
                f"registered model {name!r} does not fit {where}: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}; build the model as it was when the run saved"
            )
        live_models[name] = sd
        targets.update({model_key(name, fqn): sd[fqn] for fqn in fqns})
    live_optimizers: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer, dict[str, Any]]] = {}
    for name, rec in record["optimizers"].items():
        opt, model = optimizers.get(name), models.get(rec["model"])
        if opt is None or model is None or not rec["tensors"]:
            continue
        sd = dsd.get_optimizer_state_dict(model, opt, options=_flat_options())
        absent = [k for k in rec["tensors"] if k not in sd]
        if absent:
            raise ArchitectureMismatchError(
                f"registered optimizer {name!r} does not fit {where}: it has no state {absent[:5]}; build it "
                "over the same parameters, of the same class, as when the run saved"
            )
        targets.update({optimizer_key(name, k): sd[k] for k in rec["tensors"]})
        live_optimizers[name] = (model, opt, sd)
    try:
        dcp_load(targets, storage_reader=reader, process_group=process_group)
    except Exception as exc:
        raise ArchitectureMismatchError(
            f"the registered models or optimizers do not fit {where}: {type(exc).__name__}: {exc}"
        ) from exc
    for name, sd in live_models.items():
        dsd.set_model_state_dict(models[name], {fqn: targets[model_key(name, fqn)] for fqn in sd})
    for name, (model, opt, _) in live_optimizers.items():
        rec = record["optimizers"][name]
        merged = dict(rec["values"])
        merged.update({k: targets[optimizer_key(name, k)] for k in rec["tensors"]})
        dsd.set_optimizer_state_dict(model, opt, merged, options=_flat_options())
