"""Reading a root's checkpoints for :class:`weightslab.integrations.manager.CheckpointManager`.

Free functions over the store (a :class:`weightslab.store.manager.CheckpointManager`) and, where
"best" matters, the monitored metric and its mode: :func:`resolve_id` turns a checkpoint id
``<hash prefix>@<step>`` into its entry, :func:`latest_entry` and :func:`best_entry` pick the newest
and the best checkpoint, :func:`improves` decides ``save_best_only``, :func:`checkpoint_metadata`
builds the records ``list_checkpoints`` returns, and :func:`compare_ids` shapes a comparison into
the manager's dict. A pair ``(exp_hash, entry)`` is a :data:`Found`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from weightslab.errors import ConfigError, ConfigFileError, ManifestError
from weightslab.format.manifest import CheckpointEntry
from weightslab.inspect.compare import compare_checkpoints as compare_records
from weightslab.inspect.experiments import iso_time
from weightslab.integrations.lookup import Found
from weightslab.integrations.manager_config import CheckpointMetadata, Mode
from weightslab.storage.open import is_remote
from weightslab.store.manager import CheckpointManager as Store

EPOCH_METRIC = "epoch"
"""The metric the manager records the epoch under (so ``weightslab ls`` and ``compare`` show it)."""
STATE_KINDS = {"model": "models", "optimizer": "optimizers", "scheduler": "schedulers"}
"""The manager's registered kinds -> their section of the step file."""
Marks = tuple[Found | None, Found | None]  # (best, latest), computed once for a whole listing


def resolve_id(store: Store, checkpoint_id: str) -> Found:
    """``<hash prefix>@<step>`` -> (full hash, entry).

    Raises ConfigError for an id not of that shape, UnknownExperimentError for a prefix that names
    no experiment (or several), CheckpointNotFoundError for a step not committed there.
    """
    if not isinstance(checkpoint_id, str) or "@" not in checkpoint_id:
        raise ConfigError(
            f"a checkpoint id is <exp_hash>@<step> (save_checkpoint returns it), got {checkpoint_id!r}"
        )
    prefix, _, step = checkpoint_id.rpartition("@")
    if not step.isdigit():
        raise ConfigError(f"checkpoint id {checkpoint_id!r}: the part after @ must be a step number")
    exp_hash = store.resolve_hash(prefix)
    return exp_hash, store.entry(exp_hash, int(step))


def canonical_id(store: Store, checkpoint_id: str) -> str:
    """The id with its full experiment hash; raises as :func:`resolve_id`."""
    exp_hash, entry = resolve_id(store, checkpoint_id)
    return f"{exp_hash}@{entry.step}"


def latest_entry(store: Store) -> Found | None:
    """The newest checkpoint of the experiment active last; None while the root holds none."""
    active = store.last_active()
    if active is None:
        return None
    latest = store.manifest(active).latest()
    return None if latest is None else (active, latest)


def best_entry(store: Store, monitor: str | None, mode: Mode) -> Found | None:
    """The best checkpoint of the whole root by ``monitor`` (ties: the newest); None without one."""
    if monitor is None:
        return None
    sign = 1.0 if mode == "min" else -1.0
    scored = [
        (sign * value, -e.created, h, e)
        for h in store.experiments()
        for e in store.checkpoints(h)
        if (value := e.metric(monitor)) is not None
    ]
    if not scored:
        return None
    _, _, h, e = min(scored, key=lambda s: (s[0], s[1]))
    return h, e


def best_value(store: Store, monitor: str | None, mode: Mode) -> float | None:
    """The monitored metric of :func:`best_entry`, or None."""
    best = best_entry(store, monitor, mode)
    return None if best is None or monitor is None else best[1].metric(monitor)


def improves(store: Store, metrics: Mapping[str, Any], monitor: str | None, mode: Mode) -> bool:
    """Whether ``metrics[monitor]`` beats every checkpoint of the root (a non-finite value never does).

    Raises ConfigError when there is no ``monitor`` or ``metrics`` lacks it.
    """
    if monitor is None:
        raise ConfigError("save_best_only needs monitor_metric to decide; set it")
    if monitor not in metrics:
        raise ConfigError(
            f"save_best_only needs metrics[{monitor!r}] to decide; got {sorted(metrics)}; pass it or "
            "fix monitor_metric"
        )
    value = as_number(metrics[monitor])
    if value is None or not math.isfinite(value):
        return False
    best = best_value(store, monitor, mode)
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def experiment_config(store: Store, exp_hash: str) -> dict[str, Any]:
    """The ``config`` passed to save_checkpoint for an experiment ({} when none was, or unreadable)."""
    try:
        return dict(store.read_config(exp_hash).get("config") or {})
    except (ConfigFileError, ManifestError, AttributeError, TypeError, ValueError):
        return {}


