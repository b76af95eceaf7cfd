"""The parts every import reader shares: the :class:`Source` record, opening the user's files, state checks.

A reader (:mod:`.importing_files` for single files, :mod:`.importing_hf` for a Trainer folder) turns
one source into a :class:`Source`: the model's state dict and, where the format carries them,
optimizer and scheduler states, RNG states, the step, the epoch, metrics and hyperparameters, plus
what was left out. Nothing here writes anything; :mod:`.importing` hashes the result and commits it.

This is the one module that opens the user's own files itself, outside any root (the first bytes of
a file to tell its format, ``torch.load`` and ``safe_open`` on the path); whole files and listings go
through a ``LocalStorage``. Nothing in a file runs: ``torch.load(weights_only=True)`` unless the
caller passes ``trust=True``.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from weightslab.errors import CheckpointFormatError, CheckpointNotFoundError, UntrustedLoadError
from weightslab.storage.local import LocalStorage

if TYPE_CHECKING:  # imported by the functions that read files: the CLI's parser needs only the names
    import torch

from weightslab.inspect.importing_roles import FORMATS, FORMATS_HELP, ROLE_KEYS, ImportFormat

_storage = LocalStorage(durable=False)  # reads only: whole files and listings of the user's source

# The prefixes that DDP (``module.``) and torch.compile (``_orig_mod.``) put before every name;
# weightslab registers the wrapped module, so they are removed.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class Source:
    """What one import source holds, in the shape of a weightslab step dict's parts."""

    format: str
    path: Path
    model: dict[str, Any]
    model_name: str = "model"
    optimizers: dict[str, Any] = field(default_factory=dict)
    schedulers: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # the step dict's "extra": other stateful objects
    step: int | None = None
    epoch: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    hyperparams: dict[str, Any] = field(default_factory=dict)
    monitor: str | None = None
    mode: Literal["min", "max"] = "min"
    info: dict[str, Any] = field(default_factory=dict)  # provenance, recorded in the step file
    files: list[Path] = field(default_factory=list)  # every file read (their checksums name the source)
    notes: list[str] = field(default_factory=list)  # what was left out, and why


# -- opening ------------------------------------------------------------------------------------------
def resolve_source(source: str | Path) -> Path:
    """The absolute, symlink-free path of ``source``; CheckpointNotFoundError when it does not exist."""
    given = Path(source).expanduser()
    path = given.resolve()
    if not _storage.exists(path):
        raise CheckpointNotFoundError(
            f"import source {given} does not exist; pass the path of {FORMATS_HELP}"
        )
    return path


def sniff(path: Path) -> Literal["zip", "pickle", "safetensors"] | None:
    """What the first bytes of a file say it is: torch's zip format, a legacy pickle, safetensors, or None."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    # safetensors before pickle: its header length's first byte may be 0x80, pickle's PROTO
    if len(head) == 9 and head[8:9] == b"{":  # 8-byte little-endian header length, then JSON
        (length,) = struct.unpack("<Q", head[:8])
        if 0 < length <= 100_000_000 and length < _storage.size(path):
            return "safetensors"
    if head[:1] == b"\x80":  # PROTO: torch.save before 1.6, or a plain pickle
        return "pickle"
    return None


def load_torch(path: Path, *, trust: bool, what: str) -> Any:
    """``torch.load`` of a user's file: ``weights_only=True`` unless ``trust``; memory-mapped when it can be.

    Raises UntrustedLoadError (naming the file, the objects it needs and ``--trust``) when only a
    code-executing unpickler can read it, CheckpointFormatError when it is not a torch file or damaged.
    """
    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=not trust, mmap=True)
        except RuntimeError as exc:
            if "mmap can only be used" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=not trust)  # a legacy file
    except pickle.UnpicklingError as exc:
        if not trust and ("Weights only load failed" in str(exc) or "Unsupported global" in str(exc)):
            raise UntrustedLoadError(
                f"{what} {path} holds Python objects{_needed_globals(path)} that only a code-executing "
                "unpickler can rebuild, and weightslab loads with torch.load(weights_only=True) so that "
                "nothing in a file runs. If you trust this file, import it with trust=True "
                "(`weightslab import ROOT SOURCE --trust`)"
            ) from None
        raise CheckpointFormatError(f"{what} {path} is not a readable torch file ({exc})") from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        reason = str(exc).strip().split("\n")[0][:200]
        raise CheckpointFormatError(
            f"{what} {path} could not be read as a torch file ({type(exc).__name__}: {reason}); it may be "
            "truncated or damaged, or not a checkpoint at all"
        ) from exc


def _needed_globals(path: Path) -> str:
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy file: torch cannot list them without loading
        return ""
    return f" ({', '.join(names[:6])}{' ...' if len(names) > 6 else ''})" if names else ""


# -- torch.save dicts ---------------------------------------------------------------------------------
def is_state_dict(value: Any) -> bool:
    """A non-empty mapping of names to tensors (what ``module.state_dict()`` returns)."""
    import torch

    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) for k in value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def is_optimizer_state(value: Any) -> bool:
    return isinstance(value, Mapping) and "state" in value and "param_groups" in value


def numbers(values: Mapping[Any, Any], notes: list[str], where: str) -> dict[str, float]:
    """The entries of ``values`` that are numbers (or 1-element tensors), as floats; notes the rest."""
    import torch

    out: dict[str, float] = {}
    for k, v in values.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(k, str) and k:
            out[k] = float(v)
        else:
            notes.append(f"metric {k!r} in {where} is not a number; not recorded")
    return out


def unwrapped(sd: dict[str, Any]) -> dict[str, Any]:
    """``sd`` without the DDP or torch.compile prefix that every one of its names carries."""
    for prefix in WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata header of a safetensors file; CheckpointFormatError when damaged."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, metadata  # noqa: SIM118  (no __iter__)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointFormatError(f"{path} is not a readable safetensors file ({exc})") from exc


__all__ = [
    "FORMATS",
    "FORMATS_HELP",
    "ImportFormat",
    "ROLE_KEYS",
    "Source",
    "is_optimizer_state",
    "is_state_dict",
    "load_safetensors",
    "load_torch",
    "numbers",
    "resolve_source",
    "sniff",
    "unwrapped",
]
