"""Records that describe a root: its experiments, their checkpoints, lineage and architecture.

Everything here reads through a :class:`CheckpointManager` (manifests, the journal, the architecture
text file, the YAML config, and the ``frozen`` record of a step file opened with ``weights_only=True``);
nothing unpickles, so it is safe on roots from anywhere.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from weightslab.errors import (
    CheckpointFormatError,
    CheckpointNotFoundError,
    ManifestError,
    UnsafePathError,
)
from weightslab.format.manifest import Manifest, ParentRef
from weightslab.policy.retention import RetentionPolicy
from weightslab.store.manager import CheckpointManager

Mode = Literal["min", "max"]


@dataclass(frozen=True)
class BestMetric:
    """The best value of the monitored metric in one experiment."""

    monitor: str
    mode: Mode
    value: float
    step: int

    def to_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode, "value": self.value, "step": self.step}


@dataclass(frozen=True)
class ExperimentInfo:
    """One row of ``weightslab ls``; ``error`` is set (and most fields empty) for an unreadable manifest."""

    exp_hash: str
    parent: ParentRef | None = None
    created: float | None = None
    checkpoints: int = 0
    latest_step: int | None = None
    best: BestMetric | None = None
    size_bytes: int = 0
    active: bool = False
    retention: dict[str, Any] = field(default_factory=dict)
    architecture_hash: str | None = None
    hyperparams_hash: str | None = None
    error: str | None = None
    abandoned: int = 0  # checkpoints of a future the run went back from

    def to_dict(self) -> dict[str, Any]:
        return {
            "exp_hash": self.exp_hash,
            "parent": None if self.parent is None else self.parent.to_dict(),
            "created": self.created,
            "created_iso": iso_time(self.created),
            "checkpoints": self.checkpoints,
            "abandoned": self.abandoned,
            "latest_step": self.latest_step,
            "best": None if self.best is None else self.best.to_dict(),
            "size_bytes": self.size_bytes,
            "active": self.active,
            "retention": dict(self.retention),
            "architecture_hash": self.architecture_hash,
            "hyperparams_hash": self.hyperparams_hash,
            "error": self.error,
        }


@dataclass(frozen=True)
class CheckpointInfo:
    """One committed checkpoint and why retention keeps it (empty ``kept``: ``gc`` would remove it)."""

    step: int
    file: str
    bytes: int
    created: float
    trigger: str
    metrics: dict[str, float | None]
    kept: tuple[str, ...]
    seq: int = 0
    abandoned: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "seq": self.seq,
            "abandoned": self.abandoned,
            "file": self.file,
            "bytes": self.bytes,
            "created": self.created,
            "created_iso": iso_time(self.created),
            "trigger": self.trigger,
            "metrics": dict(self.metrics),
            "kept": list(self.kept),
        }


@dataclass(frozen=True)
class Return:
    """A run came back to an existing experiment (for example after undoing a config change)."""

    previous: str
    step: int | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"previous": self.previous, "step": self.step, "reason": self.reason}


@dataclass
class LineageNode:
    """An experiment in the lineage forest, with the experiments that branched from it."""

    info: ExperimentInfo
    children: list[LineageNode] = field(default_factory=list)
    returns: list[Return] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        parent = self.info.parent
        return {
            "exp_hash": self.info.exp_hash,
            "parent": None if parent is None else parent.exp_hash,
            "step": None if parent is None else parent.step,
            "reason": None if parent is None else parent.reason,
            "checkpoints": self.info.checkpoints,
            "abandoned": self.info.abandoned,
            "latest_step": self.info.latest_step,
            "active": self.info.active,
            "returns": [r.to_dict() for r in self.returns],
            "children": [c.to_dict() for c in self.children],
        }


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


# -- experiments ------------------------------------------------------------------------------------
def policy_from(retention: Mapping[str, Any]) -> RetentionPolicy:
    """The :class:`RetentionPolicy` a manifest's ``retention`` dict records (unknown keys ignored)."""
    known = {f.name for f in fields(RetentionPolicy)}
    return RetentionPolicy(**{k: v for k, v in retention.items() if k in known})


def describe_policy(policy: RetentionPolicy) -> str:
    """``keep_last=3, keep_best=1 by val/loss (min)`` or ``keep all``."""
    if policy.keeps_all:
        return "keep all"
    parts = []
    if policy.keep_last is not None:
        parts.append(f"keep_last={policy.keep_last}")
    if policy.keep_best:
        parts.append(f"keep_best={policy.keep_best} by {policy.monitor} ({policy.mode})")
    if policy.keep_every is not None:
        parts.append(f"keep_every={policy.keep_every}")
    return ", ".join(parts)


def best_metric(manifest: Manifest, monitor: str | None, mode: Mode | None) -> BestMetric | None:
    """The best checkpoint of ``manifest`` by ``monitor`` (default: the monitor its retention records)."""
    monitor = monitor or manifest.retention.get("monitor")
    if not monitor:
        return None
    chosen: Mode = mode or ("max" if manifest.retention.get("mode") == "max" else "min")
    records = manifest.checkpoints
    steps = RetentionPolicy(keep_best=1, monitor=monitor, mode=chosen).best(records, 1)
    if not steps:
        return None
    entry = manifest.entry(steps[0])
    value = None if entry is None else entry.metric(monitor)
    return None if value is None else BestMetric(monitor, chosen, value, steps[0])


