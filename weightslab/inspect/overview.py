"""Architecture records of an experiment, and the older import path of the other records.

The architecture comes from the text file and the ``frozen`` record of a step file opened with
``weights_only=True``; nothing unpickles, so it is safe on roots from anywhere. Experiment, checkpoint
and lineage records live in :mod:`~weightslab.inspect.experiments`, :mod:`~weightslab.inspect.checkpoints`
and :mod:`~weightslab.inspect.lineage`; they are re-exported here because callers elsewhere (and the
tests) still import them from this module.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from weightslab.errors import (
    CheckpointFormatError,
    CheckpointNotFoundError,
    ManifestError,
    UnsafePathError,
)

# Compatibility: the records now live in modules named after them; these names stay importable here.
from weightslab.inspect.checkpoints import CheckpointInfo, checkpoint_infos
from weightslab.inspect.experiments import (
    BestMetric,
    ExperimentInfo,
    best_metric,
    describe_policy,
    experiment_info,
    experiment_infos,
    iso_time,
    policy_from,
)
from weightslab.inspect.lineage import LineageNode, Return, lineage
from weightslab.store.manager import CheckpointManager


@dataclass(frozen=True)
class ParameterInfo:
    """One row of the parameter table of ``model/{hash}_architecture.txt``."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    trainable: bool
    numel: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "trainable": self.trainable,
            "numel": self.numel,
        }


@dataclass
class ModelArchitecture:
    """One registered model as recorded in the architecture text file (no unpickling).

    ``trainable_step``: the checkpoint whose ``frozen`` record the trainable flags come from; None when
    they are the architecture text's, as at the creation of the experiment.
    """

    name: str
    class_name: str
    text: str = ""
    parameters: list[ParameterInfo] = field(default_factory=list)
    trainable_step: int | None = None

    @property
    def total(self) -> int:
        return sum(p.numel for p in self.parameters)

    @property
    def trainable(self) -> int:
        return sum(p.numel for p in self.parameters if p.trainable)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "class": self.class_name,
            "total_parameters": self.total,
            "trainable_parameters": self.trainable,
            "trainable_step": self.trainable_step,
            "text": self.text,
            "parameters": [p.to_dict() for p in self.parameters],
        }


# -- architecture -----------------------------------------------------------------------------------
def architecture_summary(
    manager: CheckpointManager, exp_hash: str, *, trainable_from_checkpoint: bool = True
) -> list[ModelArchitecture]:
    """The models of an experiment, from the record ``model/{hash}_architecture.json`` ([] when absent).

    Roots written before that record existed get [] ("not recorded"); the ``.txt`` beside it is for
    people and is never parsed back. The record is written when the experiment is created, but
    freezing or unfreezing parameters does not start a new experiment. With
    ``trainable_from_checkpoint`` (the default) the trainable flags come from the ``frozen`` record of
    the newest checkpoint instead, when it has one; each model's ``trainable_step`` says so.
    """
    record = manager.architecture_summary(exp_hash)
    if record is None:
        return []
    models = [
        ModelArchitecture(
            name=str(model["name"]),
            class_name=str(model["class"]),
            text=str(model["text"]),
            parameters=[
                ParameterInfo(
                    name=str(p["name"]),
                    shape=tuple(int(n) for n in p["shape"]),
                    dtype=str(p["dtype"]),
                    trainable=bool(p["trainable"]),
                    numel=int(p["numel"]),
                )
                for p in model["parameters"]
            ],
        )
        for model in record["models"]
    ]
    latest = latest_frozen(manager, exp_hash) if trainable_from_checkpoint and models else None
    if latest is not None:
        step, frozen = latest
        for model in models:
            if model.name not in frozen:
                continue  # a model the step file does not record keeps the text's flags
            names = frozen[model.name]
            model.parameters = [
                dataclasses.replace(p, trainable=p.name not in names) for p in model.parameters
            ]
            model.trainable_step = step
    return models


def latest_frozen(manager: CheckpointManager, exp_hash: str) -> tuple[int, dict[str, set[str]]] | None:
    """(step, {model name: names of its frozen parameters}) from the newest checkpoint, or None.

    The step file is opened with ``weights_only=True`` (no code runs) and memory-mapped, so its
    tensors are not read; it is not checksummed (this only labels a display). None when there is no
    checkpoint, it cannot be read, or it has no ``frozen`` record.
    """
    try:
        entry = manager.entry(exp_hash, "latest")
        data = manager.load_entry(exp_hash, entry, verify=False, mmap=True, consolidate=False)
    except (CheckpointNotFoundError, CheckpointFormatError, ManifestError, UnsafePathError, OSError):
        return None
    frozen = data.get("frozen")
    if not isinstance(frozen, Mapping):
        return None
    return entry.step, {
        str(model): {str(n) for n in names}
        for model, names in frozen.items()
        if isinstance(names, (list, tuple, set))
    }


def parse_architecture_text(text: str) -> list[ModelArchitecture]:
    """Parse the format written by ``checkpoint_manager.architecture_text``.

    Per model: a ``# model 'name': module.Class`` line, ``str(model)``, a blank line, then the
    parameter table (parameter, shape, dtype, trainable, numel) and a ``total parameters`` line.
    """
    models: list[ModelArchitecture] = []
    current: ModelArchitecture | None = None
    in_table = False
    module_lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("# model ") and ": " in line:
            name_repr, class_name = line[len("# model ") :].rsplit(": ", 1)
            try:
                name = str(ast.literal_eval(name_repr))
            except (ValueError, SyntaxError):
                name = name_repr
            current = ModelArchitecture(name=name, class_name=class_name.strip())
            models.append(current)
            in_table, module_lines = False, []
            continue
        if current is None:
            continue
        if not in_table and line.split()[:5] == ["parameter", "shape", "dtype", "trainable", "numel"]:
            in_table = True
            current.text = "\n".join(module_lines).strip("\n")
            continue
        if in_table:
            if line.startswith("total parameters:"):
                in_table = False
                current = None
                continue
            parts = line.split()
            if len(parts) == 5:
                pname, shape, dtype, trainable, numel = parts
                current.parameters.append(
                    ParameterInfo(
                        name=pname,
                        shape=() if shape == "scalar" else tuple(int(d) for d in shape.split("x")),
                        dtype=dtype,
                        trainable=trainable == "yes",
                        numel=int(numel.replace(",", "")),
                    )
                )
        else:
            module_lines.append(line)
    return models


__all__ = [
    "BestMetric",
    "CheckpointInfo",
    "ExperimentInfo",
    "LineageNode",
    "ModelArchitecture",
    "ParameterInfo",
    "Return",
    "architecture_summary",
    "best_metric",
    "checkpoint_infos",
    "describe_policy",
    "experiment_info",
    "experiment_infos",
    "iso_time",
    "latest_frozen",
    "lineage",
    "parse_architecture_text",
    "policy_from",
]
