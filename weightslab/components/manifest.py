"""The typed, versioned commit record of one experiment (``manifest.json``).

A checkpoint exists when, and only when, its entry is in the manifest. The manifest is always
replaced atomically, so a reader sees the old or the new one, never a mix.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from weightslab.components.layout import MANIFEST_FORMAT, validate_hash
from weightslab.errors import ManifestError


@dataclass(frozen=True)
class ParentRef:
    """Where an experiment branched from: the parent's hash, the step it branched at, and why."""

    exp_hash: str
    step: int | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"exp_hash": self.exp_hash, "step": self.step, "reason": self.reason}


@dataclass(frozen=True)
class PendingReplacement:
    """A replacement of a committed step file that is under way (the file may hold either version)."""

    bytes: int
    xxh3_128: str


@dataclass(frozen=True)
class CheckpointEntry:
    """One committed checkpoint."""

    step: int
    file: str
    bytes: int
    xxh3_128: str
    created: float
    trigger: str
    metrics: dict[str, float | None] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    description: str = ""
    pending: PendingReplacement | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "step": self.step,
            "file": self.file,
            "bytes": self.bytes,
            "xxh3_128": self.xxh3_128,
            "created": self.created,
            "trigger": self.trigger,
            "metrics": dict(self.metrics),
            "tags": list(self.tags),
            "description": self.description,
        }
        if self.pending is not None:
            d["pending"] = asdict(self.pending)
        return d

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        if value is None or not math.isfinite(value):
            return None
        return value


@dataclass
class Manifest:
    """The manifest of one experiment directory."""

    exp_hash: str
    architecture_hash: str
    hyperparams_hash: str
    created: float
    parent: ParentRef | None = None
    retention: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[CheckpointEntry] = field(default_factory=list)
    format: str = MANIFEST_FORMAT

    def entry(self, step: int) -> CheckpointEntry | None:
        for e in self.checkpoints:
            if e.step == step:
                return e
        return None

    def steps(self) -> list[int]:
        return [e.step for e in self.checkpoints]

    def latest(self) -> CheckpointEntry | None:
        return max(self.checkpoints, key=lambda e: e.step, default=None)

    def with_entry(self, entry: CheckpointEntry) -> Manifest:
        """A copy in which ``entry`` replaces any entry of the same step; entries stay sorted by step."""
        kept = [e for e in self.checkpoints if e.step != entry.step]
        kept.append(entry)
        kept.sort(key=lambda e: e.step)
        return self._copy(kept)

    def without_steps(self, steps: set[int]) -> Manifest:
        return self._copy([e for e in self.checkpoints if e.step not in steps])

    def _copy(self, checkpoints: list[CheckpointEntry]) -> Manifest:
        return Manifest(
            exp_hash=self.exp_hash,
            architecture_hash=self.architecture_hash,
            hyperparams_hash=self.hyperparams_hash,
            created=self.created,
            parent=self.parent,
            retention=dict(self.retention),
            checkpoints=checkpoints,
            format=self.format,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "exp_hash": self.exp_hash,
            "parent": None if self.parent is None else self.parent.to_dict(),
            "architecture_hash": self.architecture_hash,
            "hyperparams_hash": self.hyperparams_hash,
            "created": self.created,
            "retention": dict(self.retention),
            "checkpoints": [e.to_dict() for e in self.checkpoints],
        }

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, path: Path | str = "manifest.json") -> Manifest:
        """Parse and validate; raises ManifestError naming ``path`` and what is wrong."""
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(path, f"not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise ManifestError(path, f"expected a JSON object, got {type(raw).__name__}")
        fmt = raw.get("format")
        if fmt != MANIFEST_FORMAT:
            raise ManifestError(
                path, f"format is {fmt!r}, this version of weightslab reads {MANIFEST_FORMAT!r}"
            )
        try:
            exp_hash = validate_hash(raw["exp_hash"])
            parent_raw = raw.get("parent")
            parent = None
            if parent_raw is not None:
                parent = ParentRef(
                    exp_hash=validate_hash(parent_raw["exp_hash"]),
                    step=None if parent_raw.get("step") is None else int(parent_raw["step"]),
                    reason=str(parent_raw.get("reason", "")),
                )
            entries = [_entry_from_dict(e) for e in raw["checkpoints"]]
            return cls(
                exp_hash=exp_hash,
                architecture_hash=str(raw["architecture_hash"]),
                hyperparams_hash=str(raw["hyperparams_hash"]),
                created=float(raw["created"]),
                parent=parent,
                retention=dict(raw.get("retention") or {}),
                checkpoints=sorted(entries, key=lambda e: e.step),
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(path, f"missing or malformed field ({type(exc).__name__}: {exc})") from exc


def _entry_from_dict(e: dict[str, Any]) -> CheckpointEntry:
    pending = e.get("pending")
    return CheckpointEntry(
        step=int(e["step"]),
        file=str(e["file"]),
        bytes=int(e["bytes"]),
        xxh3_128=str(e["xxh3_128"]),
        created=float(e["created"]),
        trigger=str(e["trigger"]),
        metrics={str(k): (None if v is None else float(v)) for k, v in (e.get("metrics") or {}).items()},
        tags=tuple(str(t) for t in e.get("tags") or ()),
        description=str(e.get("description") or ""),
        pending=None if not pending else PendingReplacement(int(pending["bytes"]), str(pending["xxh3_128"])),
    )


def read_manifest(path: Path) -> Manifest:
    """Read and validate one manifest file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ManifestError(path, "file not found") from exc
    return Manifest.from_json(data, path)
