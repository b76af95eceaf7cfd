"""Step files: serialise a state dict into torch's zip format (streaming into any writer), and load one.

The format is exactly ``torch.save``'s, so ``torch.load(path, weights_only=True)`` opens it.
:func:`load_torch_file` is the package's safe ``torch.load``: step files and the files an analysis
reads (optimizer states, weights) all open through it, with no code run and clear errors.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from weightslab.errors import CheckpointFormatError, CheckpointNotFoundError, WeightslabError
from weightslab.format import blobs
from weightslab.format.layout import CHECKPOINT_FORMAT
from weightslab.storage.base import Storage
from weightslab.storage.local import LocalStorage

try:  # private in torch; guarded so that weightslab keeps working if it moves
    from torch.serialization import DEFAULT_PROTOCOL, _get_storage_alignment
    from torch.serialization import _save as _torch_save

    _FileWriter: Any = torch._C.PyTorchFileWriter
    # torch leaves _save unannotated: (obj, zip_writer, pickle_module, pickle_protocol, _disable_byteorder_record)
    _save: Callable[[Any, Any, Any, int, bool], None] = _torch_save
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


def load_torch_file(
    path: str | Path, *, what: str = "checkpoint", map_location: Any = "cpu", mmap: bool = True
) -> Any:
    """Open a ``torch.save`` file without executing code from it (``weights_only=True``).

    With ``mmap`` (the default) tensors come back memory-mapped: their bytes are read when they are used.

    Args:
        what: how the file is named in error messages (``"optimizer checkpoint"``).

    Raises:
        CheckpointNotFoundError: ``path`` is not a file.
        CheckpointFormatError: the file is not a zip-format torch file, is damaged, or holds objects
            that only a code-executing unpickler could rebuild.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise CheckpointNotFoundError(
            f"{what} {path} does not exist or is not a file; check the path"
        ) from exc
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise CheckpointFormatError(
            f"{what} {path} cannot be opened safely: torch.load(weights_only=True) refused it ({reason}). "
            "weightslab never executes code from a checkpoint; re-save it holding only tensors, numbers, "
            "strings, lists and dicts (for example the optimizer's state_dict())"
        ) from exc
    except RuntimeError as exc:
        if "mmap can only be used" in str(exc):
            raise CheckpointFormatError(
                f"{what} {path} is not a zip-format torch file (it is a legacy torch.save file, or not a "
                "torch file at all), so it cannot be memory-mapped; re-save it with torch.save(obj, path) "
                "from torch >= 1.6"
            ) from exc
        reason = (
            str(exc).strip().split(". ")[0]
        )  # torch appends paragraphs of advice; the first sentence says it
        raise CheckpointFormatError(
            f"{what} {path} could not be read ({reason}); the file may be truncated or damaged: download "
            "or copy it again"
        ) from exc
    except (EOFError, ValueError) as exc:
        raise CheckpointFormatError(
            f"{what} {path} could not be read ({type(exc).__name__}: {exc}); the file may be truncated or "
            "damaged: download or copy it again"
        ) from exc


def load_step_file(
    path: Path,
    *,
    map_location: Any = "cpu",
    mmap: bool = True,
    storage: Storage | None = None,
    verify_blobs: bool = False,
) -> dict[str, Any]:
    """Open a step file with ``weights_only=True`` (no code runs) and check its format field.

    With a ``storage``, the file is opened where that storage keeps a local copy of it. The blob
    references of a ``storage="dedup"`` step file are resolved into tensors (memory-mapped with
    ``mmap``), so the caller sees an ordinary step dict; ``verify_blobs`` also checks each blob's
    xxh3-128 (CheckpointCorruptedError naming the blob when one differs or is gone).
    """
    local = path if storage is None else storage.local_file(path)
    try:
        data = load_torch_file(local, what="step file", map_location=map_location, mmap=mmap)
    except Exception as exc:
        # A step file is named in the words of the root that lists it: what torch said, not the
        # advice load_torch_file gives for files from elsewhere.
        cause = exc.__cause__ if isinstance(exc, WeightslabError) and exc.__cause__ is not None else exc
        if isinstance(cause, FileNotFoundError):
            raise CheckpointNotFoundError(
                f"{path} is gone (a writer's retention may have removed it while it was read); "
                "list the checkpoints again and load a newer one"
            ) from cause
        raise CheckpointFormatError(
            f"{path} cannot be read as a weightslab checkpoint ({type(cause).__name__}: {cause}); "
            "it may come from another tool or need trust to unpickle: open it yourself with torch.load"
        ) from cause
    fmt = data.get("format") if isinstance(data, dict) else None
    if not isinstance(data, dict) or fmt != CHECKPOINT_FORMAT:
        raise CheckpointFormatError(
            f"{path} is not a {CHECKPOINT_FORMAT} step file (format field: {fmt!r}); "
            "weightslab reads only its own step files"
        )
    if blobs.REFS_KEY in data:
        data = blobs.resolve_references(
            data,
            storage if storage is not None else LocalStorage(),
            path,
            mmap=mmap,
            map_location=map_location,
            verify=verify_blobs,
        )
    return data
