"""The architecture files of an experiment: the module structure without weights, and a text summary."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch


def meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose tensors live on the meta device (no weights copied).

    Parameters, buffers and every other tensor a module holds as an attribute are replaced by meta
    tensors of the same shape and dtype before the structure is copied. The last group matters for
    ``torch.nn.utils.prune``: a pruned module's ``weight`` is a computed (non-leaf) tensor, which
    cannot be deep-copied; its pruning hook recomputes it from ``weight_orig * weight_mask``.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        for _name, p in module.named_parameters(recurse=False):
            memo[id(p)] = torch.nn.Parameter(
                torch.empty_like(p, device="meta"), requires_grad=p.requires_grad
            )
        for _name, b in module.named_buffers(recurse=False):
            if b is not None:
                memo[id(b)] = torch.empty_like(b, device="meta")
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and id(value) not in memo:
                memo[id(value)] = torch.empty_like(value.detach(), device="meta")
    return copy.deepcopy(model, memo)


def architecture_text(models: Mapping[str, torch.nn.Module]) -> str:
    """``str(model)`` plus a parameter table, for people."""
    out = []
    for name, model in models.items():
        out.append(f"# model {name!r}: {type(model).__module__}.{type(model).__qualname__}\n")
        out.append(str(model) + "\n\n")
        rows = [("parameter", "shape", "dtype", "trainable", "numel")]
        total = trainable = 0
        for pname, p in model.named_parameters():
            n = p.numel()
            total += n
            trainable += n if p.requires_grad else 0
            rows.append(
                (
                    pname,
                    "x".join(map(str, p.shape)) or "scalar",
                    str(p.dtype).removeprefix("torch."),
                    "yes" if p.requires_grad else "no",
                    f"{n:,}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
        out.append(f"total parameters: {total:,} (trainable {trainable:,})\n\n")
    return "".join(out)
