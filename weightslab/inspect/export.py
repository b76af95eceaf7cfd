"""``weightslab export``: write one checkpoint out for use elsewhere.

``safetensors`` (the default) writes each registered model's weights as ``<name>.safetensors`` (the
usual model gives ``model.safetensors``), loadable with ``safetensors.torch.load_file`` and
``model.load_state_dict``; ``pt`` copies the whole step file as ``checkpoint.pt`` (models, optimizers,
schedulers, RNG), loadable with ``torch.load(..., weights_only=True)``. Both write ``config.yaml`` (the
hyperparameters, taken from the step file itself: the experiment's YAML is not needed) and
``checkpoint.json`` (where it came from). The step file is verified against its checksum first;
existing files are replaced only with ``force``. Every file gets the mode a new file gets (the umask
applies), whatever the library that writes it does.

A model pruned with ``torch.nn.utils.prune`` stores ``<name>_orig`` and ``<name>_mask`` instead of
``<name>``; safetensors export writes the effective ``<name> = <name>_orig * <name>_mask`` instead, so
the file loads into the same model without pruning, and says so (``pruned``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from safetensors.torch import save_file

from weightslab.errors import HyperparamsError
from weightslab.format.blobs import REFS_KEY
from weightslab.inspect import NullTracker, Tracker
from weightslab.store.manager import CheckpointManager
from weightslab.util.canonical import canonicalize
from weightslab.util.names import validate_name

ExportFormat = Literal["safetensors", "pt"]
EXPORT_FORMAT = "weightslab.export/1"


@dataclass
class ExportResult:
    """What ``export`` wrote."""

    exp_hash: str
    step: int
    directory: Path
    format: ExportFormat
    files: list[Path] = field(default_factory=list)
    tied: dict[str, dict[str, str]] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    pruned: dict[str, list[str]] = field(default_factory=dict)  # model -> names written as orig * mask
    notes: list[str] = field(default_factory=list)  # what the export left out, and why

    def to_dict(self) -> dict[str, Any]:
        return {
            "exp_hash": self.exp_hash,
            "step": self.step,
            "directory": str(self.directory),
            "format": self.format,
            "files": [str(p) for p in self.files],
            "bytes": sum(p.stat().st_size for p in self.files if p.exists()),
            "tied": self.tied,
            "skipped": self.skipped,
            "pruned": self.pruned,
            "notes": list(self.notes),
        }


# Over 60 lines on purpose: one straight sequence (resolve, verify, load, write each file, record); the
# steps share the open checkpoint and the list of files written, which splitting would pass around.
def export_checkpoint(
    manager: CheckpointManager,
    exp_hash: str,
    to: str | Path,
    *,
    step: int | None = None,
    fmt: ExportFormat = "safetensors",
    force: bool = False,
    tracker: Tracker | None = None,
) -> ExportResult:
    """Export checkpoint ``step`` (default: the newest) of ``exp_hash`` into folder ``to``.

    Raises CheckpointNotFoundError for a missing step, CheckpointCorruptedError when the step file
    does not verify, FileExistsError when a file to write exists and ``force`` is False,
    NotADirectoryError when ``to`` is a file.
    """
    if fmt not in ("safetensors", "pt"):
        raise ValueError(f"export format must be 'safetensors' or 'pt', got {fmt!r}")
    tracker = tracker or NullTracker()
    entry = manager.entry(exp_hash, "latest" if step is None else step)
    directory = Path(to).expanduser()
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"export target {directory} is a file; pass a folder with --to")
    result = ExportResult(exp_hash=exp_hash, step=entry.step, directory=directory, format=fmt)

    tracker.start("verifying", entry.bytes)
    source = manager.verify_entry(exp_hash, entry)
    tracker.advance(entry.bytes)
    writes: dict[str, Callable[[Path], None]] = {}
    # weights_only and memory-mapped: no code runs, and the pt format reads only the hyperparameters
    # a sharded checkpoint is consolidated here: full tensors, whatever world size wrote it
    if entry.shards:
        data = manager.load_entry(exp_hash, entry, verify=False, mmap=True)
    else:  # the step file is verified above; a dedup step file's blobs are verified as they are read
        from weightslab.format.stepfile import load_step_file

        data = load_step_file(source, mmap=True, storage=manager.storage, verify_blobs=True)
    if fmt == "pt":
        # a dedup step file holds references: the standalone copy gets every tensor inline
        self_contained = not entry.shards and REFS_KEY not in data
        writes["checkpoint.pt"] = _copy_from(source) if self_contained else _bytes_of(_serialised(data))
    else:
        for name, raw_state in data.get("models", {}).items():
            state, pruned = unpruned_state(raw_state)
            if pruned:
                result.pruned[name] = pruned
            tensors, tied, skipped = standalone_tensors(state)
            if tied:
                result.tied[name] = tied
            if skipped:
                result.skipped[name] = skipped
            metadata = {
                "format": "pt",  # what transformers and other loaders expect
                "weightslab.exp_hash": exp_hash,
                "weightslab.step": str(entry.step),
                "weightslab.model": name,
            }
            writes[f"{validate_name(name, 'model name')}.safetensors"] = _safetensors(tensors, metadata)
    manifest = manager.manifest(exp_hash)
    config, why_not = step_hyperparams(data)
    if config is None:
        result.notes.append(f"config.yaml not written: {why_not}")
    else:
        writes["config.yaml"] = _bytes_of(yaml.safe_dump(config, sort_keys=True, allow_unicode=True).encode())
    record = {
        "format": EXPORT_FORMAT,
        "exp_hash": exp_hash,
        "step": entry.step,
        "trigger": entry.trigger,
        "created": entry.created,
        "metrics": dict(entry.metrics),
        "parent": None if manifest.parent is None else manifest.parent.to_dict(),
        "architecture_hash": manifest.architecture_hash,
        "hyperparams_hash": manifest.hyperparams_hash,
        "weights_format": fmt,
        "files": sorted(n for n in writes if n != "checkpoint.json"),
        "tied": result.tied,
        "pruned": {name: {n: f"{n}_orig * {n}_mask" for n in names} for name, names in result.pruned.items()},
        "hyperparams_source": None if config is None else "step file",
        "source": {"root": str(manager.root), "file": entry.file, "xxh3_128": entry.xxh3_128},
    }
    writes["checkpoint.json"] = _bytes_of((json.dumps(record, indent=2, allow_nan=False) + "\n").encode())

    existing = [n for n in writes if (directory / n).exists()]
    if existing and not force:
        raise FileExistsError(
            f"{directory} already holds {', '.join(existing)}; pass --force to replace them or choose another --to"
        )
    directory.mkdir(parents=True, exist_ok=True)
    tracker.start("writing", len(writes))
    for name, produce in writes.items():
        result.files.append(_write_atomic(directory / name, produce))
        tracker.advance()
    return result


def step_hyperparams(data: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The hyperparameters a step file records, in the canonical form of the YAML config.

    Returns (config, "") or (None, why there is none to write).
    """
    sets = data.get("hyperparams")
    if not isinstance(sets, Mapping):
        return None, "the step file records no hyperparameters"
    try:
        return {str(name): canonicalize(hp, str(name)) for name, hp in sets.items()}, ""
    except HyperparamsError as exc:
        return None, f"the step file's hyperparameters cannot be written as YAML ({exc})"


