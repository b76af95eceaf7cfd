"""``weightslab diff``: what changed between two experiments.

Hyperparameters come from each experiment's ``hp/{hash}_config.yaml`` (flattened to dotted keys); when
one cannot be read, the architecture is still compared and ``config_errors`` says which file failed.
The architecture comes from the tensor names and shapes in each experiment's newest step file
(``torch.load(weights_only=True, mmap=True)``: no code runs and no weights are read), or, for an
experiment without a readable checkpoint, from the parameter table of its architecture text file.
The architecture pickle is never opened: that would need trust.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from weightslab.errors import CheckpointFormatError, CheckpointNotFoundError, ConfigFileError, UnsafePathError
from weightslab.inspect.overview import architecture_summary
from weightslab.store.manager import CheckpointManager
from weightslab.util.flatten import flatten

# {model name: {layer: {tensor name: (shape, dtype)}}}
Tensors = dict[str, dict[str, dict[str, tuple[tuple[int, ...], str]]]]
Change = Literal["added", "removed", "changed"]
LayerChangeKind = Literal["added", "removed", "reshaped", "retyped"]
_MISSING = object()


@dataclass(frozen=True)
class HyperparamChange:
    """One dotted hyperparameter key whose value differs (``old``/``new`` None when absent)."""

    key: str
    change: Change
    old: Any = None
    new: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "change": self.change, "old": self.old, "new": self.new}


@dataclass(frozen=True)
class LayerChange:
    """One layer (module) added, removed, reshaped or retyped; tensors as {name: "shape dtype"}."""

    model: str
    layer: str
    change: LayerChangeKind
    old: dict[str, str] = field(default_factory=dict)
    new: dict[str, str] = field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"{self.model}.{self.layer}" if self.layer else self.model

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layer": self.layer,
            "change": self.change,
            "old": dict(self.old),
            "new": dict(self.new),
        }


@dataclass
class ExperimentDiff:
    """Differences from experiment ``a`` to experiment ``b``.

    ``config_errors``: why a config file could not be read (each names its file); the hyperparameters
    were then not compared and ``hyperparams`` is empty.
    """

    a: str
    b: str
    hyperparams: list[HyperparamChange]
    architecture: list[LayerChange]
    architecture_source: Literal["checkpoints", "architecture text"]
    config_errors: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.hyperparams and not self.architecture and not self.config_errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "identical": self.identical,
            "hyperparams": [c.to_dict() for c in self.hyperparams],
            "architecture": [c.to_dict() for c in self.architecture],
            "architecture_source": self.architecture_source,
            "config_errors": list(self.config_errors),
        }


def diff_experiments(manager: CheckpointManager, a: str, b: str) -> ExperimentDiff:
    """Compare experiments ``a`` and ``b`` (full hashes) of one root.

    A config file that cannot be read (ConfigFileError) is reported in ``config_errors``, not raised,
    so that the architecture is still compared.
    """
    configs: list[dict[str, Any]] = []
    errors: list[str] = []
    for h in (a, b):
        try:
            configs.append(manager.read_config(h))
        except ConfigFileError as exc:
            errors.append(str(exc))
    hp = diff_hyperparams(configs[0], configs[1]) if not errors else []
    errors = list(dict.fromkeys(errors))  # diffing an experiment with itself names its file once
    tensors_a, tensors_b = _tensors_from_checkpoints(manager, a), _tensors_from_checkpoints(manager, b)
    if tensors_a is not None and tensors_b is not None:
        source: Literal["checkpoints", "architecture text"] = "checkpoints"
    else:  # compare like with like: the text table lists parameters only, no buffers
        tensors_a, tensors_b = _tensors_from_text(manager, a), _tensors_from_text(manager, b)
        source = "architecture text"
    return ExperimentDiff(a, b, hp, diff_layers(tensors_a, tensors_b), source, errors)


def diff_hyperparams(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[HyperparamChange]:
    """Keys added, removed or changed between two hyperparameter trees, sorted by key."""
    a, b = flatten(old), flatten(new)
    out = []
    for key in sorted(a.keys() | b.keys()):
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va is _MISSING:
            out.append(HyperparamChange(key, "added", None, vb))
        elif vb is _MISSING:
            out.append(HyperparamChange(key, "removed", va, None))
        elif va != vb or type(va) is not type(vb):
            out.append(HyperparamChange(key, "changed", va, vb))
    return out


def diff_layers(old: Tensors, new: Tensors) -> list[LayerChange]:
    """Layers added, removed, reshaped (a shape or the set of tensors differs) or retyped (dtype only)."""
    out = []
    for model in sorted(old.keys() | new.keys()):
        la, lb = old.get(model, {}), new.get(model, {})
        for layer in sorted(la.keys() | lb.keys(), key=_natural):
            ta, tb = la.get(layer), lb.get(layer)
            if ta == tb:
                continue
            if ta is None:
                out.append(LayerChange(model, layer, "added", {}, _describe(tb or {})))
            elif tb is None:
                out.append(LayerChange(model, layer, "removed", _describe(ta), {}))
            else:
                same_shapes = ta.keys() == tb.keys() and all(ta[n][0] == tb[n][0] for n in ta)
                kind: LayerChangeKind = "retyped" if same_shapes else "reshaped"
                out.append(LayerChange(model, layer, kind, _describe(ta), _describe(tb)))
    return out


def _tensors_from_checkpoints(manager: CheckpointManager, exp_hash: str) -> Tensors | None:
    try:
        entry = manager.entry(exp_hash, "latest")
        data = manager.load_entry(exp_hash, entry, verify=False, mmap=True)
    except (CheckpointNotFoundError, CheckpointFormatError, UnsafePathError):
        return None
    return tensor_shapes(data)


def tensor_shapes(data: Mapping[str, Any]) -> Tensors:
    """The layers of a step dict's models: {model: {layer: {tensor: (shape, dtype)}}}, for diff_layers."""
    import torch  # here: `weightslab diff` reads the architecture summary and imports no torch

    out: Tensors = {}
    for model, state in (data.get("models") or {}).items():
        layers = out.setdefault(str(model), {})
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                layer, _, tensor = name.rpartition(".")
                layers.setdefault(layer, {})[tensor] = (
                    tuple(value.shape),
                    str(value.dtype).removeprefix("torch."),
                )
    return out


def _tensors_from_text(manager: CheckpointManager, exp_hash: str) -> Tensors:
    out: Tensors = {}
    for model in architecture_summary(manager, exp_hash, trainable_from_checkpoint=False):
        layers = out.setdefault(model.name, {})
        for p in model.parameters:
            layer, _, tensor = p.name.rpartition(".")
            layers.setdefault(layer, {})[tensor] = (p.shape, p.dtype)
    return out


def _describe(tensors: Mapping[str, tuple[tuple[int, ...], str]]) -> dict[str, str]:
    return {
        name: f"{'x'.join(map(str, shape)) or 'scalar'} {dtype}" for name, (shape, dtype) in tensors.items()
    }


def _natural(layer: str) -> list[Any]:
    """Sort ``layers.10`` after ``layers.9``."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in layer.split(".")]


__all__ = [
    "ExperimentDiff",
    "HyperparamChange",
    "LayerChange",
    "diff_experiments",
    "diff_hyperparams",
    "diff_layers",
    "flatten",
]
