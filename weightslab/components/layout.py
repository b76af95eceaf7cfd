"""Where things live under a checkpoint root (on-disk format version 1).

Pure path arithmetic: nothing here touches the disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from weightslab.errors import InvalidNameError
from weightslab.names import validate_hash

CHECKPOINT_FORMAT = "weightslab.checkpoint/1"
MANIFEST_FORMAT = "weightslab.manifest/1"

_STEP_FILE_RE = re.compile(r"^(?P<hash>[0-9a-f]{16})_step_(?P<step>\d{6,})\.pt$")
TMP_MARKER = ".tmp-"


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

    @property
    def architecture_pickle(self) -> Path:
        return self.model_dir / f"{self.exp_hash}_architecture.pkl"

    @property
    def architecture_text(self) -> Path:
        return self.model_dir / f"{self.exp_hash}_architecture.txt"

    @property
    def config_yaml(self) -> Path:
        return self.hp_dir / f"{self.exp_hash}_config.yaml"

    def relative(self, path: Path) -> str:
        """``path`` relative to the experiment directory, with forward slashes (as stored in manifests)."""
        return path.relative_to(self.dir).as_posix()

    def resolve(self, relative: str) -> Path:
        """The inverse of :meth:`relative`; refuses anything that would leave the experiment directory."""
        parts = relative.split("/")
        if relative.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in relative:
            raise InvalidNameError(relative, "a manifest file path must stay inside its experiment directory")
        return self.dir.joinpath(*parts)
