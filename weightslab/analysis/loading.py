"""Opening torch files safely, with ``torch.load(..., weights_only=True, mmap=True)`` and clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from weightslab.errors import CheckpointFormatError, CheckpointNotFoundError


def load_torch_file(path: str | Path, *, what: str = "checkpoint") -> Any:
    """Open a ``torch.save`` file without executing code from it and without reading it into memory.

    Tensors come back memory-mapped on the CPU: their bytes are read when they are used.

    Args:
        what: how the file is named in error messages (``"optimizer checkpoint"``).

    Raises:
        CheckpointNotFoundError: ``path`` is not a file.
        CheckpointFormatError: the file is not a zip-format torch file, is damaged, or holds objects
            that only a code-executing unpickler could rebuild.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{what} {path} does not exist or is not a file; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
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
