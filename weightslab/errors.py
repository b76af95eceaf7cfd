"""Every exception weightslab raises, in one place.

Each subclasses :class:`WeightslabError` and, where it helps callers, the matching built-in
(``ValueError``, ``TypeError``, ``FileNotFoundError``), and carries the data a handler needs.
Messages say what was wrong and what to do next.
"""

from __future__ import annotations

from pathlib import Path


class WeightslabError(Exception):
    """Base class of every weightslab error."""


class ConfigError(WeightslabError, ValueError):
    """A configuration value or combination is invalid."""


class InvalidNameError(WeightslabError, ValueError):
    """A name that would be used as a key or in a path is not allowed."""

    def __init__(self, name: object, reason: str) -> None:
        self.name = name
        super().__init__(
            f"invalid name {name!r}: {reason}; use a non-empty name of letters, digits, '_', '-' or '.'"
        )


class HyperparamsError(WeightslabError, ValueError):
    """Hyperparameters that cannot be canonicalised, serialised or parsed."""


class CheckpointNotFoundError(WeightslabError, FileNotFoundError):
    """No committed checkpoint matches the request."""


class AnalysisSourceError(CheckpointNotFoundError):
    """An analysis source is neither a local weightslab root nor a reachable Hub repository."""


class HubUnavailableError(WeightslabError, ConnectionError):
    """The Hugging Face Hub (or the configured endpoint) could not be reached."""


class CheckpointCorruptedError(WeightslabError):
    """A step file does not match the checksum or size its manifest entry recorded."""

    def __init__(self, path: str | Path, expected: str, actual: str, detail: str = "") -> None:
        self.path = str(path)
        self.expected = expected
        self.actual = actual
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"checkpoint {self.path} is corrupted: expected xxh3_128 {expected}, found {actual}{extra}; "
            "it will not be loaded. Resume falls back to an older checkpoint; "
            "run `weightslab verify ROOT` to list every damaged file"
        )


class CheckpointFormatError(WeightslabError, ValueError):
    """A file is not a weightslab checkpoint of a format this version reads."""


class ManifestError(WeightslabError):
    """A manifest.json is missing required fields, truncated or not valid JSON."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"manifest {self.path} is invalid: {reason}; it can be rebuilt from the step files that "
            "verify with CheckpointManager(root).rebuild_manifest(exp_hash)"
        )


class RootLockedError(WeightslabError):
    """Another process (or another manager in this one) holds the root for writing."""

    def __init__(self, root: str | Path, holder: str) -> None:
        self.root = str(root)
        self.holder = holder
        super().__init__(
            f"checkpoint root {self.root} is already open for writing by {holder}; "
            "close that system first (system.close()), use another root_log_dir, "
            "or open this root read-only with CheckpointManager(root, mode='r')"
        )


class RootError(WeightslabError, ValueError):
    """The checkpoint root cannot be used (it is a file, not writable, ...)."""


class ArchitectureMismatchError(WeightslabError):
    """A registered model does not match the shapes stored in a checkpoint."""


class UntrustedLoadError(WeightslabError):
    """Loading this file would execute code from it; the caller did not pass ``trust=True``."""


class SystemConfigurationError(WeightslabError):
    """The checkpoint system is already open with another configuration, or is closed."""


class CheckpointSaveError(WeightslabError):
    """A save failed (on the training thread or in the background writer)."""

    def __init__(self, message: str, *, path: str | Path | None = None, step: int | None = None) -> None:
        self.path = None if path is None else str(path)
        self.step = step
        super().__init__(message)


class StepOrderError(WeightslabError, ValueError):
    """A step went backwards."""


class UnknownExperimentError(WeightslabError, KeyError):
    """No experiment matches a hash or hash prefix."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AmbiguousExperimentError(UnknownExperimentError):
    """A hash prefix matches more than one experiment."""


__all__ = [
    "AmbiguousExperimentError",
    "AnalysisSourceError",
    "ArchitectureMismatchError",
    "CheckpointCorruptedError",
    "CheckpointFormatError",
    "CheckpointNotFoundError",
    "CheckpointSaveError",
    "ConfigError",
    "HubUnavailableError",
    "HyperparamsError",
    "InvalidNameError",
    "ManifestError",
    "RootError",
    "RootLockedError",
    "StepOrderError",
    "SystemConfigurationError",
    "UnknownExperimentError",
    "UntrustedLoadError",
    "WeightslabError",
]
