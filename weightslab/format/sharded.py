"""The sharded checkpoint: a folder that every rank wrote through ``torch.distributed.checkpoint``.

``model/{hash}_step_{step:06d}/`` holds DCP's files (``__{rank}_{n}.distcp`` and ``.metadata``)
and ``state.pt``, a step dict written by rank 0 with everything that is not a tensor of a model or
an optimizer (step, metrics, schedulers, hyperparameters, the RNG states of every rank). DCP holds
tensors only, under flat keys:

- ``models.{name}.{fqn}``: the model's state dict (``get_model_state_dict``), by global FQN;
- ``optimizers.{name}.{key}``: the tensors of the flattened optimizer state dict
  (``get_optimizer_state_dict(..., flatten_optimizer_state_dict=True)``: ``state.{fqn}.exp_avg``).

The non-tensor leaves of the optimizer (``param_groups.{fqn}.lr``, ...) are in ``state.pt``. Keys are
FQNs, never ranks or parameter indices, so the folder loads at any world size (DCP reshards) and in
one plain process. DCP stores non-tensor values by pickle and reads ``.metadata`` by pickle; none of
the former is written here, and every file's xxh3-128 is checked against the manifest before DCP
opens the folder, so nothing unchecked is unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

SHARDED_FORMAT = "weightslab.sharded/1"


def model_key(name: str, fqn: str) -> str:
    return f"models.{name}.{fqn}"


def optimizer_key(name: str, key: str) -> str:
    return f"optimizers.{name}.{key}"


def describe(
    world_size: int,
    models: Mapping[str, list[str]],
    optimizers: Mapping[str, tuple[str, list[str], dict[str, Any]]],
) -> dict[str, Any]:
    """The ``sharded`` record of ``state.pt``: what DCP holds, and the optimizers' other leaves.

    ``optimizers`` maps a name to (its model's name, its tensor keys, its non-tensor leaves).
    """
    return {
        "format": SHARDED_FORMAT,
        "world_size": world_size,
        "models": {n: list(keys) for n, keys in models.items()},
        "optimizers": {
            n: {"model": m, "tensors": list(keys), "values": dict(values)}
            for n, (m, keys, values) in optimizers.items()
        },
    }


def consolidate(state: Mapping[str, Any], reader: Any) -> dict[str, Any]:
    """The whole step dict of a sharded checkpoint in this process: full tensors, on the CPU.

    ``models`` becomes ``{name: state_dict}``; ``optimizers`` the flattened FQN form of each
    optimizer (``state.{fqn}.{key}``, ``param_groups.{fqn}.{key}``). For ``export`` and analysis; a
    resume loads into the live (possibly sharded) objects instead. ``reader`` is a DCP StorageReader
    of the folder, whose files the caller has verified.
    """
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    record = state["sharded"]
    flat: dict[str, Any] = {}
    # The planner fills ``flat`` from the metadata: every tensor, at its global shape. This is what
    # DCP's own ``format_utils.dcp_to_torch_save`` does; the public ``dcp.load`` only fills keys the
    # caller already has, and the other public path writes a file.
    planner: Any = _EmptyStateDictLoadPlanner  # untyped in torch: called through Any
    planner = planner()
    _load_state_dict(flat, storage_reader=reader, planner=planner, no_dist=True)
    out = {k: v for k, v in state.items() if k != "sharded"}
    out["models"] = {
        name: {fqn: _tensor(flat, model_key(name, fqn)) for fqn in fqns}
        for name, fqns in record["models"].items()
    }
    out["optimizers"] = {}
    for name, opt in record["optimizers"].items():
        merged = dict(opt["values"])
        merged.update({k: _tensor(flat, optimizer_key(name, k)) for k in opt["tensors"]})
        out["optimizers"][name] = merged
    out["sharded_from"] = {"world_size": record["world_size"]}
    return out


def _tensor(flat: Mapping[str, Any], key: str) -> torch.Tensor:
    value = flat.get(key)
    if not isinstance(value, torch.Tensor):
        raise KeyError(f"the sharded checkpoint has no tensor {key!r}")
    return value
