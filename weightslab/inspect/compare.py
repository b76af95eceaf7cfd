"""``weightslab compare``: two or more checkpoints side by side.

Each checkpoint is named ``<hash prefix>[@<step>]`` (``@latest``, the default, or ``@best`` by the
experiment's recorded monitor; an empty prefix is the experiment active last), in one experiment or
across experiments. The first one named is the baseline: every other is compared with it for
hyperparameters (the step file's own sets, plus each optimizer's param-group settings such as
``lr``), layers (:func:`~weightslab.inspect.diff.diff_layers`) and weights. Each step file is loaded
with ``weights_only=True`` after its checksum is verified, through the root's manager, so local and
``s3://`` roots work alike.

The weight distance is :func:`~weightslab.inspect.distance.weight_distance`'s (l2, relative,
cosine and max_abs, per tensor and overall).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from weightslab.errors import CheckpointNotFoundError, ConfigError, ConfigFileError
from weightslab.format.manifest import CheckpointEntry
from weightslab.inspect import NullTracker, Tracker
from weightslab.inspect.diff import (
    HyperparamChange,
    LayerChange,
    diff_hyperparams,
    diff_layers,
    tensor_shapes,
)
from weightslab.inspect.distance import WeightDistance, weight_distance
from weightslab.inspect.experiments import best_metric
from weightslab.inspect.export import step_hyperparams
from weightslab.store.manager import CheckpointManager


@dataclass(frozen=True)
class CheckpointRef:
    """One compared checkpoint: where it is and what its manifest entry records."""

    name: str  # as given on the command line
    exp_hash: str
    step: int
    trigger: str
    created: float
    bytes: int
    metrics: dict[str, float | None]
    tags: tuple[str, ...] = ()
    description: str = ""

    @property
    def label(self) -> str:
        """``<8 hex digits>@<step>``: short and unique enough for a table header."""
        return f"{self.exp_hash[:8]}@{self.step}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label, "tags": list(self.tags)}


@dataclass
class PairComparison:
    """The baseline ``a`` against checkpoint ``b``: hyperparameters, layers and weights."""

    a: str
    b: str
    hyperparams: list[HyperparamChange]
    architecture: list[LayerChange]
    weights: WeightDistance

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "hyperparams": [c.to_dict() for c in self.hyperparams],
            "architecture": [c.to_dict() for c in self.architecture],
            "weights": self.weights.to_dict(),
        }


@dataclass
class Comparison:
    """Checkpoints side by side; ``metrics``: every metric of any of them, {name: value per checkpoint}.

    ``config_errors``: hyperparameters that could not be read (each names its file); the checkpoints
    concerned are compared without them.
    """

    checkpoints: list[CheckpointRef]
    metrics: dict[str, list[float | None]]
    pairs: list[PairComparison]
    config_errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.checkpoints[0].label if self.checkpoints else None,
            "checkpoints": [c.to_dict() for c in self.checkpoints],
            "metrics": {k: list(v) for k, v in self.metrics.items()},
            "pairs": [p.to_dict() for p in self.pairs],
            "config_errors": list(self.config_errors),
        }


def parse_checkpoint_name(manager: CheckpointManager, name: str) -> tuple[str, CheckpointEntry]:
    """``<prefix>[@<step>|@latest|@best]`` -> (full hash, manifest entry).

    Raises UnknownExperimentError/AmbiguousExperimentError for the prefix, CheckpointNotFoundError for
    a step that is not committed (or ``@best`` without a recorded monitor), ConfigError for a bad name.
    """
    if not isinstance(name, str):
        raise ConfigError(f"a checkpoint is named <hash prefix>[@<step>], got {name!r}")
    prefix, _, which = name.partition("@")
    if prefix:
        exp_hash = manager.resolve_hash(prefix)
    else:
        active = manager.last_active()
        if active is None:
            raise CheckpointNotFoundError(f"{manager.root} holds no experiment; name one as <hash>@<step>")
        exp_hash = active
    which = which.strip() or "latest"
    if which == "latest":
        return exp_hash, manager.entry(exp_hash, "latest")
    if which == "best":
        best = best_metric(manager.manifest(exp_hash), None, None)
        if best is None:
            raise CheckpointNotFoundError(
                f"{name}: experiment {exp_hash} records no monitor (or no checkpoint reported it); "
                "name a step instead, <hash>@<step>"
            )
        return exp_hash, manager.entry(exp_hash, best.step)
    if not which.isdigit():
        raise ConfigError(
            f"{name}: the part after @ must be a step number, 'latest' or 'best', got {which!r}"
        )
    return exp_hash, manager.entry(exp_hash, int(which))


def compare_checkpoints(
    manager: CheckpointManager, names: Sequence[str], *, tracker: Tracker | None = None
) -> Comparison:
    """Compare the checkpoints ``names`` (two or more; the first is the baseline).

    Raises ConfigError for fewer than two names, the errors of :func:`parse_checkpoint_name`, and
    CheckpointCorruptedError/CheckpointFormatError when a step file does not verify or is not ours.
    """
    if len(names) < 2:
        raise ConfigError(
            f"compare needs at least two checkpoints, got {len(names)}; name them as <hash>@<step>"
        )
    tracker = tracker or NullTracker()
    resolved = [(name, *parse_checkpoint_name(manager, name)) for name in names]
    tracker.start("verifying and loading", sum(entry.bytes for _, _, entry in resolved))
    refs: list[CheckpointRef] = []
    states: list[dict[str, Any]] = []
    for name, exp_hash, entry in resolved:
        states.append(manager.load_entry(exp_hash, entry, verify=True, mmap=True))
        tracker.advance(entry.bytes)
        refs.append(
            CheckpointRef(
                name,
                exp_hash,
                entry.step,
                entry.trigger,
                entry.created,
                entry.bytes,
                dict(entry.metrics),
                entry.tags,
                entry.description,
            )
        )
    errors: list[str] = []
    hyperparams = [
        _hyperparams(manager, ref.exp_hash, data, errors) for ref, data in zip(refs, states, strict=True)
    ]
    layers = [tensor_shapes(data) for data in states]
    tracker.start("measuring weight distance", len(states) - 1)
    pairs = []
    for i in range(1, len(states)):
        both_read = hyperparams[0] is not None and hyperparams[i] is not None
        pairs.append(
            PairComparison(
                a=refs[0].label,
                b=refs[i].label,
                hyperparams=diff_hyperparams(hyperparams[0] or {}, hyperparams[i] or {}) if both_read else [],
                architecture=diff_layers(layers[0], layers[i]),
                weights=weight_distance(states[0].get("models", {}), states[i].get("models", {})),
            )
        )
        tracker.advance()
    return Comparison(refs, metrics_side_by_side(refs), pairs, list(dict.fromkeys(errors)))


def metrics_side_by_side(refs: Iterable[CheckpointRef]) -> dict[str, list[float | None]]:
    """{metric: [value of each checkpoint, None where it did not report it]}, in first-seen order."""
    refs = list(refs)
    names: dict[str, None] = {}
    for ref in refs:
        names.update(dict.fromkeys(ref.metrics))
    return {name: [ref.metrics.get(name) for ref in refs] for name in names}


def _hyperparams(
    manager: CheckpointManager, exp_hash: str, data: Mapping[str, Any], errors: list[str]
) -> dict[str, Any] | None:
    """The hyperparameter tree of one checkpoint: its registered sets and its optimizers' group settings.

    The sets come from the step file (they include the keys excluded from the hash); a step file that
    records none falls back to the experiment's YAML config.
    """
    sets, _ = step_hyperparams(data)
    if sets is None:
        try:
            sets = manager.read_config(exp_hash)
        except ConfigFileError as exc:
            errors.append(str(exc))
            return None
    tree: dict[str, Any] = dict(sets)
    groups = optimizer_settings(data)
    if groups:
        tree["optimizers"] = groups
    return tree


def optimizer_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    """{optimizer: {"param_groups": {index: settings}}} of a step dict: lr, momentum, betas...

    The ``params`` list (indices of parameters) is left out: it is bookkeeping, not a setting.
    Tensor-valued settings (a tensor ``lr``) become plain numbers so that they compare by value.
    """
    out: dict[str, Any] = {}
    for name, state in (data.get("optimizers") or {}).items():
        groups = state.get("param_groups") if isinstance(state, Mapping) else None
        if not isinstance(groups, list):
            continue
        out[str(name)] = {
            "param_groups": {
                str(i): {k: _plain(v) for k, v in group.items() if k != "params"}
                for i, group in enumerate(groups)
                if isinstance(group, Mapping)
            }
        }
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


__all__ = [
    "CheckpointRef",
    "Comparison",
    "PairComparison",
    "compare_checkpoints",
    "metrics_side_by_side",
    "optimizer_settings",
    "parse_checkpoint_name",
    "tensor_shapes",
]
