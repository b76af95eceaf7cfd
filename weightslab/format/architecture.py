"""The architecture files of an experiment: the module structure without weights, and its summary.

The summary is data first: :func:`architecture_record` is what ``model/{hash}_architecture.json``
holds (format ``weightslab.architecture-summary/1``), and the ``.txt`` file for people is rendered from
that record by :func:`render_architecture_text`, so the two can never disagree and no reader needs to
parse the text back.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose tensors live on the meta device (no weights copied).

    Parameters, buffers and every other tensor a module holds as an attribute are replaced by meta
    tensors of the same shape and dtype before the structure is copied. The last group matters for
    ``torch.nn.utils.prune``: a pruned module's ``weight`` is a computed (non-leaf) tensor, which
    cannot be deep-copied; its pruning hook recomputes it from ``weight_orig * weight_mask``.
    """
    import torch  # here, not at the top: reading a root's architecture summary needs no torch

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


ARCHITECTURE_SUMMARY_FORMAT = "weightslab.architecture-summary/1"


def architecture_record(models: Mapping[str, torch.nn.Module]) -> dict[str, Any]:
    """The structure of ``models`` as JSON-ready data: per model its name, class, ``str(model)`` and
    parameters (name, shape, dtype, trainable, numel), in registration order."""
    return {
        "format": ARCHITECTURE_SUMMARY_FORMAT,
        "models": [
            {
                "name": name,
                "class": f"{type(model).__module__}.{type(model).__qualname__}",
                "text": str(model),
                "parameters": [
                    {
                        "name": pname,
                        "shape": list(p.shape),
                        "dtype": str(p.dtype).removeprefix("torch."),
                        "trainable": bool(p.requires_grad),
                        "numel": p.numel(),
                    }
                    for pname, p in model.named_parameters()
                ],
            }
            for name, model in models.items()
        ],
    }


def architecture_json(record: Mapping[str, Any]) -> bytes:
    """The bytes of ``model/{hash}_architecture.json`` for a record of :func:`architecture_record`."""
    return (json.dumps(record, indent=1, sort_keys=False) + "\n").encode()


def render_architecture_text(record: Mapping[str, Any]) -> str:
    """``str(model)`` plus a parameter table per model, for people, from an :func:`architecture_record`."""
    out = []
    for model in record["models"]:
        out.append(f"# model {model['name']!r}: {model['class']}\n")
        out.append(model["text"] + "\n\n")
        rows = [("parameter", "shape", "dtype", "trainable", "numel")]
        total = trainable = 0
        for p in model["parameters"]:
            n = int(p["numel"])
            total += n
            trainable += n if p["trainable"] else 0
            shape = "x".join(map(str, p["shape"])) or "scalar"
            rows.append((p["name"], shape, p["dtype"], "yes" if p["trainable"] else "no", f"{n:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
        out.append(f"total parameters: {total:,} (trainable {trainable:,})\n\n")
    return "".join(out)


def architecture_text(models: Mapping[str, torch.nn.Module]) -> str:
    """``str(model)`` plus a parameter table, for people (rendered from :func:`architecture_record`)."""
    return render_architecture_text(architecture_record(models))
