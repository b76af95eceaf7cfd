"""Analysis of an optimizer checkpoint: param groups, learning rates, state statistics and the scheduler.

Three layouts are understood: a plain ``optimizer.state_dict()`` (``state`` + ``param_groups``), a wrapper
dict holding it under ``optimizer`` next to an ``lr_scheduler`` state, and a weightslab step file.
The state is read tensor by tensor from a memory-mapped file, so its size does not bound memory.
"""

from __future__ import annotations

import numbers
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from weightslab.analysis.models import (
    LearningRateInfo,
    OptimizerAnalysis,
    OptimizerComponentInfo,
    OptimizerLayout,
    ParamGroupInfo,
    SchedulerInfo,
    StateEntryInfo,
)
from weightslab.analysis.stats import RunningStats, dtype_name
from weightslab.errors import CheckpointFormatError
from weightslab.format.layout import CHECKPOINT_FORMAT
from weightslab.format.stepfile import load_torch_file

_WRAPPER_OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optim")
_WRAPPER_SCHEDULER_KEYS = ("lr_scheduler", "scheduler", "lr_scheduler_state_dict", "scheduler_state_dict")
_GROUP_FIELDS = frozenset({"params", "lr", "initial_lr", "weight_decay", "momentum", "betas", "eps"})


def analyze_optimizer_checkpoint(
    checkpoint_path: str | Path, *, optimizer_name: str | None = None
) -> OptimizerAnalysis:
    """Analyse the optimizer (and scheduler) state stored in ``checkpoint_path``.

    Opens the file with ``torch.load(..., weights_only=True, mmap=True)``: nothing in it is executed and
    tensors are read only as the statistics need them.

    Args:
        optimizer_name: which optimizer of a weightslab step file to analyse; the first one registered
            when omitted. Ignored for the other layouts.

    Raises:
        CheckpointNotFoundError: ``checkpoint_path`` is not a file.
        CheckpointFormatError: the file cannot be opened safely, or holds no optimizer state in a layout
            listed above (the message names the keys it found).
    """
    path = Path(checkpoint_path)
    obj = load_torch_file(path, what="optimizer checkpoint")
    optimizer_sd, scheduler_sd, layout, name = locate_optimizer_state(
        obj, path=path, optimizer_name=optimizer_name
    )
    top_keys = tuple(str(k) for k in obj) if isinstance(obj, Mapping) else ()
    return summarize_optimizer_state(
        optimizer_sd,
        scheduler_sd,
        path=str(path),
        file_bytes=path.stat().st_size,
        layout=layout,
        optimizer_name=name,
        top_level_keys=top_keys,
    )


