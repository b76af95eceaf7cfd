"""Reading single-file sources: a ``torch.save`` file, a Lightning ``.ckpt``, a safetensors file.

Each reader turns one file into a :class:`~.importing_formats.Source`: the model's state dict and,
where the format carries them, optimizer and scheduler states, the step, the epoch, metrics and
hyperparameters, plus what was left out. :func:`read_file` tells them apart by the file's first bytes
and, for a torch file, by its keys (a Lightning checkpoint has Lightning's layout). The files are
opened by :mod:`.importing_formats`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from weightslab.errors import CheckpointFormatError, ConfigError
from weightslab.format.layout import CHECKPOINT_FORMAT
from weightslab.format.trainers import (
    LIGHTNING_DATAMODULE_HPARAMS,
    LIGHTNING_DM_KEY,
    LIGHTNING_HPARAMS,
    LIGHTNING_MODEL,
    LIGHTNING_STATE,
    lightning_extra,
    numbered,
)
from weightslab.inspect.importing_formats import (
    FORMATS_HELP,
    ROLE_KEYS,
    ImportFormat,
    Source,
    is_optimizer_state,
    is_state_dict,
    load_safetensors,
    load_torch,
    numbers,
    sniff,
    unwrapped,
)


def read_file(path: Path, fmt: ImportFormat, *, trust: bool, keys: Mapping[str, str]) -> Source:
    """Read a torch, Lightning or safetensors file as ``fmt`` says ("auto": by its bytes and keys)."""
    kind = sniff(path)
    if kind is None:
        raise CheckpointFormatError(
            f"{path} is not a checkpoint weightslab can import: it is neither a torch.save file nor "
            f"safetensors. weightslab imports {FORMATS_HELP}"
        )
    if kind == "safetensors":
        if fmt not in ("auto", "safetensors"):
            raise CheckpointFormatError(f"{path} is a safetensors file, not {fmt}; pass --format safetensors")
        return read_safetensors(path)
    if fmt == "safetensors":
        raise CheckpointFormatError(f"{path} is a torch.save file, not safetensors; pass --format auto")
    if fmt == "hf":
        raise CheckpointFormatError(
            f"{path} is a file; a Hugging Face Trainer checkpoint is a checkpoint-N/ folder: pass the folder"
        )
    data = load_torch(path, trust=trust, what="checkpoint")
    if fmt == "lightning" or (fmt == "auto" and is_lightning(data)):
        return from_lightning(path, data)
    return from_torch(path, data, keys)


# -- torch.save dicts ---------------------------------------------------------------------------------
def is_lightning(data: Any) -> bool:
    """Whether a loaded dict has the layout of Lightning's ``dump_checkpoint``."""
    if not isinstance(data, Mapping) or not isinstance(data.get("state_dict"), Mapping):
        return False
    return "pytorch-lightning_version" in data or ("global_step" in data and "loops" in data)


def _as_state(value: Any) -> Any:
    """A module or optimizer saved whole (``torch.save(model)``, loaded with trust) as its state dict."""
    if isinstance(value, (torch.nn.Module, torch.optim.Optimizer)):
        return value.state_dict()
    return value


