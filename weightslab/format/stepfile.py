"""Step files: serialise a state dict into torch's zip format (streaming into any writer), and load one.

The format is exactly ``torch.save``'s, so ``torch.load(path, weights_only=True)`` opens it.

Why private torch internals: we drive torch's own zip writer (``torch._C.PyTorchFileWriter`` and
``torch.serialization._save``) ourselves for one reason, to switch off its per-record CRC32. Every
step file already gets an xxh3-128 checksum computed on the bytes as they are written and checked
on every load, so the CRC32 protects nothing more and would only be a second pass over every byte
on the training machine's CPU. If a future torch moves these internals, :data:`FAST_PATH` is
False and :func:`save_state` falls back to plain ``torch.save`` (same format, CRC32 included);
``tests/test_saving.py`` forces that path and checks the file still loads and verifies.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, BinaryIO

import torch

from weightslab.errors import CheckpointFormatError, CheckpointNotFoundError
from weightslab.format.layout import CHECKPOINT_FORMAT
from weightslab.storage.base import Storage

try:  # private in torch; guarded so that weightslab keeps working if it moves
    from torch.serialization import DEFAULT_PROTOCOL, _get_storage_alignment, _save

    _FileWriter: Any = torch._C.PyTorchFileWriter
    FAST_PATH = True
    """Whether :func:`save_state` drives torch's zip writer itself (CRC32 off); False: ``torch.save``."""
except (ImportError, AttributeError):  # pragma: no cover - depends on the torch version
    FAST_PATH = False


def save_state(obj: Any, writer: BinaryIO) -> None:
    """``torch.save(obj, writer)`` without torch's CRC32 records (the caller checksums the stream)."""
    if FAST_PATH:
        try:
            zip_writer = _FileWriter(writer, False, _get_storage_alignment())
        except TypeError:  # pragma: no cover - constructor changed
            pass
        else:
            _save(obj, zip_writer, pickle, DEFAULT_PROTOCOL, False)
            zip_writer.write_end_of_file()
            writer.flush()
            return
    torch.save(obj, writer)


def load_step_file(
    path: Path, *, map_location: Any = "cpu", mmap: bool = True, storage: Storage | None = None
) -> dict[str, Any]:
    """Open a step file with ``weights_only=True`` (no code runs) and check its format field.

    With a ``storage``, the file is opened where that storage keeps a local copy of it.
    """
    local = path if storage is None else storage.local_file(path)
    try:
        data = torch.load(local, map_location=map_location, weights_only=True, mmap=mmap)
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
