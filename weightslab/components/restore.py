"""Resume's last step: put a loaded step dict back into the registered objects."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightslab.components.snapshot import restore_rng
from weightslab.errors import ArchitectureMismatchError
from weightslab.ledger import Ledger

log = logging.getLogger("weightslab")


def restore_state(
    ledger: Ledger, data: Mapping[str, Any], *, where: str, root: Path, exp_hash: str, rng: bool = True
) -> None:
    """Load a step dict into every registered object, in place.

    Models (strict), which parameters were frozen, optimizers, schedulers, other stateful objects,
    the registered hyperparameter mappings and (with ``rng``) the RNG states. ``where`` names the
    checkpoint in messages. Raises ArchitectureMismatchError, saying how to rebuild the model, when a
    registered object does not fit the checkpoint.
    """
    models = ledger.items("model")
    for name, sd in data.get("models", {}).items():
        model = models.get(name)
        if model is None:
            log.warning("weightslab: %s holds model %r, which is not registered; not restored", where, name)
            continue
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise ArchitectureMismatchError(
                f"registered model {name!r} does not match {where}: {str(exc).splitlines()[0]} ... "
                "The checkpoint was saved after a model change. Rebuild the model from it: "
                f"arch = CheckpointManager({str(root)!r}, mode='r').load_architecture({exp_hash!r}, "
                f"trust=True); model = arch[{name!r}].to_empty(device='cpu'); register it and resume() again"
            ) from exc
    for name in data.get("frozen", {}):
        model = models.get(name)
        if model is not None:
            frozen = set(data["frozen"][name])
            for pname, p in model.named_parameters():
                p.requires_grad_(pname not in frozen)
    for kind, key in (("optimizer", "optimizers"), ("scheduler", "schedulers"), ("stateful", "extra")):
        live = ledger.items(kind)  # type: ignore[arg-type]
        for name, state in data.get(key, {}).items():
            obj = live.get(name)
            if obj is None:
                log.warning(
                    "weightslab: %s holds %s %r, which is not registered; not restored", where, kind, name
                )
                continue
            try:
                obj.load_state_dict(state)
            except (ValueError, RuntimeError, KeyError) as exc:
                raise ArchitectureMismatchError(
                    f"registered {kind} {name!r} does not match {where}: {exc}; build it over the same "
                    "parameters as the checkpointed model (after restoring the model's architecture)"
                ) from exc
    for name, values in data.get("hyperparams", {}).items():
        if name in ledger.items("hyperparams"):
            ledger.update_hyperparams(name, values)
    if rng and data.get("rng"):
        restore_rng(data["rng"])