def from_torch(path: Path, data: Any, keys: Mapping[str, str]) -> Source:
    """A bare state dict, or a dict holding one with optimizer, scheduler, step, epoch and metrics."""
    data = _as_state(data)
    if not isinstance(data, Mapping):
        raise CheckpointFormatError(
            f"{path} holds a {type(data).__name__}, not a state dict or a dict holding one; save "
            "model.state_dict() (or a dict with it under 'model') and import that"
        )
    if data.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointFormatError(
            f"{path} is already a weightslab step file; copy its root (or `weightslab export` it) instead"
        )
    if is_state_dict(data):
        return Source("torch", path, model=unwrapped(dict(data)), files=[path])
    unknown = sorted(set(keys) - set(ROLE_KEYS))
    if unknown:
        raise ConfigError(f"unknown key role(s) {unknown}; the roles are {', '.join(ROLE_KEYS)}")
    found = {role: _find(data, role, keys) for role in ROLE_KEYS}
    model_key = found["model"] = _find(data, "model", keys, lambda v: is_state_dict(_as_state(v)))
    if model_key is None or not is_state_dict(_as_state(data[model_key])):
        if is_optimizer_state(data):
            raise CheckpointFormatError(
                f"{path} is an optimizer's state_dict, not a model's; import the model's weights file"
            )
        raise CheckpointFormatError(
            f"{path} holds a dict with no model state dict under the usual names "
            f"({', '.join(ROLE_KEYS['model'])}); its keys are {sorted(map(str, data))[:20]}: name the key "
            "with keys={'model': KEY} (`--key model=KEY`)"
        )
    src = Source("torch", path, model=unwrapped(dict(_as_state(data[model_key]))), files=[path])
    used = {k for k in found.values() if k is not None}
    if (k := found["optimizer"]) is not None:
        src.optimizers = _named_states(_as_state(data[k]), "optimizer", is_optimizer_state, path, k)
    if (k := found["scheduler"]) is not None:
        src.schedulers = _named_states(data[k], "scheduler", lambda v: isinstance(v, Mapping), path, k)
    if (k := found["step"]) is not None:
        src.step = _whole(data[k], k, path)
    if (
        (k := found["epoch"]) is not None
        and isinstance(data[k], (int, float))
        and not isinstance(data[k], bool)
    ):
        src.epoch = data[k]
    if (k := found["metrics"]) is not None and isinstance(data[k], Mapping):
        src.metrics.update(numbers(data[k], src.notes, f"{k!r}"))
    if (k := found["loss"]) is not None:
        src.metrics.update(numbers({"loss": data[k]}, src.notes, "the dict"))
    left = sorted(str(k) for k in data if k not in used)
    if left:
        src.notes.append(f"not imported: {', '.join(left[:10])}{' ...' if len(left) > 10 else ''}")
    return src


def _find(
    data: Mapping[str, Any], role: str, keys: Mapping[str, str], valid: Callable[[Any], bool] | None = None
) -> str | None:
    """The key of ``role``: as ``keys`` names it, else the first usual name present (and ``valid``)."""
    if role in keys:
        if keys[role] not in data:
            raise ConfigError(
                f"keys[{role!r}] = {keys[role]!r} is not a key of the checkpoint; its keys are "
                f"{sorted(map(str, data))[:20]}"
            )
        return keys[role]
    return next((k for k in ROLE_KEYS[role] if k in data and (valid is None or valid(data[k]))), None)


def _named_states(value: Any, kind: str, valid: Any, path: Path, key: str) -> dict[str, Any]:
    """One state (``kind``), a list of them (``kind``, ``kind_1``, ...) or a mapping of named ones."""
    if isinstance(value, (list, tuple)) and value and all(valid(v) for v in value):
        return dict(zip(numbered(kind, len(value)), value, strict=True))
    named = isinstance(value, Mapping) and value and all(valid(v) for v in value.values())
    if named and not is_optimizer_state(value):
        return {str(k): v for k, v in value.items()}
    if valid(value):
        return {kind: value}
    raise CheckpointFormatError(
        f"{path}: {key!r} holds a {type(value).__name__} that is not a {kind} state_dict; name the right "
        f"key with keys={{{kind!r}: KEY}} (`--key {kind}=KEY`)"
    )


def _whole(value: Any, key: str, path: Path) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointFormatError(
            f"{path}: {key!r} = {value!r} is not a step number; pass the step with step=N (`--step N`)"
        )
    return value


# -- Lightning ------------------------------------------------------------------------------------------
# The parts of a .ckpt go under the names the Lightning integration gives them in a step file
# (weightslab.format.trainers), so that an imported .ckpt resumes through WeightslabCheckpoint too.


