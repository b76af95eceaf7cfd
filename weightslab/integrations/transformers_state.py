"""What :class:`~weightslab.integrations.transformers.WeightslabCallback` saves beside the weights, and
the ``checkpoint-N/`` folder it builds for ``Trainer.train(resume_from_checkpoint=...)``.

Three things live here: the values of the TrainingArguments that count in the experiment hash
(:func:`training_hyperparams`, over :data:`weightslab.format.trainers.TRAINING_ARGUMENTS`, where the
names the callback files the run under are fixed), the Trainer's progress as a registered stateful object
(:class:`TrainerProgress`: ``TrainerState`` and the states of the stateful callbacks, as
``trainer_state.json`` holds them), and :func:`write_trainer_checkpoint`, which lays a weightslab
step dict out as the files the Trainer reads when it resumes: ``model.safetensors``,
``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state.pth`` and ``trainer_state.json``.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from transformers import Trainer, TrainerControl, TrainerState
from transformers.trainer_callback import CallbackHandler, ExportableState

from weightslab.errors import CheckpointFormatError
from weightslab.format.trainers import (
    HF_MODEL,
    HF_OPTIMIZER,
    HF_PROGRESS,
    HF_PROGRESS_JSON,
    HF_SCALER,
    HF_SCHEDULER,
    TRAINING_ARGUMENTS,
    hf_progress,
)

log = logging.getLogger("weightslab")

# the ledger names the callback registers the Trainer's objects under itself
OWN_NAMES = frozenset({HF_MODEL, HF_OPTIMIZER, HF_SCHEDULER, HF_PROGRESS, HF_SCALER})


def training_hyperparams(args: Any) -> dict[str, Any]:
    """The :data:`TRAINING_ARGUMENTS` of ``args`` as plain values (enums by value), for register_hyperparams."""
    missing = object()
    out: dict[str, Any] = {}
    for name in TRAINING_ARGUMENTS:
        value = getattr(args, name, missing)
        if value is not missing:
            out[name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def numeric_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a Trainer log or evaluation dict (strings, flags and NaNs left out)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        number = not isinstance(value, bool) and isinstance(value, (int, float))
        if isinstance(key, str) and key and number and math.isfinite(value):
            out[key] = float(value)
    return out


def find_trainer_parts() -> tuple[CallbackHandler | None, Trainer | None]:
    """The CallbackHandler calling the current callback event, and the Trainer that owns it.

    Callbacks get neither, but the states of the other stateful callbacks (``EarlyStoppingCallback``)
    and the gradient scaler are only reachable through them; they are found on the call stack of
    the event. ``(None, None)`` when the event was not called by a Trainer.
    """
    handler: CallbackHandler | None = None
    frame = inspect.currentframe()
    try:
        for _ in range(12):
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if handler is None and isinstance(owner, CallbackHandler):
                handler = owner
            elif handler is not None and isinstance(owner, Trainer) and owner.callback_handler is handler:
                return handler, owner
            frame = frame.f_back
    finally:
        del frame  # a frame held in a local keeps the whole stack alive
    return handler, None


class TrainerProgress:
    """The Trainer's ``TrainerState`` (step, epoch, log history, best metric, stateful callbacks) as a
    registered stateful object: ``state_dict()`` is ``trainer_state.json`` as the Trainer would write
    it at this moment."""

    def __init__(self) -> None:
        self.state: TrainerState | None = None
        self.control: TrainerControl | None = None
        self.handler: CallbackHandler | None = None
        self.loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """``{"format": 1, "trainer_state_json": ...}``; raises ValueError before the Trainer started."""
        if self.state is None:
            raise ValueError("the Trainer has not started training yet: no TrainerState to save")
        return hf_progress(trainer_state_json(self.state, self._exportable()))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Keep a saved state (the Trainer itself reads it from ``trainer_state.json`` when resuming)."""
        self.loaded = dict(state)

    def _exportable(self) -> list[Any]:
        callbacks = list(self.handler.callbacks) if self.handler is not None else []
        if self.control is not None:
            callbacks.append(self.control)
        return [cb for cb in callbacks if isinstance(cb, ExportableState)]