def experiment_info(
    manager: CheckpointManager,
    exp_hash: str,
    *,
    active: str | None = None,
    monitor: str | None = None,
    mode: Mode | None = None,
) -> ExperimentInfo:
    """The summary row of one experiment; an unreadable manifest gives a row with ``error`` set."""
    try:
        m = manager.manifest(exp_hash)
    except ManifestError as exc:
        return ExperimentInfo(exp_hash=exp_hash, active=exp_hash == active, error=exc.reason)
    latest = m.latest()
    return ExperimentInfo(
        exp_hash=exp_hash,
        parent=m.parent,
        created=m.created,
        checkpoints=len(m.checkpoints),
        abandoned=sum(e.abandoned for e in m.checkpoints),
        latest_step=None if latest is None else latest.step,
        best=best_metric(m, monitor, mode),
        size_bytes=manager.size_on_disk(exp_hash),
        active=exp_hash == active,
        retention=dict(m.retention),
        architecture_hash=m.architecture_hash,
        hyperparams_hash=m.hyperparams_hash,
    )


def experiment_infos(
    manager: CheckpointManager,
    *,
    active: str | None = None,
    monitor: str | None = None,
    mode: Mode | None = None,
) -> list[ExperimentInfo]:
    """Every experiment of the root, oldest first.

    ``active`` defaults to the experiment the journal says was active last; ``monitor``/``mode`` pick
    the metric of the "best" column (default: what each experiment's retention records).
    """
    if active is None:
        active = manager.last_active()
    return [
        experiment_info(manager, h, active=active, monitor=monitor, mode=mode) for h in manager.experiments()
    ]


# -- checkpoints ------------------------------------------------------------------------------------
def checkpoint_infos(
    manager: CheckpointManager,
    exp_hash: str,
    *,
    retention: RetentionPolicy | Mapping[str, Any] | None = None,
    protected: Iterable[int] = (),
) -> list[CheckpointInfo]:
    """The checkpoints of one experiment with the reasons retention keeps each.

    ``retention`` defaults to the policy recorded in the manifest. Reasons are those of
    :meth:`RetentionPolicy.reasons` ("last", "best", "every", "newest"), plus "branch" for a step a
    child experiment branched from and "protected" for the steps in ``protected``.
    """
    m = manager.manifest(exp_hash)
    if retention is None:
        policy = policy_from(m.retention)
    elif isinstance(retention, RetentionPolicy):
        policy = retention
    else:
        policy = policy_from(retention)
    branches = manager.branch_points(exp_hash)
    pinned = set(protected)
    records = m.checkpoints
    reasons = policy.reasons(records, pinned | branches)
    out = []
    for e in m.checkpoints:
        why: list[str] = [r for r in reasons.get(e.step, []) if r != "protected"]
        if e.step in branches:
            why.append("branch")
        if e.step in pinned:
            why.append("protected")
        out.append(
            CheckpointInfo(
                step=e.step,
                file=e.file,
                bytes=e.bytes,
                created=e.created,
                trigger=e.trigger,
                metrics=dict(e.metrics),
                kept=tuple(dict.fromkeys(why)),
                seq=e.seq,
                abandoned=e.abandoned,
            )
        )
    return out


# -- lineage ----------------------------------------------------------------------------------------
def lineage(manager: CheckpointManager, infos: list[ExperimentInfo] | None = None) -> list[LineageNode]:
    """The experiments as a forest: each under the experiment it branched from, oldest first.

    An experiment whose parent is not in the root (deleted, or a copied folder) is a root of the
    forest. Returns to an existing experiment are read from the journal.
    """
    if infos is None:
        infos = experiment_infos(manager)
    nodes = {i.exp_hash: LineageNode(i) for i in infos}
    for event in manager.events():
        if event.get("event") != "experiment_activated":
            continue
        node = nodes.get(str(event.get("exp_hash")))
        previous = event.get("previous")
        if node is not None and isinstance(previous, str):
            step = event.get("step")
            node.returns.append(
                Return(previous, step if isinstance(step, int) else None, str(event.get("reason") or ""))
            )
    roots: list[LineageNode] = []
    for info in infos:
        parent = info.parent
        if parent is not None and parent.exp_hash in nodes and not _creates_cycle(nodes, info.exp_hash):
            nodes[parent.exp_hash].children.append(nodes[info.exp_hash])
        else:
            roots.append(nodes[info.exp_hash])
    return roots


def _creates_cycle(nodes: Mapping[str, LineageNode], exp_hash: str) -> bool:
    """True if following parents from ``exp_hash`` comes back to it (only a hand-edited root can)."""
    seen = {exp_hash}
    parent = nodes[exp_hash].info.parent
    while parent is not None and parent.exp_hash in nodes:
        if parent.exp_hash in seen:
            return True
        seen.add(parent.exp_hash)
        parent = nodes[parent.exp_hash].info.parent
    return False


# -- architecture -----------------------------------------------------------------------------------
def architecture_summary(
    manager: CheckpointManager, exp_hash: str, *, trainable_from_checkpoint: bool = True
) -> list[ModelArchitecture]:
    """The models of an experiment, parsed from ``model/{hash}_architecture.txt`` ([] when absent).

    That file is written when the experiment is created, but freezing or unfreezing parameters does
    not start a new experiment. With ``trainable_from_checkpoint`` (the default) the trainable flags
    come from the ``frozen`` record of the newest checkpoint instead, when it has one; each model's
    ``trainable_step`` says so.
    """
    path = manager.experiment(exp_hash).architecture_text
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    models = parse_architecture_text(text)
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
        data = manager.load_entry(exp_hash, entry, verify=False, mmap=True)
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


# -- small formatting helpers shared by the console and the command ------------------------------------
def iso_time(timestamp: float | None) -> str | None:
    """Local time as ISO-8601 with offset (None for None)."""
    if timestamp is None or not math.isfinite(timestamp):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))


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