def unpruned_state(state: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``state`` with every tensor that ``torch.nn.utils.prune`` split written as its effective value.

    Pruning replaces parameter ``<name>`` by ``<name>_orig`` and a buffer ``<name>_mask`` of the same
    shape, and recomputes ``<name> = <name>_orig * <name>_mask`` before each forward. Here each such
    pair becomes ``<name>`` (with the dtype of ``_orig``), so the state loads with ``strict=True``
    into the model without pruning. Returns (state, the names combined).
    """
    out: dict[str, Any] = {}
    combined: list[str] = []
    for key, value in state.items():
        base = key.removesuffix("_orig") if key.endswith("_orig") else key.removesuffix("_mask")
        if base == key or not _is_pruned_pair(state, base):
            out[key] = value
        elif key.endswith("_orig"):
            mask = state[f"{base}_mask"]
            out[base] = (value.detach() * mask.detach()).to(value.dtype)
            combined.append(base)
    return out, combined


def _is_pruned_pair(state: Mapping[str, Any], base: str) -> bool:
    """``base_orig`` and ``base_mask`` are tensors of one shape, and ``base`` itself is not stored."""
    orig, mask = state.get(f"{base}_orig"), state.get(f"{base}_mask")
    return (
        bool(base)
        and base not in state
        and isinstance(orig, torch.Tensor)
        and isinstance(mask, torch.Tensor)
        and orig.shape == mask.shape
    )


def standalone_tensors(
    state: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Tensors safetensors can write: contiguous, each with storage of its own.

    Tied weights (an embedding shared with an output layer) share storage, which safetensors
    refuses; each alias gets its own copy so that ``load_state_dict`` of the file works as is.
    Returns (tensors, {alias: first name of the same tensor}, names of non-tensor entries skipped).
    """
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    skipped: list[str] = []
    owners: dict[int, str] = {}
    views: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            skipped.append(name)
            continue
        t = value.detach().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        key = (ptr, int(t.storage_offset()), tuple(t.shape), tuple(t.stride()), t.dtype)
        if ptr and key in views:
            tied[name] = views[key]
        shared = ptr != 0 and ptr in owners
        whole = t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        if ptr:
            owners.setdefault(ptr, name)
            views.setdefault(key, name)
        tensors[name] = t.contiguous().clone() if shared or not whole else t
    return tensors, tied, skipped


def _serialised(data: Mapping[str, Any]) -> bytes:
    """A step dict as ``torch.save`` bytes (a consolidated sharded checkpoint has no file to copy)."""
    buf = io.BytesIO()
    torch.save({k: v for k, v in data.items() if k != REFS_KEY}, buf)
    return buf.getvalue()


def _bytes_of(data: bytes) -> Callable[[Path], None]:
    def produce(path: Path) -> None:
        path.write_bytes(data)

    return produce


def _copy_from(source: Path) -> Callable[[Path], None]:
    def produce(path: Path) -> None:
        shutil.copyfile(source, path)

    return produce


def _safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Callable[[Path], None]:
    def produce(path: Path) -> None:
        save_file(tensors, str(path), metadata=metadata)

    return produce


def _write_atomic(path: Path, produce: Callable[[Path], None]) -> Path:
    """Write through a temporary name in the same folder, so a failure never leaves half a file.

    The file gets the mode of a file created the usual way (0644 under umask 022): safetensors writes
    through a private temporary file of its own (mode 0600) and renames it, so the mode is put back.
    """
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        # created here first, as any new file is (umask and default ACLs apply), to learn that mode
        with open(tmp, "xb") as f:
            mode = os.fstat(f.fileno()).st_mode & 0o7777
        produce(tmp)
        with open(tmp, "rb+") as f:
            if os.fstat(f.fileno()).st_mode & 0o7777 != mode:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


__all__ = [
    "EXPORT_FORMAT",
    "ExportFormat",
    "ExportResult",
    "export_checkpoint",
    "standalone_tensors",
    "step_hyperparams",
    "unpruned_state",
]