def trainer_state_json(state: TrainerState, exportable: list[Any]) -> str:
    """``trainer_state.json`` for ``state``, with the current states of the ``exportable`` callbacks.

    As ``Trainer._save_checkpoint`` records them: one state per class name, a list for several
    instances of one class. Without any exportable callback the states recorded in ``state`` stay.
    """
    record = dataclasses.asdict(state)
    if exportable:
        states: dict[str, Any] = {}
        for cb in exportable:
            name = type(cb).__name__
            if name in states:
                earlier = states[name]
                states[name] = [*earlier, cb.state()] if isinstance(earlier, list) else [earlier, cb.state()]
            else:
                states[name] = cb.state()
        record["stateful_callbacks"] = states
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def trainer_rng_state(rng: Mapping[str, Any]) -> dict[str, Any]:
    """weightslab's saved RNG states in the layout of the Trainer's ``rng_state.pth``."""
    version, internal, gauss = rng["python"]
    np_state = rng["numpy"]
    out: dict[str, Any] = {
        "python": (version, tuple(internal), gauss),
        "numpy": (
            np_state["bit_generator"],
            np_state["key"].numpy().astype(np.uint32),
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["gauss"]),
        ),
        "cpu": rng["torch"].clone(),
    }
    cuda = rng.get("cuda")
    if cuda and torch.cuda.is_available():  # one process: the Trainer restores the current device's state
        out["cuda"] = cuda[min(torch.cuda.current_device(), len(cuda) - 1)].clone()
    return out


def _unshared(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of tensors that share storage with an earlier one (tied weights): safetensors refuses
    shared tensors, and the Trainer's load of both names into one tied parameter is harmless."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(ptr)
        out[key] = tensor.contiguous()
    return out


def write_trainer_checkpoint(folder: Path, data: Mapping[str, Any]) -> list[str]:
    """Lay the step dict ``data`` out in ``folder`` as a Trainer checkpoint; returns the files written.

    Raises CheckpointFormatError when ``data`` holds no model state under the callback's name.
    """
    models = data.get("models", {})
    if HF_MODEL not in models:
        raise CheckpointFormatError(
            f"the checkpoint holds no model named {HF_MODEL!r} (it has {sorted(models)}); it was not saved "
            "by WeightslabCallback"
        )
    folder.mkdir(parents=True, exist_ok=True)
    written = ["model.safetensors"]
    safetensors.torch.save_file(
        _unshared(models[HF_MODEL]), str(folder / "model.safetensors"), metadata={"format": "pt"}
    )
    optimizer = data.get("optimizers", {}).get(HF_OPTIMIZER)
    scheduler = data.get("schedulers", {}).get(HF_SCHEDULER)
    if optimizer is not None and scheduler is not None:  # the Trainer loads both or neither
        torch.save(optimizer, folder / "optimizer.pt")
        torch.save(scheduler, folder / "scheduler.pt")
        written += ["optimizer.pt", "scheduler.pt"]
    else:
        log.warning(
            "weightslab: the checkpoint lacks the optimizer or scheduler state; the Trainer resumes with "
            "fresh ones"
        )
    extra = data.get("extra", {})
    if HF_SCALER in extra:
        torch.save(extra[HF_SCALER], folder / "scaler.pt")
        written.append("scaler.pt")
    if data.get("rng"):
        torch.save(trainer_rng_state(data["rng"]), folder / "rng_state.pth")
        written.append("rng_state.pth")
    progress = extra.get(HF_PROGRESS)
    if progress is not None:
        (folder / "trainer_state.json").write_text(progress[HF_PROGRESS_JSON], encoding="utf-8")
        written.append("trainer_state.json")
    else:
        log.warning(
            "weightslab: the checkpoint holds no Trainer state; the Trainer restarts its step counter at 0"
        )
    return written