def checkpoint_metadata(
    store: Store,
    exp_hash: str,
    entry: CheckpointEntry,
    experiment_name: str,
    marks: Marks,
    config: dict[str, Any] | None = None,
) -> CheckpointMetadata:
    """The :class:`CheckpointMetadata` of one checkpoint.

    ``marks``: the root's (best, latest) checkpoints (:func:`best_entry`, :func:`latest_entry`),
    which set ``is_best``/``is_latest``; ``config``: the experiment's config when the caller already
    read it (a listing reads it once per experiment), else it is read here.
    """
    best, latest = marks
    config = experiment_config(store, exp_hash) if config is None else config
    epoch = entry.metrics.get(EPOCH_METRIC)
    summary = store.architecture_summary(exp_hash) or {}
    models = summary.get("models") or [{}]
    return CheckpointMetadata(
        checkpoint_id=f"{exp_hash}@{entry.step}",
        timestamp=iso_time(entry.created) or "",
        epoch=None if epoch is None else int(epoch),
        step=entry.step,
        model_name=str(models[0].get("class", "")).rpartition(".")[2],
        experiment_name=experiment_name,
        file_size=entry.bytes,
        checksum=entry.xxh3_128,
        metrics=dict(entry.metrics),
        config=config,
        tags=list(entry.tags),
        description=entry.description,
        is_best=best is not None and best[0] == exp_hash and best[1].step == entry.step,
        is_latest=latest is not None and latest[0] == exp_hash and latest[1].step == entry.step,
        exp_hash=exp_hash,
        trigger=entry.trigger,
    )


def compare_ids(store: Store, checkpoint_ids: Sequence[str]) -> dict[str, Any]:
    """Compare checkpoints (the first is the baseline) into the dict ``compare_checkpoints`` returns.

    Keys: ``checkpoints`` and ``baseline`` (full ids), ``metrics_comparison`` ({metric: {id: value}}),
    ``hyperparameter_changes`` and ``architecture_changes`` ({id: [changes from the baseline]}),
    ``weight_distance`` ({id: l2, relative, cosine, max_abs, identical}) and ``details`` (the full
    record). Raises as :func:`resolve_id` and :func:`weightslab.inspect.compare.compare_checkpoints`.
    """
    ids = [canonical_id(store, i) for i in checkpoint_ids]
    result = compare_records(store, ids)
    by_label = dict(zip((r.label for r in result.checkpoints), ids, strict=True))
    return {
        "checkpoints": ids,
        "baseline": ids[0],
        "metrics_comparison": {
            metric: dict(zip(ids, values, strict=True)) for metric, values in result.metrics.items()
        },
        "hyperparameter_changes": {by_label[p.b]: [c.to_dict() for c in p.hyperparams] for p in result.pairs},
        "architecture_changes": {by_label[p.b]: [c.to_dict() for c in p.architecture] for p in result.pairs},
        "weight_distance": {
            by_label[p.b]: {
                "l2": p.weights.l2,
                "relative": p.weights.relative,
                "cosine": p.weights.cosine,
                "max_abs": p.weights.max_abs,
                "identical": p.weights.identical,
            }
            for p in result.pairs
        },
        "details": result.to_dict(),
    }


def only_state(states: Mapping[str, Any], name: str) -> Any:
    """The state saved under ``name``, else the only one saved, else None."""
    if name in states:
        return states[name]
    return next(iter(states.values())) if len(states) == 1 else None


def as_number(value: Any) -> float | None:
    """A metric as a float (a one-element tensor too); None for anything else, booleans included."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def join_root(base: str | os.PathLike[str], name: str) -> str:
    """``base/name`` for a folder or an ``s3://`` prefix."""
    text = os.fspath(base)
    return f"{text.rstrip('/')}/{name}" if is_remote(text) else os.path.join(text, name)


__all__ = [
    "EPOCH_METRIC",
    "STATE_KINDS",
    "Marks",
    "as_number",
    "best_entry",
    "best_value",
    "canonical_id",
    "checkpoint_metadata",
    "compare_ids",
    "experiment_config",
    "improves",
    "join_root",
    "latest_entry",
    "only_state",
    "resolve_id",
]
