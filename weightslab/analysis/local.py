"""The same analysis over a local weightslab root: each committed checkpoint is one "branch".

A checkpoint is committed when its entry is in its experiment's ``manifest.json``; other files under
``checkpoints/`` are leftovers and are ignored. Branches are named ``<exp_hash[:8]>-step<step>`` (the
full hash when two experiments share the prefix). A step file is verified against its manifest
checksum before it is analysed, so a damaged file is reported instead of analysed. The root is read
through a read-only :class:`~weightslab.store.manager.CheckpointManager`, so the on-disk format (and
its checksum rule) is read in one place.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from weightslab.analysis.branches import local_branch_name
from weightslab.analysis.config import analyze_config_dict
from weightslab.analysis.models import (
    CheckpointAnalysis,
    CheckpointComponents,
    ConfigAnalysis,
    OptimizerAnalysis,
    WeightsAnalysis,
)
from weightslab.analysis.optimizer import locate_optimizer_state, summarize_optimizer_state
from weightslab.analysis.parts import analyze_part
from weightslab.analysis.weights import analyze_state_dict
from weightslab.errors import (
    AnalysisSourceError,
    CheckpointCorruptedError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    ManifestError,
    RootError,
)
from weightslab.format.blobs import REFS_KEY, resolve_references
from weightslab.format.layout import CHECKPOINT_FORMAT
from weightslab.format.manifest import CheckpointEntry
from weightslab.format.stepfile import load_torch_file
from weightslab.storage.base import Storage
from weightslab.storage.local import LocalStorage
from weightslab.storage.open import is_remote
from weightslab.store.manager import CheckpointManager
from weightslab.util.flatten import flatten


def is_local_source(source: str | Path) -> bool:
    """Whether ``source`` names a weightslab root (a local folder or an ``s3://`` URL), not a Hub repo id."""
    if isinstance(source, str) and is_remote(source):
        return True
    return LocalStorage(durable=False).is_dir(Path(source).expanduser())


def _open(location: str | Path) -> CheckpointManager:
    """A read-only manager of the root at ``location`` (a folder, or ``s3://`` with the AWS variables)."""
    if isinstance(location, str) and is_remote(location):
        return CheckpointManager(location, mode="r")
    return CheckpointManager(Path(location).expanduser(), mode="r")


@dataclass(frozen=True, kw_only=True)
class LocalCheckpoint:
    """One committed checkpoint of a local root."""

    root: Path
    exp_hash: str
    branch: str
    entry: CheckpointEntry
    path: Path
    exp_dir: Path
    config_yaml: Path
    location: str = ""
    """The root as it was given (``s3://...`` for an object store); :attr:`root` is the path under it."""


@dataclass(frozen=True, kw_only=True)
class LocalListing:
    """The committed checkpoints of a root, and the experiments whose manifest could not be read."""

    checkpoints: list[LocalCheckpoint]
    problems: dict[str, str] = field(default_factory=dict)
    """Pseudo-branch name (``<hash[:8]>-manifest``) -> what is wrong with that experiment's manifest."""


def list_local_checkpoints(root: str | Path) -> LocalListing:
    """The committed checkpoints of every experiment under ``root``, sorted by step.

    Raises:
        AnalysisSourceError: ``root`` has no ``checkpoints/`` directory (it is not a weightslab root).
    """
    location = root if isinstance(root, str) and is_remote(root) else Path(root).expanduser()
    try:
        manager = _open(location)
    except RootError:
        raise AnalysisSourceError(
            f"{location} is not a weightslab root: it has no checkpoints/ directory; pass the "
            "root_log_dir your training used (the folder holding checkpoints/ and logs/)"
        ) from None
    hashes = sorted(manager.experiments())
    prefix_counts: dict[str, int] = {}
    for h in hashes:
        prefix_counts[h[:8]] = prefix_counts.get(h[:8], 0) + 1

    found: list[LocalCheckpoint] = []
    problems: dict[str, str] = {}
    for exp_hash in hashes:
        exp = manager.experiment(exp_hash)
        hash_chars = 8 if prefix_counts[exp_hash[:8]] == 1 else 16
        try:
            manifest = manager.manifest(exp_hash)
        except (ManifestError, OSError) as exc:
            problems[f"{exp_hash[:hash_chars]}-manifest"] = f"{type(exc).__name__}: {exc}"
            continue
        for entry in manifest.checkpoints:
            try:
                path = exp.resolve(entry.file)
            except ValueError as exc:
                problems[local_branch_name(exp_hash, entry.step, hash_chars=hash_chars)] = (
                    f"{type(exc).__name__}: {exc}"
                )
                continue
            found.append(
                LocalCheckpoint(
                    root=manager.root,
                    exp_hash=exp_hash,
                    branch=local_branch_name(exp_hash, entry.step, hash_chars=hash_chars),
                    entry=entry,
                    path=path,
                    exp_dir=exp.dir,
                    config_yaml=exp.config_yaml,
                    location=str(location),
                )
            )
    found.sort(key=lambda c: (c.entry.step, c.branch))
    return LocalListing(checkpoints=found, problems=problems)


def find_local_checkpoint(root: str | Path, branch: str) -> LocalCheckpoint:
    """The checkpoint of ``root`` named ``branch`` (``<hash prefix>-step<step>``).

    Raises:
        CheckpointNotFoundError: no committed checkpoint has that name.
    """
    listing = list_local_checkpoints(root)
    for c in listing.checkpoints:
        if c.branch == branch:
            return c
    names = [c.branch for c in listing.checkpoints]
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    raise CheckpointNotFoundError(
        f"{root} has no committed checkpoint named {branch!r}; it has {len(names)} ({shown or 'none'})"
    )


def verify_step_file(checkpoint: LocalCheckpoint) -> None:
    """Check the step file against the size and ``xxh3_128`` its manifest entry recorded.

    Raises:
        CheckpointNotFoundError: the file is missing.
        CheckpointCorruptedError: the size or checksum does not match.
    """
    manager = _open(checkpoint.location or checkpoint.root)
    try:
        manager.verify_entry(checkpoint.exp_hash, checkpoint.entry)
    except CheckpointCorruptedError as exc:
        if exc.actual != "<missing>":
            raise
        raise CheckpointNotFoundError(
            f"step file {checkpoint.path} listed in the manifest of {checkpoint.exp_hash} is missing; "
            "run `weightslab verify ROOT` to list every damaged checkpoint"
        ) from None


# Over 60 lines on purpose: one straight sequence (verify, load, three recorded parts, the result) over
# the one open step file; each part is already its own function.
def analyze_local_checkpoint(
    checkpoint: LocalCheckpoint,
    *,
    include_optimizer: bool = True,
    include_config: bool = True,
    include_weights: bool = False,
    verify: bool = True,
    optimizer_name: str | None = None,
) -> CheckpointAnalysis:
    """Analyse one committed checkpoint of a local root (optimizer, hyperparameters, and optionally weights).

    A part that fails is recorded in ``errors`` and in that part's ``error``; the file's checksum is
    verified first when ``verify``. Reading the weights costs no download: they are in the step file.

    Raises:
        CheckpointNotFoundError, CheckpointCorruptedError, CheckpointFormatError: the step file is missing,
            damaged, or not a weightslab step file (nothing else can be read from it then).
    """
    start = time.perf_counter()
    if verify:
        verify_step_file(checkpoint)
    manager = _open(checkpoint.location or checkpoint.root)
    storage = manager.storage
    obj = _load_step_file(checkpoint, manager)
    entry = checkpoint.entry
    exp_dir = checkpoint.exp_dir
    optimizers = obj.get("optimizers") if isinstance(obj.get("optimizers"), Mapping) else {}
    models = obj.get("models") if isinstance(obj.get("models"), Mapping) else {}
    config_file = (
        checkpoint.config_yaml.relative_to(exp_dir).as_posix()
        if storage.is_file(checkpoint.config_yaml)
        else None
    )
    errors: list[str] = []
    optimizer = OptimizerAnalysis()
    config = ConfigAnalysis()
    weights = WeightsAnalysis()
    if include_optimizer and optimizers:
        optimizer = analyze_part(
            errors, "optimizer", OptimizerAnalysis, lambda: _local_optimizer(obj, checkpoint, optimizer_name)
        )
    if include_config:
        config = analyze_part(
            errors,
            "config",
            ConfigAnalysis,
            lambda: (
                _local_config(obj.get("hyperparams"), checkpoint.config_yaml, storage) or ConfigAnalysis()
            ),
        )
    if include_weights and models:
        weights = analyze_part(
            errors,
            "weights",
            WeightsAnalysis,
            lambda: analyze_state_dict(
                _merged_models(models), files=(str(checkpoint.path),), file_bytes=entry.bytes
            ),
        )
    components = CheckpointComponents(
        optimizer=optimizer,
        config=config,
        weights=weights,
        files=tuple(f for f in (entry.file, config_file) if f is not None),
        optimizer_file=entry.file if optimizers else None,
        config_file=config_file or ("hyperparams" if obj.get("hyperparams") else None),
        weight_files=(entry.file,) if models else (),
        total_bytes=entry.bytes,
    )
    return CheckpointAnalysis(
        source=checkpoint.location or str(checkpoint.root),
        source_kind="local",
        branch=checkpoint.branch,
        revision=entry.xxh3_128,
        step=entry.step,
        components=components,
        metrics=dict(entry.metrics),
        errors=tuple(errors),
        elapsed_s=time.perf_counter() - start,
    )


def _load_step_file(checkpoint: LocalCheckpoint, manager: CheckpointManager) -> Mapping[str, Any]:
    """The step file's content, checked to be a weightslab step file of the format this version reads.

    A sharded checkpoint is consolidated (full tensors) through the store's reader.
    """
    if checkpoint.entry.shards:
        return manager.load_entry(checkpoint.exp_hash, checkpoint.entry, verify=False)
    obj = load_torch_file(manager.storage.local_file(checkpoint.path), what="step file")
    if not isinstance(obj, Mapping) or obj.get("format") != CHECKPOINT_FORMAT:
        found = obj.get("format") if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointFormatError(
            f"{checkpoint.path} is not a weightslab step file of format {CHECKPOINT_FORMAT!r} "
            f"(found {found!r}); upgrade weightslab if it was written by a newer version"
        )
    # a storage="dedup" step file: its blob references become (memory-mapped) tensors
    return resolve_references(dict(obj), manager.storage, checkpoint.path) if REFS_KEY in obj else obj


def _local_optimizer(
    obj: Mapping[str, Any], checkpoint: LocalCheckpoint, optimizer_name: str | None
) -> OptimizerAnalysis:
    """The optimizer part of a step file (the optimizer ``optimizer_name``, or the only one)."""
    opt_sd, sched_sd, layout, name = locate_optimizer_state(
        obj, path=checkpoint.path, optimizer_name=optimizer_name
    )
    return summarize_optimizer_state(
        opt_sd,
        sched_sd,
        path=str(checkpoint.path),
        file_bytes=checkpoint.entry.bytes,
        layout=layout,
        optimizer_name=name,
        top_level_keys=tuple(str(k) for k in obj),
    )


def _merged_models(models: Mapping[str, Any]) -> dict[str, Any]:
    """One state dict; tensor names get a ``<model>.`` prefix when the checkpoint holds several models."""
    if len(models) == 1:
        only = next(iter(models.values()))
        return dict(only) if isinstance(only, Mapping) else {}
    merged: dict[str, Any] = {}
    for model_name, sd in models.items():
        if isinstance(sd, Mapping):
            merged.update({f"{model_name}.{k}": v for k, v in sd.items()})
    return merged


def _local_config(hyperparams: Any, config_yaml: Path, storage: Storage) -> ConfigAnalysis | None:
    """The hyperparameters of the step file (else of ``hp/<hash>_config.yaml``) as a ConfigAnalysis."""
    source = "step file hyperparams"
    if not isinstance(hyperparams, Mapping) or not hyperparams:
        if not storage.is_file(config_yaml):
            return None
        hyperparams = yaml.safe_load(storage.read_bytes(config_yaml).decode("utf-8"))
        source = str(config_yaml)
        if not isinstance(hyperparams, Mapping):
            raise CheckpointFormatError(
                f"{config_yaml} holds a {type(hyperparams).__name__}, expected a mapping"
            )
    # Sizes are looked up by name (hidden_size, n_layer, ...) across every hyperparameter set.
    top: dict[str, Any] = {}
    for value in hyperparams.values():
        if isinstance(value, Mapping):
            for k, v in value.items():
                top.setdefault(str(k), v)
    analysis = analyze_config_dict(top, source=source)
    return replace(analysis, values=_scalar_values(hyperparams))


_SCALARS = (bool, int, float, str)


def _scalar_values(hyperparams: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened hyperparameters that are scalars (or lists of scalars, as lists); others are left out."""
    out: dict[str, Any] = {}
    for key, v in flatten(hyperparams).items():
        if v is None or isinstance(v, _SCALARS):
            out[key] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, _SCALARS) for x in v):
            out[key] = list(v)
    return out