def locate_optimizer_state(
    obj: Any, *, path: str | Path, optimizer_name: str | None = None
) -> tuple[Mapping[str, Any], Mapping[str, Any] | None, OptimizerLayout, str | None]:
    """Find the optimizer state dict (and the scheduler's, when there is one) in a loaded checkpoint.

    Returns ``(optimizer_state_dict, scheduler_state_dict_or_None, layout, optimizer_name_or_None)``.

    Raises:
        CheckpointFormatError: no optimizer state in a known layout, or ``optimizer_name`` is not in the file.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(
            f"optimizer checkpoint {path} holds a {type(obj).__name__}, not a dict; expected an optimizer "
            "state_dict(), a dict with an 'optimizer' entry, or a weightslab step file"
        )
    fmt = obj.get("format")
    if isinstance(fmt, str) and fmt.startswith("weightslab.checkpoint/"):
        return _locate_in_step_file(obj, fmt, path=path, optimizer_name=optimizer_name)
    if _is_optimizer_state(obj):
        return obj, None, "state_dict", None
    for key in _WRAPPER_OPTIMIZER_KEYS:
        if _is_optimizer_state(obj.get(key)):
            scheduler = next(
                (obj[k] for k in _WRAPPER_SCHEDULER_KEYS if isinstance(obj.get(k), Mapping)), None
            )
            return obj[key], scheduler, "wrapper", None
    keys = ", ".join(repr(str(k)) for k in list(obj)[:20]) or "none"
    raise CheckpointFormatError(
        f"optimizer checkpoint {path} has no optimizer state: its top-level keys are {keys}; expected "
        "'state' and 'param_groups' (an optimizer state_dict()), an 'optimizer' entry holding one "
        f"(with an optional 'lr_scheduler'), or a weightslab step file ({CHECKPOINT_FORMAT!r})"
    )


def _locate_in_step_file(
    obj: Mapping[str, Any], fmt: str, *, path: str | Path, optimizer_name: str | None
) -> tuple[Mapping[str, Any], Mapping[str, Any] | None, OptimizerLayout, str | None]:
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointFormatError(
            f"{path} is a weightslab step file of format {fmt!r}; this version of weightslab reads "
            f"{CHECKPOINT_FORMAT!r}: upgrade weightslab to analyse it"
        )
    optimizers = obj.get("optimizers")
    if not isinstance(optimizers, Mapping) or not optimizers:
        raise CheckpointFormatError(
            f"weightslab step file {path} holds no optimizer state; register the optimizer with "
            "wl.register_optimizer(name, optimizer) before checkpointing to have it analysed"
        )
    name = optimizer_name if optimizer_name is not None else str(next(iter(optimizers)))
    if name not in optimizers:
        raise CheckpointFormatError(
            f"weightslab step file {path} has no optimizer named {name!r}; it holds "
            f"{', '.join(repr(str(k)) for k in optimizers)}: pass one of those as optimizer_name"
        )
    state = optimizers[name]
    if not _is_optimizer_state(state):
        raise CheckpointFormatError(
            f"optimizer {name!r} in weightslab step file {path} is not an optimizer state_dict() "
            "(no 'state' and 'param_groups')"
        )
    schedulers = obj.get("schedulers")
    scheduler: Mapping[str, Any] | None = None
    if isinstance(schedulers, Mapping):
        if isinstance(schedulers.get(name), Mapping):
            scheduler = schedulers[name]
        elif len(schedulers) == 1 and isinstance(only := next(iter(schedulers.values())), Mapping):
            scheduler = only
    return state, scheduler, "weightslab", name


def _is_optimizer_state(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("param_groups"), Sequence)
        and isinstance(value.get("state"), Mapping)
    )


def summarize_optimizer_state(
    optimizer_sd: Mapping[str, Any],
    scheduler_sd: Mapping[str, Any] | None = None,
    *,
    path: str = "",
    file_bytes: int = 0,
    layout: OptimizerLayout = "state_dict",
    optimizer_name: str | None = None,
    top_level_keys: tuple[str, ...] = (),
) -> OptimizerAnalysis:
    """Analyse an optimizer state dict that is already loaded; see :func:`analyze_optimizer_checkpoint`.

    Raises:
        CheckpointFormatError: ``optimizer_sd`` lacks ``state`` or ``param_groups``.
    """
    if not _is_optimizer_state(optimizer_sd):
        raise CheckpointFormatError(
            f"{path or 'the object'} is not an optimizer state_dict(): it needs 'state' and 'param_groups'"
        )
    groups = [g for g in optimizer_sd["param_groups"] if isinstance(g, Mapping)]
    state: Mapping[Any, Any] = optimizer_sd["state"]

    group_of: dict[Any, int] = {}
    for index, g in enumerate(groups):
        for p in g.get("params", ()):
            group_of[_hashable(p)] = index
    scan = _StateScan()
    for param_id, param_state in state.items():
        if isinstance(param_state, Mapping):
            scan.add(param_state, group_of.get(_hashable(param_id)))

    scheduler = _scheduler_info(scheduler_sd) if scheduler_sd is not None else None
    param_groups = tuple(_group_info(i, g, scan.group_elements.get(i)) for i, g in enumerate(groups))
    components = tuple(
        StateEntryInfo(
            name=key,
            num_tensors=scan.tensor_counts[key],
            dtypes=tuple(sorted(scan.dtypes[key])),
            stats=acc.result(),
        )
        for key, acc in scan.accumulators.items()
    )
    info = _component_info(optimizer_sd, scheduler_sd, groups, param_groups, scan)
    return OptimizerAnalysis(
        available=True,
        path=path,
        file_bytes=file_bytes,
        layout=layout,
        optimizer_name=optimizer_name,
        optimizer_type=_infer_type(set(scan.accumulators), groups),
        learning_rate=_learning_rate(param_groups, scheduler),
        optimizer_info=info,
        components=components,
        num_parameters=sum(g.num_parameters for g in param_groups),
        num_params_with_state=scan.with_state,
        state_elements=scan.state_elements,
        state_step=scan.max_step,
        scheduler=scheduler,
        top_level_keys=top_level_keys,
    )


def _component_info(
    optimizer_sd: Mapping[str, Any],
    scheduler_sd: Mapping[str, Any] | None,
    groups: list[Mapping[str, Any]],
    param_groups: tuple[ParamGroupInfo, ...],
    scan: _StateScan,
) -> dict[str, OptimizerComponentInfo]:
    """The parts of the checkpoint (``param_groups``, ``state``, ``lr_scheduler``) described."""
    info: dict[str, OptimizerComponentInfo] = {
        "param_groups": OptimizerComponentInfo(
            name="param_groups",
            type=type(optimizer_sd["param_groups"]).__name__,
            size=len(optimizer_sd["param_groups"]),
            num_param_groups=len(groups),
            param_group_keys=tuple(str(k) for k in groups[0]) if groups else (),
            learning_rate=param_groups[0].lr if param_groups else None,
            initial_learning_rate=param_groups[0].initial_lr if param_groups else None,
        ),
        "state": OptimizerComponentInfo(
            name="state",
            type=type(optimizer_sd["state"]).__name__,
            size=len(optimizer_sd["state"]),
            num_parameters=scan.with_state,
            state_keys=tuple(scan.state_keys),
        ),
    }
    if scheduler_sd is not None:
        info["lr_scheduler"] = OptimizerComponentInfo(
            name="lr_scheduler", type=type(scheduler_sd).__name__, size=len(scheduler_sd)
        )
    return info


@dataclass
class _StateScan:
    """What one pass over an optimizer's ``state`` finds, entry by entry (``exp_avg``, ``step``, ...)."""

    accumulators: dict[str, RunningStats] = field(default_factory=lambda: defaultdict(RunningStats))
    tensor_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    dtypes: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    group_elements: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    max_step: int | None = None
    with_state: int = 0
    state_elements: int = 0
    state_keys: dict[str, None] = field(default_factory=dict)
    """An ordered set: the entries in the order they first appear."""

    def add(self, param_state: Mapping[Any, Any], group: int | None) -> None:
        """Count one parameter's state; its elements go to param group ``group`` when it has one."""
        self.with_state += 1
        param_numel = 0
        for key, value in param_state.items():
            key = str(key)
            self.state_keys.setdefault(key)
            if key == "step":
                step = _as_int(value)
                if step is not None:
                    self.max_step = step if self.max_step is None else max(self.max_step, step)
                continue
            if isinstance(value, torch.Tensor):
                self.accumulators[key].update(value)
                self.tensor_counts[key] += 1
                self.dtypes[key].add(dtype_name(value.dtype))
                self.state_elements += value.numel()
                param_numel = max(param_numel, value.numel())
        if group is not None:
            self.group_elements[group] += param_numel


