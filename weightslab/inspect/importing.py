"""``weightslab import``: bring a checkpoint made by another tool into a root, as a new experiment.

The source (a ``torch.save`` file, a Lightning ``.ckpt``, a Hugging Face ``checkpoint-N/`` folder or
a safetensors file) is read completely first (:mod:`.importing_files`, :mod:`.importing_hf`), and
the state dict fitted and hashed (:mod:`.importing_identity`), so a bad source writes nothing. Then one step file is committed through the manager, holding the root's
writer lock: ``trigger="import"``, the model's weights, the optimizer and scheduler states, the RNG
states, the hyperparameters, and an ``imported`` record of where it came from; the journal gets an
``imported`` event.

The experiment hash is the one the automatic system computes. With ``model`` (the module the
checkpoint was trained with), it is that model's architecture signature plus the hyperparameter sets,
so a run that registers the same model and sets resumes the imported step and keeps saving into the
same experiment. Without ``model``, the signature is derived from the state dict: a tree of plain
modules holding every tensor's name, shape and dtype. A run that registers the real model still
resumes the import (the weights fit by name and shape), and its first save opens a child experiment
(reason ``model_change``) whose parent is the imported checkpoint.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import xxhash

from weightslab.errors import CheckpointFormatError, ConfigError, ImportConflictError
from weightslab.format.layout import CHECKPOINT_FORMAT
from weightslab.inspect.importing_files import read_file
from weightslab.inspect.importing_formats import FORMATS, ImportFormat, Source, resolve_source
from weightslab.inspect.importing_hf import read_hf
from weightslab.inspect.importing_identity import (
    fit_state_dict,
    hyperparameter_sets,
    models_of,
    recordable,
    state_dict_skeleton,
)
from weightslab.storage.local import LocalStorage
from weightslab.storage.open import display
from weightslab.store.manager import CheckpointManager
from weightslab.system.identity import ExperimentHashGenerator
from weightslab.system.validation import check_notes, check_step, clean_metrics
from weightslab.util.canonical import canonical_json, canonicalize, plain
from weightslab.util.jsonsafe import to_jsonable
from weightslab.util.names import validate_name

IMPORT_TRIGGER = "import"


@dataclass
class ImportResult:
    """What an import wrote (or found already there)."""

    exp_hash: str
    step: int
    format: str
    source: Path
    root: str  # as the user names it: a folder, or s3://bucket/prefix
    file: str
    created: bool  # the import opened the experiment
    already: bool  # the same source was imported at this step before: nothing was written
    identity: str  # "model": hashed from the model given; "state_dict": from the tensors' names and shapes
    model_name: str
    tensors: int
    optimizers: int
    schedulers: int
    rng: bool
    metrics: dict[str, float | None] = field(default_factory=dict)
    hyperparams: dict[str, Any] = field(default_factory=dict)  # the sets hashed: register these to match
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "exp_hash": self.exp_hash,
            "step": self.step,
            "format": self.format,
            "source": str(self.source),
            "root": str(self.root),
            "file": self.file,
            "created": self.created,
            "already": self.already,
            "identity": self.identity,
            "model_name": self.model_name,
            "tensors": self.tensors,
            "optimizers": self.optimizers,
            "schedulers": self.schedulers,
            "rng": self.rng,
            "metrics": dict(self.metrics),
            "hyperparams": self.hyperparams,
            "notes": list(self.notes),
        }


# Over 60 lines on purpose: one straight sequence (read, fit, hash, then commit under the lock); the
# parts share the source and the identity, which splitting would pass around.
def import_checkpoint(
    root: str | Path,
    source: str | Path,
    *,
    format: ImportFormat = "auto",
    model: torch.nn.Module | Mapping[str, torch.nn.Module] | None = None,
    hyperparams: Mapping[str, Any] | None = None,
    step: int | None = None,
    trust: bool = False,
    tags: Iterable[str] = (),
    description: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    keys: Mapping[str, str] | None = None,
    exclude_hyperparams: Iterable[str] = (),
) -> ImportResult:
    """Import the checkpoint at ``source`` into ``root`` as a committed checkpoint; returns what it did.

    Args:
        format: "auto" (by the file's bytes and keys), "torch", "lightning", "hf" or "safetensors".
        model: the module the checkpoint was trained with (or ``{name: module}``): the hash is then the
            one a run registering it gets; without it, the hash comes from the state dict's tensors.
        hyperparams: the hyperparameter sets, ``{set name: values}`` as ``register_hyperparams(name,
            values)`` takes them; default: what the source records (Lightning ``hyper_parameters`` as
            set "hparams", a Hugging Face folder's training arguments as "training_args": the sets the
            Lightning and transformers integrations register).
        step: the step to record; default: the source's own counter (``global_step``, ``step``), else 0.
        trust: allow ``torch.load(weights_only=False)``, which can run code from the file.
        keys: for a ``torch.save`` dict, the key of a role ("model", "optimizer", "scheduler", "step",
            "epoch", "metrics", "loss") where it is not under a usual name.
        exclude_hyperparams: keys that do not count in the hash, as the run's ``exclude_hyperparams``.

    Importing the same source at the same step again finds it there (``already=True``), writing nothing.
    Raises CheckpointNotFoundError (no such source), CheckpointFormatError (not a format weightslab
    imports, or damaged), UntrustedLoadError (the file needs ``trust=True``), ArchitectureMismatchError
    (``model`` does not fit the weights), ConfigError/HyperparamsError (bad options), ImportConflictError
    (the experiment already holds another checkpoint at that step, or later ones), RootLockedError (a
    writer holds the root).
    """
    if format not in FORMATS:
        raise ConfigError(f"import format must be one of {', '.join(FORMATS)}, got {format!r}")
    clean_tags, clean_description = check_notes(tags, description)
    path = resolve_source(source)
    if LocalStorage(durable=False).is_dir(path):
        if format not in ("auto", "hf"):
            raise CheckpointFormatError(
                f"{path} is a folder; --format {format} reads a file (only hf reads a checkpoint-N/ folder)"
            )
        src = read_hf(path, trust=trust)
    else:
        src = read_file(path, format, trust=trust, keys=dict(keys or {}))
    models = models_of(model, src.model_name)
    name = next(iter(models)) if models else validate_name(src.model_name, "model name")
    state = fit_state_dict(src, models[name]) if models else src.model
    at = check_step(step) if step is not None else (src.step if src.step is not None else 0)
    sets = hyperparameter_sets(
        recordable(src.hyperparams, "", src.notes) if hyperparams is None else hyperparams
    )
    hasher = ExperimentHashGenerator(exclude_hyperparams)
    arch = models or {name: state_dict_skeleton(state, src.path)}
    ident = hasher.identity(arch, sets)
    metrics = clean_metrics(src.metrics)
    digest = _digest(src.files)
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "exp_hash": ident.exp_hash,
        "step": at,
        "created": time.time(),
        "trigger": IMPORT_TRIGGER,
        "metrics": metrics,
        "models": {name: state},
        "optimizers": src.optimizers,
        "schedulers": src.schedulers,
        "extra": _loadable_extra(src),
        "rng": src.rng,
        "hyperparams": {n: plain(hp) for n, hp in sets.items()},
        "frozen": {},  # unknown: resume leaves requires_grad as the run sets it
        "imported": _record(src, digest),
    }
    for section in ("models", "optimizers", "schedulers", "rng"):
        bad = _unloadable(payload[section], section)
        if bad is not None:
            raise CheckpointFormatError(
                f"{src.path}: {bad} cannot be read back with torch.load(weights_only=True), so the imported "
                "checkpoint could not be opened safely; save plain state_dict()s in the source and import that"
            )
    result = ImportResult(
        exp_hash=ident.exp_hash,
        step=at,
        format=src.format,
        source=src.path,
        root=str(root),
        file="",
        created=False,
        already=False,
        identity="model" if models else "state_dict",
        model_name=name,
        tensors=sum(isinstance(v, torch.Tensor) for v in state.values()),
        optimizers=len(src.optimizers),
        schedulers=len(src.schedulers),
        rng=bool(src.rng),
        metrics=metrics,
        hyperparams={n: canonicalize(hp, n) for n, hp in sets.items()},
        notes=list(src.notes),
    )
    with CheckpointManager(root, mode="w", storage_options=storage_options) as manager:
        result.root = display(manager.storage, manager.root)
        if manager.has_experiment(ident.exp_hash):
            found = _already(manager, ident.exp_hash, at, digest, src.path)
            if found is not None:
                result.file, result.already = found, True
                return result
        _, result.created = manager.create_experiment(
            exp_hash=ident.exp_hash,
            architecture_hash=ident.architecture_hash,
            hyperparams_hash=ident.hyperparams_hash,
            parent=None,
            retention=_keep_all(src),
            hyperparams=result.hyperparams,
            models=arch,
            save_architecture=bool(models),  # a skeleton of plain modules rebuilds nothing
        )
        entry = manager.save(
            ident.exp_hash,
            at,
            payload,
            trigger=IMPORT_TRIGGER,
            metrics=metrics,
            tags=clean_tags,
            description=clean_description,
        )
        result.file = entry.file
        manager.event(
            "imported",
            exp_hash=ident.exp_hash,
            step=at,
            source=str(src.path),
            format=src.format,
            xxh3_128=digest,
            identity=result.identity,
            tensors=result.tensors,
            optimizers=result.optimizers,
            schedulers=result.schedulers,
        )
    return result


_LOADABLE: tuple[type, ...] = (str, bytes, int, float, bool, complex, type(None))
_LOADABLE += (torch.Size, torch.dtype, torch.device)


def _unloadable(value: Any, path: str) -> str | None:
    """Where ``value`` holds something ``torch.load(weights_only=True)`` cannot rebuild (an object a
    trusted load brought in), as "path (type)"; None when all of it loads back without running code."""
    if type(value) in (dict, OrderedDict):
        for k, v in value.items():
            found = _unloadable(v, f"{path}.{k}") if isinstance(k, (str, int)) else f"{path} key {k!r}"
            if found is not None:
                return found
        return None
    if type(value) in (list, tuple):
        return next((f for i, v in enumerate(value) if (f := _unloadable(v, f"{path}[{i}]"))), None)
    if isinstance(value, torch.Tensor) or type(value) in _LOADABLE:  # an IntEnum is an int, not loadable
        return None
    return f"{path} ({type(value).__module__}.{type(value).__qualname__})"


def _loadable_extra(src: Source) -> dict[str, Any]:
    """The source's other state, without the parts a weights_only load could not read back (noted)."""
    out: dict[str, Any] = {}
    for name, state in src.extra.items():
        if isinstance(state, Mapping):
            kept = {k: v for k, v in state.items() if _unloadable(v, f"extra.{name}.{k}") is None}
            dropped = sorted(str(k) for k in state if k not in kept)
            if dropped:
                src.notes.append(f"not imported (Python objects): {', '.join(dropped)} of {name!r}")
            out[name] = kept
        elif _unloadable(state, name) is None:
            out[name] = state
    return out


def _keep_all(src: Source) -> dict[str, Any]:
    """The retention an imported experiment records: keep everything (a run that resumes it records its
    own), with the source's monitor, so that ``ls`` and ``show`` name its best checkpoint."""
    return {"keep_last": None, "keep_best": 0, "monitor": src.monitor, "mode": src.mode, "keep_every": None}


def _digest(files: list[Path]) -> str:
    """One xxh3-128 over the sizes and checksums of the source's files: the source's identity."""
    storage = LocalStorage(durable=False)
    records = [[p.name, *storage.checksum(p)] for p in files]
    return xxhash.xxh3_128(canonical_json(records)).hexdigest()


def _record(src: Source, digest: str) -> dict[str, Any]:
    """The step file's ``imported`` record: plain data, which ``weights_only`` loading reads back."""
    record = {
        "format": src.format,
        "source": str(src.path),
        "files": [p.name for p in src.files],
        "xxh3_128": digest,
        "epoch": src.epoch,
        "step": src.step,
        **src.info,
    }
    return dict(to_jsonable(record, fallback=repr))


def _already(manager: CheckpointManager, exp_hash: str, step: int, digest: str, path: Path) -> str | None:
    """The entry's file when this source is already imported at ``step``; ImportConflictError when the
    experiment holds another checkpoint there, or later ones (which an import would abandon)."""
    m = manager.manifest(exp_hash)
    entry = m.entry(step)
    if entry is not None and not entry.abandoned:
        if entry.trigger == IMPORT_TRIGGER:
            data = manager.load_entry(exp_hash, entry)
            if (data.get("imported") or {}).get("xxh3_128") == digest:
                return entry.file
        raise ImportConflictError(
            f"experiment {exp_hash} in {manager.root} already holds a checkpoint at step {step} "
            f"(trigger {entry.trigger!r}) that was not imported from {path}; import at another step "
            "(step=N, `--step N`) or into another root"
        )
    later = [e.step for e in m.live() if e.step > step]
    if later:
        raise ImportConflictError(
            f"experiment {exp_hash} in {manager.root} already has checkpoints after step {step} (up to "
            f"{max(later)}); importing step {step} would abandon them as a rewind does. Import at a later "
            f"step (`--step {max(later) + 1}`) or into another root"
        )
    return None


__all__ = ["IMPORT_TRIGGER", "ImportResult", "import_checkpoint"]
