"""Resume's last step: put a loaded step dict back into the registered objects, all or nothing.

Every object is checked against the checkpoint before anything is changed: models (keys and shapes,
what a strict load checks), optimizers (groups, and each state tensor's shape against the parameter
it belongs to, so a reordered model is an error here rather than a shape error in the next
``optimizer.step()``). The small objects (schedulers, other stateful objects, hyperparameters) are
backed up and applied first; if one of them refuses its state, those already applied are put back
and nothing else is touched.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch

from weightslab.errors import ArchitectureMismatchError
from weightslab.registry.ledger import Ledger
from weightslab.store.split_check import SplitCheck, plain_tensor, tensors_in
from weightslab.system.snapshot import restore_rng

log = logging.getLogger("weightslab")

_SMALL = (("scheduler", "schedulers"), ("stateful", "extra"))


def restore_state(
    ledger: Ledger,
    data: Mapping[str, Any],
    *,
    where: str,
    root: Path,
    exp_hash: str,
    rng: bool = True,
    architecture_saved: bool = True,
    check: SplitCheck | None = None,
) -> None:
    """Load a step dict into every registered object, in place, or change nothing.

    Models (strict), which parameters were frozen, optimizers, schedulers, other stateful objects,
    the registered hyperparameter mappings and (with ``rng``) the RNG states. ``where`` names the
    checkpoint in messages; ``architecture_saved`` says whether the experiment has an architecture
    pickle to recommend. Registered objects the checkpoint lacks are warned about by name. Raises
    ArchitectureMismatchError, naming the object and parameter and saying how to fix it, when a
    registered object does not fit the checkpoint.

    With ``check`` (the split check of the step file ``data`` was loaded from), nothing is read
    before the blocks holding it verified: the small sections' blocks before they are loaded, then
    the other eager blocks while each plain model's tensors are copied out of them (see
    :mod:`weightslab.store.split_check`); CheckpointCorruptedError when one differs.
    """
    models = ledger.items("model")
    optimizers = ledger.items("optimizer")
    _report_missing(ledger, data, where)
    for name, sd in data.get("models", {}).items():
        if name in models:
            _check_model(
                name, models[name], sd, where, _rebuild_hint(root, exp_hash, name, architecture_saved)
            )
    names = _parameter_names(models)
    for name, state in data.get("optimizers", {}).items():
        if name in optimizers:
            _check_optimizer(name, optimizers[name], state, names, where)
    loaded: dict[str, Mapping[str, Any]] = {}
    if check is not None:
        check.verify_for(tensors_in([data.get(key) for _kind, key in _SMALL] + [data.get("hyperparams")]))
    _restore_or_undo(ledger, data, where)
    if check is not None:
        copies: list[tuple[torch.Tensor, torch.Tensor]] = []
        for name, sd in data.get("models", {}).items():
            live = _copied_into(models[name], sd, check) if name in models else None
            if live is not None:
                loaded[name] = live  # load_state_dict then copies each tensor onto itself: nothing
                copies.extend((sd[k], live[k]) for k in sd)
                check.touched.add(("models", name))  # written as its blocks are hashed
        check.eager(copies)
    # checked above: these loads fit
    for name, sd in data.get("models", {}).items():
        if name in models:
            models[name].load_state_dict(loaded.get(name, sd), strict=True)
    for name, frozen_names in data.get("frozen", {}).items():
        model = models.get(name)
        if model is not None:
            frozen = set(frozen_names)
            for pname, p in model.named_parameters():
                p.requires_grad_(pname not in frozen)
    for name, state in data.get("optimizers", {}).items():
        if name in optimizers:
            optimizers[name].load_state_dict(state)
    if rng and data.get("rng"):
        restore_rng(data["rng"])


def _copied_into(model: torch.nn.Module, sd: Mapping[str, Any], check: SplitCheck) -> dict[str, Any] | None:
    """The live tensor of each key of ``sd`` when ``model`` loads it by plain copies (no module
    overrides how it loads or names its state, no hooks, every tensor alike and placed in the
    file); else None, and ``load_state_dict`` copies it after the check."""
    base = torch.nn.Module
    for cls_attr in ("load_state_dict", "state_dict"):
        if getattr(type(model), cls_attr) is not getattr(base, cls_attr):
            return None
    for m in model.modules():
        kind = type(m)
        if (
            kind._load_from_state_dict not in _PLAIN_LOADS
            or kind._save_to_state_dict is not base._save_to_state_dict
            or kind.get_extra_state is not base.get_extra_state
            or m._load_state_dict_pre_hooks
            or m._load_state_dict_post_hooks
            or m._state_dict_hooks
            or getattr(m, "_state_dict_pre_hooks", None)
        ):
            return None
    live = model.state_dict(keep_vars=True)
    if live.keys() != sd.keys():
        return None
    sources: dict[int, int] = {}  # the memory of each live tensor -> the file offset copied into it
    for key, src in sd.items():
        dst = live[key]
        if (
            not isinstance(src, torch.Tensor)
            or not isinstance(dst, torch.Tensor)
            or dst.dtype != src.dtype
            or dst.shape != src.shape
            or not plain_tensor(dst)
        ):
            return None
        offset = check.offset(src)
        # tied in the model but saved apart: load_state_dict's order decides, not a race of copies
        if offset is None or sources.setdefault(dst.data_ptr(), offset) != offset:
            return None
    out: dict[str, Any] = OrderedDict((k, live[k]) for k in sd)
    metadata = getattr(sd, "_metadata", None)  # the saved modules' versions, as load_state_dict reads them
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


# modules whose own _load_from_state_dict only fills in a key an old checkpoint lacks, then loads as
# Module does: BatchNorm's num_batches_tracked (the keys are checked to be the live ones)
_PLAIN_LOADS = (
    torch.nn.Module._load_from_state_dict,
    torch.nn.modules.batchnorm._NormBase._load_from_state_dict,
)


def _restore_or_undo(ledger: Ledger, data: Mapping[str, Any], where: str) -> None:
    """Load the schedulers, other stateful objects and hyperparameters; on any failure put back all of them.

    These cannot be checked before loading (only ``load_state_dict`` says whether a state fits), so each
    is backed up first. Raises ArchitectureMismatchError for a state an object refuses.
    """
    undo: list[Callable[[], object]] = []
    try:
        for kind, key in _SMALL:
            live = ledger.items(kind)  # type: ignore[arg-type]
            for name, state in data.get(key, {}).items():
                obj = live.get(name)
                if obj is None:
                    continue
                backup = copy.deepcopy(obj.state_dict())
                try:
                    obj.load_state_dict(state)
                except Exception as exc:
                    raise ArchitectureMismatchError(
                        f"registered {kind} {name!r} does not accept its state from {where}: "
                        f"{type(exc).__name__}: {exc}; nothing was restored"
                    ) from exc
                undo.append(partial(obj.load_state_dict, backup))
        hyperparams = ledger.items("hyperparams")
        for name, values in data.get("hyperparams", {}).items():
            if name in hyperparams:
                before = copy.deepcopy(hyperparams[name])
                ledger.update_hyperparams(name, values)
                undo.append(partial(_put_back, ledger, name, before))
    except BaseException:
        for step in reversed(undo):
            step()
        raise


def _put_back(ledger: Ledger, name: str, before: Any) -> None:
    ledger.update_hyperparams(name, before if isinstance(before, Mapping) else vars(before))


def _report_missing(ledger: Ledger, data: Mapping[str, Any], where: str) -> None:
    """Warn about registered objects the checkpoint has no state for, and state with no object."""
    sections = (("model", "models"), ("optimizer", "optimizers"), *_SMALL)
    for kind, key in sections:
        if key not in data:  # a section restored elsewhere (the DCP files of a sharded checkpoint)
            continue
        live = ledger.items(kind)  # type: ignore[arg-type]
        saved = data[key]
        for name in live:
            if name not in saved:
                message = (
                    f"weightslab: {where} holds no state for registered {kind} {name!r}; it keeps its "
                    "current (fresh) state. Register it under the name it had when the run saved "
                    f"({', '.join(map(repr, saved)) or 'none saved'})"
                )
                log.warning(message)
                warnings.warn(message, stacklevel=4)
        for name in saved:
            if name not in live:
                log.warning(
                    "weightslab: %s holds %s %r, which is not registered; not restored", where, kind, name
                )


def _rebuild_hint(root: Path, exp_hash: str, name: str, architecture_saved: bool) -> str:
    if architecture_saved:
        return (
            "The checkpoint was saved after a model change. Rebuild the model from it: "
            f"arch = CheckpointManager({str(root)!r}, mode='r').load_architecture({exp_hash!r}, "
            f"trust=True); model = arch[{name!r}].to_empty(device='cpu'); register it and resume() again"
        )
    return (
        "The checkpoint was saved after a model change and its experiment has no architecture file; "
        f"build model {name!r} as it was at that point (`weightslab show {root} {exp_hash[:8]}` lists "
        "its layers and shapes), register it and resume() again"
    )


def _check_model(name: str, model: torch.nn.Module, sd: Mapping[str, Any], where: str, hint: str) -> None:
    live = model.state_dict()
    missing = [k for k in live if k not in sd]
    unexpected = [k for k in sd if k not in live]
    wrong = [
        f"{k}: checkpoint {tuple(sd[k].shape)}, model {tuple(v.shape)}"
        for k, v in live.items()
        if k in sd
        and isinstance(v, torch.Tensor)
        and isinstance(sd[k], torch.Tensor)
        and v.shape != sd[k].shape
    ]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if wrong:
        parts.append("shapes differ: " + "; ".join(wrong[:5]) + (" ..." if len(wrong) > 5 else ""))
    if missing:
        parts.append(f"missing from the checkpoint: {', '.join(missing[:5])}")
    if unexpected:
        parts.append(f"not in the model: {', '.join(unexpected[:5])}")
    raise ArchitectureMismatchError(
        f"registered model {name!r} does not match {where} ({'; '.join(parts)}); nothing was restored. {hint}"
    )


def _parameter_names(models: Mapping[str, torch.nn.Module]) -> dict[int, str]:
    names: dict[int, str] = {}
    for mname, model in models.items():
        for pname, p in model.named_parameters():
            names.setdefault(id(p), f"{mname}.{pname}")
    return names


def _check_optimizer(
    name: str,
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
    names: Mapping[int, str],
    where: str,
) -> None:
    """What ``load_state_dict`` does not check: each state tensor's shape against its parameter."""
    groups = state.get("param_groups", [])
    live_groups = optimizer.param_groups
    fix = (
        "build the optimizer over the model's parameters in the order the run used (after restoring the "
        "model's architecture); nothing was restored"
    )
    if len(groups) != len(live_groups):
        raise ArchitectureMismatchError(
            f"registered optimizer {name!r} has {len(live_groups)} parameter groups, {where} has "
            f"{len(groups)}; {fix}"
        )
    saved_state = state.get("state", {})
    for i, (saved, live) in enumerate(zip(groups, live_groups, strict=True)):
        ids, params = list(saved.get("params", [])), live["params"]
        if len(ids) != len(params):
            raise ArchitectureMismatchError(
                f"registered optimizer {name!r} group {i} has {len(params)} parameters, {where} has "
                f"{len(ids)}; {fix}"
            )
        for pid, p in zip(ids, params, strict=True):
            for key, value in saved_state.get(pid, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                    pname = names.get(id(p), f"group {i} parameter {params.index(p)}")
                    raise ArchitectureMismatchError(
                        f"registered optimizer {name!r}: its state {key!r} for parameter {pname} has shape "
                        f"{tuple(value.shape)} in {where}, but the parameter has shape {tuple(p.shape)} "
                        f"(the parameters are in another order or have other shapes); {fix}"
                    )
