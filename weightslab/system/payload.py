"""The step dict: what one checkpoint file holds, copied on the training thread."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from weightslab.format.layout import CHECKPOINT_FORMAT
from weightslab.registry.ledger import Kind, Ledger
from weightslab.system.snapshot import SnapshotBuffers, StagedCopy, capture_rng
from weightslab.util.canonical import canonicalize, plain

# ledger kind -> key of the step dict
_STATEFUL_KINDS: tuple[tuple[Kind, str], ...] = (
    ("optimizer", "optimizers"),
    ("scheduler", "schedulers"),
    ("stateful", "extra"),
)


def stage_state(
    ledger: Ledger, buffers: SnapshotBuffers, *, tensors: bool = True, background: bool = False
) -> StagedCopy:
    """Start staging every registered object's state (``background``: see SnapshotBuffers.begin).

    ``tensors=False`` leaves out the models and optimizers (a sharded save writes them through DCP).
    Raises CheckpointSaveError (from the buffers) naming a leaf a weights_only load could not read.
    """
    models = ledger.items("model")
    optimizers = ledger.items("optimizer")
    # every state tree first, then one staging pass: all tensors land in one arena, copied in one call
    state: dict[str, Any] = {"models": {n: _model_state(m) for n, m in models.items()} if tensors else {}}
    for kind, key in _STATEFUL_KINDS:
        if kind == "optimizer" and not tensors:
            state[key] = {}
            continue
        state[key] = {n: o.state_dict() for n, o in ledger.items(kind).items()}
    # what the next save may copy before it reads the state: the tensors of models and optimizers,
    # when every registered object's state_dict() is torch's own without hooks (it only reads).
    # Any other object runs code of its own, which may write into a tensor it returns or into a
    # model's (an EMA folding its updates in), so then everything is copied after the reads
    ahead: tuple[str, ...] = ()
    if (
        background
        and not ledger.items("stateful")
        and all(map(_reads_only, models.values()))
        and all(map(_reads_only_optimizer, optimizers.values()))
        and all(map(_reads_only_scheduler, ledger.items("scheduler").values()))
    ):
        ahead = ("models", "optimizers")
    return buffers.begin(state, background=background, ahead_keys=ahead)


def _model_state(model: torch.nn.Module) -> dict[str, Any]:
    # torch's own state_dict: the parameters themselves (keep_vars), not a detached view of each made
    # anew at every save (the staging copies them without grad), so that a save sees the same
    # objects as the last one; an override may not take keep_vars
    if _own(model, _MODULE_STATE_DICT):
        return model.state_dict(keep_vars=True)
    return model.state_dict()


def _own(obj: Any, *methods: Any) -> bool:
    """Whether ``obj.state_dict`` is one of ``methods``: no subclass or instance of its own."""
    return getattr(type(obj), "state_dict", None) in methods and "state_dict" not in getattr(
        obj, "__dict__", {}
    )


_MODULE_STATE_DICT = torch.nn.Module.state_dict
_MODULE_SAVE = torch.nn.Module._save_to_state_dict
_MODULE_EXTRA = torch.nn.Module.get_extra_state
_OPTIMIZER_STATE_DICT = torch.optim.Optimizer.state_dict
_SCHEDULER_BASES = tuple(
    base
    for name in ("LRScheduler", "_LRScheduler", "ReduceLROnPlateau")
    if isinstance(base := getattr(torch.optim.lr_scheduler, name, None), type)
)
# the state_dict methods of torch's own schedulers (LambdaLR, SequentialLR, ... have their own,
# which only read, or call the state_dict of the schedulers they wrap: those are checked too)
_SCHEDULER_STATE_DICTS = tuple(
    {
        getattr(cls, "state_dict")  # noqa: B009 - each base defines it; the type checker cannot tell
        for cls in vars(torch.optim.lr_scheduler).values()
        if isinstance(cls, type)
        and issubclass(cls, _SCHEDULER_BASES)
        and cls.__module__ == torch.optim.lr_scheduler.__name__
    }
)


def _reads_only(model: torch.nn.Module) -> bool:
    """Whether ``model.state_dict()`` is torch's own all the way down, with no hook: it only reads.

    Looked up on every call, classes included (a library may patch a class's method between saves);
    the lookups are cheap next to the save.
    """
    if not _own(model, _MODULE_STATE_DICT):
        return False
    for module in model.modules():
        cls, own = type(module), module.__dict__
        if (
            cls.state_dict is not _MODULE_STATE_DICT
            or cls._save_to_state_dict is not _MODULE_SAVE
            or cls.get_extra_state is not _MODULE_EXTRA
            or module._state_dict_hooks
            or module._state_dict_pre_hooks
            or "state_dict" in own
            or "_save_to_state_dict" in own
            or "get_extra_state" in own
        ):
            return False
    return True


def _reads_only_scheduler(scheduler: Any) -> bool:
    """Whether ``scheduler.state_dict()`` is torch's own, and so is every scheduler it wraps."""
    if not _own(scheduler, *_SCHEDULER_STATE_DICTS):
        return False
    wrapped = getattr(scheduler, "_schedulers", ())  # SequentialLR, ChainedScheduler
    return all(map(_reads_only_scheduler, wrapped))


def _reads_only_optimizer(optimizer: Any) -> bool:
    return (
        _own(optimizer, _OPTIMIZER_STATE_DICT)
        and not getattr(optimizer, "_optimizer_state_dict_pre_hooks", None)
        and not getattr(optimizer, "_optimizer_state_dict_post_hooks", None)
    )


def build_payload(
    ledger: Ledger,
    staged: StagedCopy,
    *,
    exp_hash: str,
    step: int,
    trigger: str,
    metrics: Mapping[str, float | None],
    created: float,
    save_rng: bool,
    frozen: dict[str, list[str]] | None = None,
) -> tuple[dict[str, Any], Any]:
    """The step dict around the ``staged`` state, and the CUDA event to wait on before writing it (or None).

    ``frozen``: the names of the parameters with requires_grad False, when the caller has them (else
    they are read from the models). The rest of the step dict is read while a background copy runs;
    it is finished last. Raises a
    canonicalisation error naming a bad hyperparameter, or the copy's own error.
    """
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "exp_hash": exp_hash,
        "step": step,
        "created": created,
        "trigger": trigger,
        "metrics": dict(metrics),
    }
    try:
        rng = capture_rng() if save_rng else {}
        # the plain form (int keys, tuples, inf) so that resume restores values with their types
        hyperparams = ledger.items("hyperparams")
        for name, hp in hyperparams.items():
            canonicalize(hp, name)  # refuses, naming the key, a value changed into something unserialisable
        values = {name: plain(hp) for name, hp in hyperparams.items()}
        if frozen is None:
            frozen = {
                n: [pn for pn, p in m.named_parameters() if not p.requires_grad]
                for n, m in ledger.items("model").items()
            }
    except BaseException:
        staged.finish()  # no copy may run on once the save is given up
        raise
    tree, event = staged.finish()
    # the optimizers' tensors first in the file, right after the pickled structure: a resume checks
    # the blocks of everything else before it returns, and the moments' blocks behind the first step,
    # so the model then shares no block with the structure the small objects are restored from
    if "optimizers" in tree:
        payload["optimizers"] = tree["optimizers"]
    payload.update(tree)
    payload["rng"] = rng
    payload["hyperparams"] = values
    payload["frozen"] = frozen
    return payload, event
