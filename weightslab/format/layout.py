"""Where things live under a checkpoint root (on-disk format version 1).

Path arithmetic. Only :meth:`ExperimentLayout.resolve` and :meth:`ExperimentLayout.escaping_folders`
look at the disk, to resolve symlinks: a root received from elsewhere must not lead a read or a
delete out of its experiment folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from weightslab.errors import UnsafePathError
from weightslab.storage.base import TMP_MARKER
from weightslab.util.names import validate_hash

CHECKPOINT_FORMAT = "weightslab.checkpoint/1"
MANIFEST_FORMAT = "weightslab.manifest/1"
MANIFEST_LOGGED_FORMAT = "weightslab.manifest/2"
"""A manifest that is the base of a commit log: ``log_generation`` names the log that continues it."""

__all__ = [
    "CHECKPOINT_FORMAT",
    "MANIFEST_FORMAT",
    "MANIFEST_LOGGED_FORMAT",
    "TMP_MARKER",
    "ExperimentLayout",
    "RootLayout",
    "parse_manifest_log",
    "parse_shard_dir",
    "parse_step_file",
]

_STEP_FILE_RE = re.compile(r"^(?P<hash>[0-9a-f]{16})_step_(?P<step>\d{6,})\.pt$")


_SHARD_DIR_RE = re.compile(r"^(?P<hash>[0-9a-f]{16})_step_(?P<step>\d{6,})$")
SHARD_FILE_RE = re.compile(r"^(state\.pt|\.metadata|__\d+_\d+\.distcp)$")
"""The files of a sharded checkpoint's folder: DCP's shards and metadata, and the rest of the state."""
SHARD_STATE = "state.pt"
"""What a sharded checkpoint holds besides the DCP tensors (written by rank 0, a step dict)."""


_MANIFEST_LOG_RE = re.compile(r"^manifest\.(?P<generation>\d{6,})\.jsonl$")


def parse_manifest_log(name: str) -> int | None:
    """``manifest.{generation:06d}.jsonl`` (a manifest's commit log) -> its generation, else None."""
    m = _MANIFEST_LOG_RE.match(name)
    return int(m["generation"]) if m else None


def parse_shard_dir(name: str) -> tuple[str, int] | None:
    """``{hash}_step_{step:06d}`` (a sharded checkpoint's folder) -> (hash, step), anything else -> None."""
    m = _SHARD_DIR_RE.match(name)
    return (m["hash"], int(m["step"])) if m else None


def parse_step_file(name: str) -> tuple[str, int] | None:
    """``{hash}_step_{step:06d}.pt`` -> (hash, step), anything else -> None."""
    m = _STEP_FILE_RE.match(name)
    return (m["hash"], int(m["step"])) if m else None


@dataclass(frozen=True)
class RootLayout:
    """The paths of one checkpoint root."""

    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def events_file(self) -> Path:
        return self.logs_dir / "events.jsonl"

    @property
    def lock_file(self) -> Path:
        return self.logs_dir / "writer.lock"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    def experiment(self, exp_hash: str) -> ExperimentLayout:
        return ExperimentLayout(self.checkpoints_dir / validate_hash(exp_hash), exp_hash)


@dataclass(frozen=True)
class ExperimentLayout:
    """The paths of one experiment directory ``checkpoints/{exp_hash}``."""

    dir: Path
    exp_hash: str

    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.json"

    def manifest_log(self, generation: int) -> Path:
        """The commit log that continues the manifest whose ``log_generation`` is ``generation``."""
        return self.dir / f"manifest.{generation:06d}.jsonl"

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    @property
    def hp_dir(self) -> Path:
        return self.dir / "hp"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def step_file_name(self, step: int) -> str:
        return f"{self.exp_hash}_step_{step:06d}.pt"

    def step_file(self, step: int) -> Path:
        return self.model_dir / self.step_file_name(step)

    def shard_dir(self, step: int) -> Path:
        """The folder of the sharded checkpoint of ``step``: ``model/{hash}_step_{step:06d}/``."""
        return self.model_dir / f"{self.exp_hash}_step_{step:06d}"

    @property
    def architecture_pickle(self) -> Path:
        return self.model_dir / f"{self.exp_hash}_architecture.pkl"

    @property
    def architecture_text(self) -> Path:
        return self.model_dir / f"{self.exp_hash}_architecture.txt"

    @property
    def architecture_json(self) -> Path:
        return self.model_dir / f"{self.exp_hash}_architecture.json"

    @property
    def config_yaml(self) -> Path:
        return self.hp_dir / f"{self.exp_hash}_config.yaml"

    def relative(self, path: Path) -> str:
        """``path`` relative to the experiment directory, with forward slashes (as stored in manifests)."""
        return path.relative_to(self.dir).as_posix()

    def resolve(self, relative: str) -> Path:
        """The step file a manifest entry's ``file`` names (the inverse of :meth:`relative`).

        Refuses, with UnsafePathError (an InvalidNameError) naming the entry, anything but a step file
        of this experiment, ``model/{hash}_step_{step}.pt``, that is really in this experiment's model
        folder: ``..`` and absolute paths, the manifest, config and architecture files, and a path that
        a symlink (the file's or a folder's) leads elsewhere. Every read and every delete of a
        checkpoint goes through here, so a hand-edited root cannot make them touch another file.
        """
        if not isinstance(relative, str):
            raise UnsafePathError(relative, "a manifest file path must be a string", where=self.manifest)
        parts = relative.split("/")
        if relative.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in relative:
            raise UnsafePathError(
                relative,
                "a manifest file path must stay inside its experiment directory",
                where=self.manifest,
            )
        path = self.dir.joinpath(*parts)
        # real paths, symlinks resolved on both sides (a root under a symlinked /tmp is fine)
        real = Path(os.path.realpath(path))
        home = Path(os.path.realpath(self.dir))
        if not real.is_relative_to(home):
            raise UnsafePathError(
                relative,
                f"a symlink leads it to {real}, outside the experiment folder {self.dir}",
                where=self.manifest,
            )
        if len(parts) == 3 and parts[0] == "model":  # a file of a sharded checkpoint's folder
            parsed = parse_shard_dir(parts[1]) if SHARD_FILE_RE.match(parts[2]) else None
        elif len(parts) == 2 and parts[0] == "model":
            parsed = parse_step_file(parts[1]) or parse_shard_dir(parts[1])
        else:
            parsed = None
        if parsed is None or parsed[0] != self.exp_hash:
            raise UnsafePathError(
                relative,
                f"only a step file model/{self.exp_hash}_step_<step>.pt (or a sharded checkpoint's folder "
                f"model/{self.exp_hash}_step_<step>/ and its files) may be a checkpoint's file, "
                f"this names {self._what(path)}",
                where=self.manifest,
            )
        if real != home.joinpath(*parts):
            raise UnsafePathError(
                relative,
                f"a symlink leads it to {real}; a step file must be a real file in {self.model_dir}",
                where=self.manifest,
            )
        return path

    def escaping_folders(self) -> dict[Path, Path]:
        """The model and hp folders that a symlink leads out of this experiment folder: {folder: real path}.

        Crash-leftover cleaning deletes files in these folders, so a writer must not open a root where
        one leads elsewhere. The data folder is not checked: weightslab never deletes in it.
        """
        home = Path(os.path.realpath(self.dir))
        out: dict[Path, Path] = {}
        for folder in (self.model_dir, self.hp_dir):
            real = Path(os.path.realpath(folder))
            if real != home / folder.name:
                out[folder] = real
        return out

    def _what(self, path: Path) -> str:
        """What a refused entry points at, for the error message."""
        known = {
            self.manifest: "the manifest itself",
            self.config_yaml: "the config YAML",
            self.architecture_pickle: "the architecture pickle",
            self.architecture_text: "the architecture text",
            self.architecture_json: "the architecture summary",
        }
        return known.get(path, f"a file that is not a step file of experiment {self.exp_hash}")