def _group_info(index: int, g: Mapping[str, Any], num_elements: int | None) -> ParamGroupInfo:
    betas = g.get("betas")
    beta_values: tuple[float, ...] | None = None
    if isinstance(betas, (list, tuple)):
        converted = [_as_float(b) for b in betas]
        beta_values = tuple(b for b in converted if b is not None) or None
    options = {str(k): _scalar(v) for k, v in g.items() if k not in _GROUP_FIELDS and _is_scalar(v)}
    return ParamGroupInfo(
        index=index,
        lr=_as_float(g.get("lr")),
        initial_lr=_as_float(g.get("initial_lr")),
        weight_decay=_as_float(g.get("weight_decay")),
        momentum=_as_float(g.get("momentum")),
        betas=beta_values,
        eps=_as_float(g.get("eps")),
        num_parameters=len(g.get("params", ())),
        num_elements=num_elements,
        options=options,
    )


def _scheduler_info(sd: Mapping[str, Any]) -> SchedulerInfo:
    return SchedulerInfo(
        keys=tuple(sorted(str(k) for k in sd)),
        last_epoch=_as_int(sd.get("last_epoch")),
        step_count=_as_int(sd.get("_step_count")),
        last_lr=_float_tuple(sd.get("_last_lr")),
        base_lrs=_float_tuple(sd.get("base_lrs")),
    )


def _learning_rate(groups: tuple[ParamGroupInfo, ...], scheduler: SchedulerInfo | None) -> LearningRateInfo:
    lrs = tuple(g.lr for g in groups)
    known = [lr for lr in lrs if lr is not None]
    lr = lrs[0] if lrs else None
    initial = groups[0].initial_lr if groups else None
    if initial is None and scheduler is not None and scheduler.base_lrs:
        initial = scheduler.base_lrs[0]
    return LearningRateInfo(
        lr=lr,
        initial_lr=initial,
        lr_ratio=lr / initial if lr is not None and initial else None,
        group_lrs=lrs,
        min_lr=min(known) if known else None,
        max_lr=max(known) if known else None,
        param_group_lrs=groups,
        lr_scheduler_present=scheduler is not None,
        lr_scheduler_keys=scheduler.keys if scheduler is not None else (),
        scheduler_last_lr=scheduler.last_lr if scheduler is not None else None,
        scheduler_base_lrs=scheduler.base_lrs if scheduler is not None else None,
        scheduler_last_epoch=scheduler.last_epoch if scheduler is not None else None,
    )


def _infer_type(state_keys: set[str], groups: list[Mapping[str, Any]]) -> str:
    g0: Mapping[str, Any] = groups[0] if groups else {}
    if {"exp_avg", "exp_avg_sq"} <= state_keys or (not state_keys and "betas" in g0 and "eps" in g0):
        return "adamw" if g0.get("decoupled_weight_decay") is True else "adam"
    if "momentum_buffer" in state_keys or (not state_keys and "dampening" in g0):
        return "sgd"
    if {"square_avg", "acc_delta"} <= state_keys:
        return "adadelta"
    if "square_avg" in state_keys:
        return "rmsprop"
    if "sum" in state_keys:
        return "adagrad"
    return "unknown"


def _hashable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _as_int(value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _as_float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        return float(value.item()) if value.numel() == 1 else None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _as_int(value: Any) -> int | None:
    f = _as_float(value)
    return None if f is None else int(f)


def _float_tuple(value: Any) -> tuple[float, ...] | None:
    if not isinstance(value, (list, tuple)):
        return None
    converted = [_as_float(v) for v in value]
    return tuple(v for v in converted if v is not None)


def _is_scalar(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return value is None or isinstance(value, (bool, int, float, str))


def _scalar(value: Any) -> Any:
    return _as_float(value) if isinstance(value, torch.Tensor) else value
