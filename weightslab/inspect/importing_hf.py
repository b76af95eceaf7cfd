"""Reading a Hugging Face Trainer ``checkpoint-N/`` folder as an import :class:`~.importing_formats.Source`.

The folder is what ``Trainer._save_checkpoint`` writes: the weights (``model.safetensors``, sharded
with an ``.index.json``, or ``pytorch_model.bin``), ``optimizer.pt``, ``scheduler.pt``,
``rng_state.pth``, ``trainer_state.json``, ``config.json`` and ``training_args.bin``. The first four
load with ``torch.load(weights_only=True)`` (the RNG file with numpy's array types allowed, as
transformers itself loads it). ``training_args.bin`` is a pickle of ``TrainingArguments``: it is
never unpickled. Its fields are read by an unpickler that builds inert placeholders instead of
importing any class, so nothing in it runs, and only the fields that change what training computes
are kept (never paths or tokens), as the set ``training_args`` that the transformers integration
registers (that list and the names the parts go under are :mod:`weightslab.format.trainers`'s, so
that the callback continues an imported folder as one of its own runs). ``config.json`` goes into
the step file's ``imported`` record: the model's architecture already stands for it in the hash.

The folder is listed and its JSON and pickle files read through a ``LocalStorage``; the tensors are
loaded by :mod:`.importing_formats`, the one module that opens the user's files itself.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightslab.errors import CheckpointFormatError, UnsafePathError
from weightslab.format.trainers import (
    HF_ARGS,
    HF_MODEL,
    HF_OPTIMIZER,
    HF_PROGRESS,
    HF_SCHEDULER,
    TRAINING_ARGUMENTS,
    hf_progress,
)
from weightslab.inspect.importing_formats import Source, load_safetensors, load_torch, numbers, unwrapped
from weightslab.storage.local import LocalStorage

_storage = LocalStorage(durable=False)  # reads only: the listing and the JSON files of the folder

WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
WEIGHT_FILES += ("pytorch_model.bin.index.json",)
# what the Trainer logs beside the metrics: the counters, and the end-of-training summary
_NOT_METRICS = frozenset({"step", "epoch", "total_flos", "train_runtime", "train_samples_per_second"})
_NOT_METRICS |= {"train_steps_per_second"}


def read_hf(folder: Path, *, trust: bool = False) -> Source:
    """A Trainer checkpoint folder; CheckpointFormatError when it is not one, UnsafePathError for a
    symlink inside it that leads out of it, UntrustedLoadError for a torch file that needs ``trust``
    (``training_args.bin`` is never unpickled, whatever ``trust`` says)."""
    names = sorted(_storage.listdir(folder))
    if not any(n in names for n in WEIGHT_FILES):
        steps = sorted((int(m[1]), n) for n in names if (m := re.fullmatch(r"checkpoint-(\d+)", n)))
        if steps:
            raise CheckpointFormatError(
                f"{folder} is a Trainer output_dir, not one checkpoint: it holds "
                f"{', '.join(n for _, n in steps)}; pass one of them (the newest is {folder / steps[-1][1]})"
            )
        raise CheckpointFormatError(
            f"{folder} is a folder but not a Hugging Face Trainer checkpoint: it has none of "
            f"{', '.join(WEIGHT_FILES)} (it holds {', '.join(names[:12]) or 'nothing'}). Pass a "
            "checkpoint-N/ folder, or a single torch, Lightning or safetensors file"
        )
    for name in names:
        inside(folder, folder / name)
    src = Source("hf", folder, model={}, model_name=HF_MODEL)
    src.model = _weights(folder, names, src, trust)
    state: dict[str, Any] = {}
    if "trainer_state.json" in names:
        state = _json(folder / "trainer_state.json", src)
        # as the transformers integration keeps it: its resume_path() writes it back for the Trainer
        text = _storage.read_bytes(folder / "trainer_state.json").decode("utf-8", errors="replace")
        src.extra[HF_PROGRESS] = hf_progress(text)
    if "optimizer.pt" in names:
        src.optimizers = {HF_OPTIMIZER: _torch(folder / "optimizer.pt", src, "optimizer state", trust)}
    if "scheduler.pt" in names:
        src.schedulers = {HF_SCHEDULER: _torch(folder / "scheduler.pt", src, "scheduler state", trust)}
    if "rng_state.pth" in names:
        src.rng = _rng(folder / "rng_state.pth", src)
    if any(re.fullmatch(r"rng_state_\d+\.pth", n) for n in names):
        src.notes.append("per-rank rng_state_<rank>.pth files not imported (a multi-process run)")
    step = state.get("global_step")
    match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
    src.step = step if isinstance(step, int) and step >= 0 else int(match[1]) if match else None
    if isinstance(state.get("epoch"), (int, float)):
        src.epoch = state["epoch"]
    for record in state.get("log_history", []):  # what the Trainer logged at this step
        if isinstance(record, dict) and record.get("step") == src.step:
            logged = {k: v for k, v in record.items() if k not in _NOT_METRICS}
            src.metrics.update(numbers(logged, src.notes, "trainer_state.json"))
    for key in ("best_metric", "best_model_checkpoint", "best_global_step"):
        if state.get(key) is not None:
            src.info[key] = state[key]
    if "config.json" in names:  # the architecture covers the model's config; kept with the import record
        src.info["config"] = _json(folder / "config.json", src)
    training = _training_args(folder / "training_args.bin", src) if "training_args.bin" in names else None
    if training:
        src.hyperparams[HF_ARGS] = training
    else:
        src.notes.append("no training hyperparameters recorded (no readable training_args.bin)")
    left = [n for n in names if folder / n not in src.files and not n.startswith("rng_state_")]
    if left:
        src.notes.append(f"not imported: {', '.join(left)}")
    return src


def inside(folder: Path, path: Path) -> Path:
    """``path`` resolved; UnsafePathError when a symlink leads it out of ``folder``."""
    real = path.resolve()
    if not real.is_relative_to(folder):
        raise UnsafePathError(path, f"it is a symlink to {real}, outside the checkpoint folder", where=folder)
    return real


def _weights(folder: Path, names: list[str], src: Source, trust: bool) -> dict[str, Any]:
    """The model's state dict from the first weight file present (shards joined by their index)."""
    for name in WEIGHT_FILES:
        if name not in names:
            continue
        path = folder / name
        if name.endswith(".index.json"):
            weight_map = _json(path, src).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointFormatError(f"{path} has no weight_map; the sharded checkpoint is incomplete")
            sd: dict[str, Any] = {}
            for shard in sorted(set(map(str, weight_map.values()))):
                shard_path = folder / shard
                if "/" in shard or not _storage.is_file(shard_path):
                    raise CheckpointFormatError(f"{path} names shard {shard!r}, which is not in {folder}")
                inside(folder, shard_path)
                sd.update(_load_weights(shard_path, src, trust))
            return unwrapped(sd)
        return unwrapped(_load_weights(path, src, trust))
    raise AssertionError("read_hf checked that a weight file is present")  # pragma: no cover


