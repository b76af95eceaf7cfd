"""The model a user trains, seen through the wrappers that distributed training and compilation add.

``DistributedDataParallel`` and ``DataParallel`` hold the model in ``.module``, ``torch.compile``
in ``._orig_mod``; each prefixes every state-dict key and changes nothing the checkpoint is about.
The ledger keeps the inner module, so the step file, the architecture and the experiment hash are
the same whether the run used one process, DDP or ``torch.compile``, and a checkpoint of one loads
into the others. FSDP2's ``fully_shard`` wraps nothing: it swaps the module's class for a subclass
named ``FSDP<Class>``, which :func:`user_class` sees through.
"""

from __future__ import annotations

import torch

_WRAPPER_ATTRS = (("DistributedDataParallel", "module"), ("DataParallel", "module"))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The innermost user module under DDP, DataParallel and ``torch.compile`` wrappers."""
    seen: set[int] = set()
    while id(model) not in seen:
        seen.add(id(model))
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, torch.nn.Module) and type(model).__name__ == "OptimizedModule":
            model = inner
            continue
        for cls_name, attr in _WRAPPER_ATTRS:
            if any(c.__name__ == cls_name for c in type(model).__mro__):
                inner = getattr(model, attr, None)
                if isinstance(inner, torch.nn.Module):
                    model = inner
                    break
        else:
            return model
    return model


def user_class(module: torch.nn.Module) -> type:
    """The user's class of ``module``: ``Linear`` for FSDP2's dynamic ``FSDPLinear``."""
    return user_class_of(type(module))


def user_class_of(cls: type) -> type:
    """The user's class for modules of type ``cls`` (see :func:`user_class`)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed
        return cls
    if issubclass(cls, FSDPModule):
        for base in cls.__mro__[1:]:
            if not issubclass(base, FSDPModule):
                return base
    return cls
