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


class ProtectedCheckpointError(ConfigError):
    """A checkpoint that retention keeps (the newest, a best, a branch point) cannot be deleted."""


class ImportConflictError(WeightslabError, FileExistsError):
    """An import would put another checkpoint at a step the experiment already holds (or before its newest)."""


class InvalidNameError(WeightslabError, ValueError):
    """A name that would be used as a key or in a path is not allowed."""

    def __init__(self, name: object, reason: str) -> None:
        self.name = name
        super().__init__(
            f"invalid name {name!r}: {reason}; use a non-empty name of letters, digits, '_', '-' or '.'"
        )


class HyperparamsError(WeightslabError, ValueError):
    """Hyperparameters that cannot be canonicalised, serialised or parsed."""


class ConfigFileError(HyperparamsError):
    """An experiment's ``hp/{hash}_config.yaml`` is missing, not UTF-8, not safe YAML or not a mapping."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"config file {self.path} cannot be read: {reason}; it is a record for people (resume takes "
            "the hyperparameters from the step files): restore it from a copy of the root, or delete it"
        )


class UnsafePathError(InvalidNameError):
    """A file a manifest records, or a folder of an experiment, that weightslab refuses to read or delete.

    Only real step files inside the experiment folder (``model/{hash}_step_{step}.pt``) may be a
    checkpoint's file: a path with ``..``, an absolute path, a symlink leading out of the folder, or the
    manifest, config or architecture files are refused, so that a root received from elsewhere cannot
    make ``gc`` or retention delete anything else.
    """

    def __init__(self, path: object, reason: str, *, where: str | Path | None = None) -> None:
        self.name = path
        self.path = str(path)
        self.reason = reason
        self.where = None if where is None else str(where)
        recorded = "" if where is None else f" recorded in {where}"
        WeightslabError.__init__(
            self,
            f"refused {self.path!r}{recorded}: {reason}; nothing is read or deleted through it. A training "
            "run records only real files model/<hash>_step_<step>.pt inside each experiment folder, so this "
            "root was edited or comes from elsewhere: remove that entry from the manifest (or replace the "
            "symlink with a real folder) and check the root with `weightslab verify ROOT`",
        )


class RetentionRefusedError(WeightslabError):
    """Retention kept checkpoints it should delete because their manifest entries are refused as unsafe."""

    def __init__(self, exp_hash: str, deleted: list[int], refused: dict[int, UnsafePathError]) -> None:
        self.exp_hash = exp_hash
        self.deleted = list(deleted)
        self.refused = dict(refused)
        which = "; ".join(
            f"step {step} ({exc.path!r}: {exc.reason})" for step, exc in sorted(refused.items())
        )
        done = f"it deleted steps {self.deleted}" if self.deleted else "it deleted nothing else"
        super().__init__(
            f"retention of experiment {exp_hash} refused to delete {len(refused)} checkpoint"
            f"{'s' * (len(refused) != 1)} whose manifest entry is unsafe and kept them: {which}; {done}. "
            "Remove those entries from the experiment's manifest.json, then run `weightslab verify ROOT`"
        )


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
        self.detail = detail
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"checkpoint {self.path} is corrupted: expected xxh3_128 {expected}, found {actual}{extra}; "
            "it will not be loaded. Resume falls back to an older checkpoint; "
            "run `weightslab verify ROOT` to list every damaged file"
        )


class FileChangedError(WeightslabError, OSError):
    """A file was replaced by another (a new inode at its path) while it was being read."""


class UnverifiedStateError(WeightslabError):
    """The registered objects hold state restored from a checkpoint that then failed its checksum.

    Raised by ``optimizer.step()``, saves and :meth:`wait_verified` after ``resume(verify="background")``;
    call ``resume()`` again.
    """


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


class DistributedError(WeightslabError):
    """The ranks of a distributed job disagree about a checkpoint, or one did not reach it in time.

    ``ranks`` lists the ranks that differ from rank 0 (or that never arrived).
    """

    def __init__(self, message: str, *, ranks: list[int] | None = None) -> None:
        self.ranks = list(ranks or [])
        super().__init__(message)


class UnknownExperimentError(WeightslabError, KeyError):
    """No experiment matches a hash or hash prefix."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AmbiguousExperimentError(UnknownExperimentError):
    """A hash prefix matches more than one experiment."""


class CompressedBlobError(CheckpointCorruptedError):
    """A compressed tensor blob is damaged: bad header, checksum mismatch, or a wrong decompressed length."""

    def __init__(self, reason: str, where: str | Path = "compressed tensor blob") -> None:
        self.path = str(where)
        self.expected = "a valid compressed tensor blob"
        self.actual = reason
        self.reason = reason
        WeightslabError.__init__(
            self,
            f"{self.path} is damaged: {reason}; it will not be loaded. Resume falls back to an older "
            "checkpoint; run `weightslab verify ROOT` to list every damaged file",
        )


__all__ = [
    "ImportConflictError",
    "ProtectedCheckpointError",
    "DistributedError",
    "AmbiguousExperimentError",
    "AnalysisSourceError",
    "ArchitectureMismatchError",
    "CheckpointCorruptedError",
    "CheckpointFormatError",
    "CheckpointNotFoundError",
    "CheckpointSaveError",
    "CompressedBlobError",
    "ConfigError",
    "ConfigFileError",
    "HubUnavailableError",
    "HyperparamsError",
    "InvalidNameError",
    "ManifestError",
    "RetentionRefusedError",
    "RootError",
    "RootLockedError",
    "StepOrderError",
    "SystemConfigurationError",
    "UnknownExperimentError",
    "UnsafePathError",
    "UntrustedLoadError",
    "UnverifiedStateError",
    "WeightslabError",
]
