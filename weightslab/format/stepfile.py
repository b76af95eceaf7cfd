"""Step files: serialise a state dict into torch's zip format (streaming into any writer), and load one.

The format is exactly ``torch.save``'s, so ``torch.load(path, weights_only=True)`` opens it. We drive
torch's own zip writer ourselves for one reason: to skip its per-record CRC32 (about 0.25 s per GB on
the training machine's CPU), because every step file already gets an xxh3-128 checksum computed on
the bytes as they are written, checked on every load. If a future torch moves these internals, we
fall back to plain ``torch.save`` (same format, CRC32 included).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, BinaryIO

import torch

from weightslab.errors import CheckpointFormatError, CheckpointNotFoundError
from weightslab.format.layout import CHECKPOINT_FORMAT

try:  # private in torch; guarded so that weightslab keeps working if it moves
    from torch.serialization import DEFAULT_PROTOCOL, _get_storage_alignment, _save

    _FileWriter: Any = torch._C.PyTorchFileWriter
    _FAST = True
except (ImportError, AttributeError):  # pragma: no cover - depends on the torch version
    _FAST = False


def save_state(obj: Any, writer: BinaryIO) -> None:
    """``torch.save(obj, writer)`` without torch's CRC32 records (the caller checksums the stream)."""
    if _FAST:
        try:
            zip_writer = _FileWriter(writer, False, _get_storage_alignment())
        except TypeError:  # pragma: no cover - constructor changed
            pass
        else:
            _save(obj, zip_writer, pickle, DEFAULT_PROTOCOL, False)
            zip_writer.write_end_of_file()
            writer.flush()
            return
    torch.save(obj, writer)  # pragma: no cover - fallback


def load_step_file(path: Path, *, map_location: Any = "cpu", mmap: bool = True) -> dict[str, Any]:
    """Open a step file with ``weights_only=True`` (no code runs) and check its format field."""
    try:
        data = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError as exc:
        raise CheckpointNotFoundError(
            f"{path} is gone (a writer's retention may have removed it while it was read); "
            "list the checkpoints again and load a newer one"
        ) from exc
    except Exception as exc:
        raise CheckpointFormatError(
            f"{path} cannot be read as a weightslab checkpoint ({type(exc).__name__}: {exc}); "
            "it may come from another tool or need trust to unpickle: open it yourself with torch.load"
        ) from exc
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointFormatError(
            f"{path} is not a {CHECKPOINT_FORMAT} step file (format field: {fmt!r}); "
            "weightslab reads only its own step files"
        )
    return data