def _load_weights(path: Path, src: Source, trust: bool) -> dict[str, Any]:
    src.files.append(path)
    if path.name.endswith(".safetensors"):
        return dict(load_safetensors(path)[0])
    data = load_torch(path, trust=trust, what="weights file")
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"{path} holds a {type(data).__name__}, not a state dict")
    return dict(data)


def _json(path: Path, src: Source) -> dict[str, Any]:
    src.files.append(path)
    try:
        data = json.loads(_storage.read_bytes(path))
    except (OSError, ValueError) as exc:
        raise CheckpointFormatError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"{path} holds a {type(data).__name__}, expected a JSON object")
    return data


def _torch(path: Path, src: Source, what: str, trust: bool) -> Any:
    src.files.append(path)
    return load_torch(path, trust=trust, what=what)


def _rng(path: Path, src: Source) -> dict[str, Any]:
    """``rng_state.pth`` in the shape of weightslab's RNG record (torch, numpy, python, cuda)."""
    np_core = getattr(np, "_core", None) or np.core
    allowed = [np_core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    src.files.append(path)
    with torch.serialization.safe_globals(allowed):  # numpy arrays and dtypes are data, as transformers says
        raw = load_torch(path, trust=False, what="RNG state")
    out: dict[str, Any] = {}
    if isinstance(raw.get("cpu"), torch.Tensor):
        out["torch"] = raw["cpu"]
    state = raw.get("numpy")
    if isinstance(state, tuple) and len(state) == 5:  # np.random.get_state(): legacy tuple form
        name, key, pos, has_gauss, gauss = state
        out["numpy"] = {
            "bit_generator": str(name),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        }
    if isinstance(raw.get("python"), tuple) and len(raw["python"]) == 3:
        version, internal, gauss = raw["python"]
        out["python"] = [version, list(internal), gauss]
    cuda = raw.get("cuda")
    if isinstance(cuda, torch.Tensor):
        out["cuda"] = [cuda]
    elif isinstance(cuda, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in cuda):
        out["cuda"] = list(cuda)
    return out


# -- training_args.bin, read without unpickling -----------------------------------------------------
class _Inert:
    """What every class named in the pickle becomes: it records its arguments and state, and does nothing."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        self = object.__new__(cls)
        self.__dict__["_args"], self.__dict__["_state"] = args, None
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state


class _InertUnpickler(pickle.Unpickler):
    """Resolves every global to a fresh :class:`_Inert` subclass: no module is imported, no code runs."""

    def find_class(self, module: str, name: str) -> Any:
        return type(name, (_Inert,), {"qualname": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> None:
        return None  # tensor storages: TrainingArguments holds none


def _plain(value: Any, depth: int = 0) -> Any:
    """Inert objects as data: an enum-like object as its value, another as its state's fields."""
    if depth > 8:
        return None
    if isinstance(value, _Inert):
        args, state = value.__dict__["_args"], value.__dict__["_state"]
        if state is None and len(args) == 1 and isinstance(args[0], (str, int, float, bool)):
            return args[0]
        return _plain(state, depth + 1) if isinstance(state, dict) else f"<{type(value).qualname}>"
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else repr(value)


def _training_args(path: Path, src: Source) -> dict[str, Any] | None:
    """The allowlisted fields of a pickled ``TrainingArguments``; None (noted) when it cannot be read."""
    src.files.append(path)
    try:
        with zipfile.ZipFile(io.BytesIO(_storage.read_bytes(path))) as z:
            pkl = next(n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
            obj = _InertUnpickler(io.BytesIO(z.read(pkl))).load()
    except Exception as exc:  # any damage: the hyperparameters come from trainer_state.json instead
        src.notes.append(
            f"training_args.bin could not be read ({type(exc).__name__}); used trainer_state.json"
        )
        return None
    fields = _plain(obj)
    if not isinstance(fields, dict):
        src.notes.append("training_args.bin holds no TrainingArguments fields")
        return None
    return {k: fields[k] for k in TRAINING_ARGUMENTS if k in fields}


__all__ = ["WEIGHT_FILES", "inside", "read_hf"]
