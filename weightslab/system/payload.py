"""The step dict: what one checkpoint file holds, copied on the training thread."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weightslab.format.layout import CHECKPOINT_FORMAT
from weightslab.registry.ledger import Kind, Ledger
from weightslab.system.snapshot import SnapshotBuffers, capture_rng
from weightslab.util.canonical import canonicalize, plain

# ledger kind -> key of the step dict
_STATEFUL_KINDS: tuple[tuple[Kind, str], ...] = (
    ("optimizer", "optimizers"),
    ("scheduler", "schedulers"),
    ("stateful", "extra"),
)


def build_payload(
    ledger: Ledger,
    buffers: SnapshotBuffers,
    *,
    exp_hash: str,
    step: int,
    trigger: str,
    metrics: Mapping[str, float | None],
    created: float,
    save_rng: bool,
    tensors: bool = True,
) -> tuple[dict[str, Any], Any]:
    """The step dict of every registered object, and the CUDA event to wait on before writing it (or None).

    ``tensors=False`` leaves out the models and optimizers (a sharded save writes them through DCP).
    Raises CheckpointSaveError (from the buffers) or a canonicalisation error naming the bad value.
    """
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "exp_hash": exp_hash,
        "step": step,
        "created": created,
        "trigger": trigger,
        "metrics": dict(metrics),
    }
    models = ledger.items("model")
    # every state tree first, then one staging pass: all tensors land in one arena, copied in one call
    state: dict[str, Any] = {"models": {n: m.state_dict() for n, m in models.items()} if tensors else {}}
    for kind, key in _STATEFUL_KINDS:
        if kind == "optimizer" and not tensors:
            state[key] = {}
            continue
        state[key] = {n: o.state_dict() for n, o in ledger.items(kind).items()}
    staged, event = buffers.stage(state)
    payload.update(staged)
    payload["rng"] = capture_rng() if save_rng else {}
    # the plain form (int keys, tuples, inf) so that resume restores values with their types
    hyperparams = ledger.items("hyperparams")
    for name, hp in hyperparams.items():
        canonicalize(hp, name)  # refuses, naming the key, a value changed into something unserialisable
    payload["hyperparams"] = {name: plain(hp) for name, hp in hyperparams.items()}
    payload["frozen"] = {
        n: [pn for pn, p in m.named_parameters() if not p.requires_grad] for n, m in models.items()
    }
    return payload, event