def from_lightning(path: Path, data: Any) -> Source:
    """A ``.ckpt`` as Lightning's ``_CheckpointConnector.dump_checkpoint`` writes it."""
    if not isinstance(data, Mapping) or not is_state_dict(data.get("state_dict")):
        raise CheckpointFormatError(
            f"{path} is not a Lightning checkpoint (no 'state_dict' with 'pytorch-lightning_version'); "
            "pass --format torch or --format auto"
        )
    model = unwrapped(dict(data["state_dict"]))
    src = Source("lightning", path, model=model, model_name=LIGHTNING_MODEL, files=[path])
    optimizers, schedulers = list(data.get("optimizer_states", [])), list(data.get("lr_schedulers", []))
    src.optimizers = dict(zip(numbered("optimizer", len(optimizers)), optimizers, strict=True))
    src.schedulers = dict(zip(numbered("scheduler", len(schedulers)), schedulers, strict=True))
    if isinstance(data.get("global_step"), int):
        src.step = data["global_step"]
    if isinstance(data.get("epoch"), int):
        src.epoch = data["epoch"]
    for key, name in (
        ("hyper_parameters", LIGHTNING_HPARAMS),
        (LIGHTNING_DM_KEY, LIGHTNING_DATAMODULE_HPARAMS),
    ):
        hparams = data.get(key)
        if isinstance(hparams, Mapping) and hparams:
            src.hyperparams[name] = dict(hparams)
        elif hparams is not None and hasattr(hparams, "__dict__"):  # a Namespace, loaded with trust
            src.hyperparams[name] = dict(vars(hparams))
    src.info["lightning_version"] = str(data.get("pytorch-lightning_version", ""))
    for key, state in (data.get("callbacks") or {}).items():
        if isinstance(key, str) and key.startswith("ModelCheckpoint") and isinstance(state, Mapping):
            _model_checkpoint_state(src, key, state)
    # the rest (loops, callback states, precision plugin, on_save_checkpoint keys) as the Lightning
    # integration keeps it: Trainer.fit(ckpt_path=WeightslabCheckpoint.resume_path()) restores it all
    src.extra[LIGHTNING_STATE] = lightning_extra(data, list(src.optimizers), list(src.schedulers))
    return src


def _model_checkpoint_state(src: Source, key: str, state: Mapping[str, Any]) -> None:
    """The monitor, its mode and this file's score, from a ModelCheckpoint callback's saved state."""
    monitor = state.get("monitor")
    if not isinstance(monitor, str) or src.monitor is not None:
        return
    src.monitor = monitor
    try:  # the state key is "ModelCheckpoint" + repr of a dict of literals
        mode = ast.literal_eval(key[len("ModelCheckpoint") :]).get("mode")
    except (ValueError, SyntaxError, AttributeError):
        mode = None
    src.mode = "max" if mode == "max" else "min"
    best = state.get("best_model_score")
    src.info["monitor"] = monitor
    src.info["best_model_score"] = float(best) if isinstance(best, (torch.Tensor, float, int)) else None
    src.info["best_model_path"] = str(state.get("best_model_path") or "")
    # a top-k file is in best_k_models (with its own score) when it is written
    for saved, score in (state.get("best_k_models") or {}).items():
        if Path(str(saved)).name == src.path.name and isinstance(score, (torch.Tensor, float, int)):
            src.metrics[monitor] = float(score)


# -- safetensors ----------------------------------------------------------------------------------------
# -- safetensors ----------------------------------------------------------------------------------------
def read_safetensors(path: Path) -> Source:
    """Weights only; the step from a weightslab export's metadata (``weightslab.step``) when present."""
    sd, metadata = load_safetensors(path)
    if not sd:
        raise CheckpointFormatError(f"{path} holds no tensors; nothing to import")
    src = Source("safetensors", path, model=unwrapped(sd), files=[path])
    src.info["metadata"] = {str(k): str(v) for k, v in metadata.items()}
    for key in ("weightslab.step", "global_step", "step"):
        if str(metadata.get(key, "")).isdigit():
            src.step = int(metadata[key])
            break
    name = metadata.get("weightslab.model")
    if isinstance(name, str) and name:
        src.model_name = name
    src.notes.append("a safetensors file holds weights only: no optimizer, scheduler or RNG state")
    return src


__all__ = ["from_lightning", "from_torch", "is_lightning", "read_file", "read_safetensors"]
