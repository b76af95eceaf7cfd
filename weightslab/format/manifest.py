"""The typed, versioned commit record of one experiment (``manifest.json``).

A checkpoint exists when, and only when, its entry is in the manifest. The manifest is always
replaced atomically, so a reader sees the old or the new one, never a mix.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from weightslab.errors import ManifestError
from weightslab.format.layout import MANIFEST_FORMAT
from weightslab.storage.base import Storage
from weightslab.storage.local import LocalStorage
from weightslab.util.names import validate_hash


@dataclass(frozen=True)
class ParentRef:
    """Where an experiment branched from.

    ``step`` is the branch point: the step at which the change was recorded, which is the new
    experiment's first checkpoint. ``checkpoint`` is the parent's newest committed checkpoint at that
    moment (the state the branch continued from), or None when the parent had none yet.
    """

    exp_hash: str
    step: int | None
    reason: str
    checkpoint: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "exp_hash": self.exp_hash,
            "step": self.step,
            "reason": self.reason,
            "checkpoint": self.checkpoint,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ParentRef:
        step = None if raw.get("step") is None else int(raw["step"])
        # Manifests written before the branch point was recorded kept the parent's checkpoint in `step`.
        checkpoint = raw.get("checkpoint", step)
        return cls(
            exp_hash=validate_hash(raw["exp_hash"]),
            step=step,
            reason=str(raw.get("reason", "")),
            checkpoint=None if checkpoint is None else int(checkpoint),
        )


@dataclass(frozen=True)
class FileRecord:
    """A file of the experiment other than a step file, with its size and checksum."""

    file: str
    bytes: int
    xxh3_128: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "bytes": self.bytes, "xxh3_128": self.xxh3_128}


@dataclass(frozen=True)
class PendingReplacement:
    """A replacement of a committed step file that is under way (the file may hold either version)."""

    bytes: int
    xxh3_128: str


@dataclass(frozen=True)
class CheckpointEntry:
    """One committed checkpoint.

    ``seq`` is the commit order within the experiment: "latest", ``keep_last`` and the protection of
    the newest follow it, not the step number. ``abandoned`` marks a checkpoint of a future the run
    went back from (a resume of an earlier step, a step counter that restarted): it is never resumed
    as "latest" and ages out like any older checkpoint.
    """

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
    seq: int = 0
    abandoned: bool = False
    # a sharded checkpoint (written through torch.distributed.checkpoint by every rank): ``file`` is
    # its folder, these are all its files, and ``bytes``/``xxh3_128`` cover them all
    shards: tuple[FileRecord, ...] = ()

    @property
    def sharded(self) -> bool:
        return bool(self.shards)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "step": self.step,
            "seq": self.seq,
            "file": self.file,
            "bytes": self.bytes,
            "xxh3_128": self.xxh3_128,
            "created": self.created,
            "trigger": self.trigger,
            "metrics": dict(self.metrics),
            "tags": list(self.tags),
            "description": self.description,
        }
        if self.abandoned:
            d["abandoned"] = True
        if self.pending is not None:
            d["pending"] = asdict(self.pending)
        if self.shards:
            d["shards"] = [r.to_dict() for r in self.shards]
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
    architecture: FileRecord | None = None  # the architecture pickle, checked before it is unpickled

    def entry(self, step: int) -> CheckpointEntry | None:
        for e in self.checkpoints:
            if e.step == step:
                return e
        return None

    def steps(self) -> list[int]:
        return [e.step for e in self.checkpoints]

    def latest(self) -> CheckpointEntry | None:
        """The newest checkpoint of the live run: the last committed one that is not abandoned."""
        return max(self.live(), key=lambda e: e.seq, default=None)

    def live(self) -> list[CheckpointEntry]:
        """The checkpoints of the live run, in commit order."""
        return sorted((e for e in self.checkpoints if not e.abandoned), key=lambda e: e.seq)

    def in_commit_order(self) -> list[CheckpointEntry]:
        """Every checkpoint, oldest first: abandoned ones before the live run, each in commit order."""
        return sorted(self.checkpoints, key=commit_order)

    def next_seq(self) -> int:
        return max((e.seq for e in self.checkpoints), default=0) + 1

    def abandoned_after(self, step: int) -> list[int]:
        """Steps of the live run after ``step``: what going back to ``step`` abandons."""
        return sorted(e.step for e in self.checkpoints if not e.abandoned and e.step > step)

    def with_entry(self, entry: CheckpointEntry) -> Manifest:
        """A copy in which ``entry`` replaces any entry of the same step; entries stay sorted by step."""
        kept = [e for e in self.checkpoints if e.step != entry.step]
        kept.append(entry)
        kept.sort(key=lambda e: e.step)
        return self._copy(kept)

    def committing(self, entry: CheckpointEntry) -> Manifest:
        """:meth:`with_entry` for a new commit: ``entry`` gets the next ``seq``, and live checkpoints at
        later steps are marked abandoned (they belong to a future the run went back from)."""
        later = set(self.abandoned_after(entry.step))
        return self.with_abandoned(later).with_entry(replace(entry, seq=self.next_seq(), abandoned=False))

    def with_abandoned(self, steps: set[int]) -> Manifest:
        """A copy in which the entries of ``steps`` are marked abandoned."""
        return self._copy([replace(e, abandoned=True) if e.step in steps else e for e in self.checkpoints])

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
            architecture=self.architecture,
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
            "architecture": None if self.architecture is None else self.architecture.to_dict(),
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
                parent = ParentRef.from_dict(parent_raw)
            entries = [_entry_from_dict(e) for e in raw["checkpoints"]]
            if any("seq" not in e for e in raw["checkpoints"]):
                # written before commit order was recorded: the step order is the best record there is
                entries = [replace(e, seq=i + 1) for i, e in enumerate(sorted(entries, key=lambda e: e.step))]
            return cls(
                exp_hash=exp_hash,
                architecture_hash=str(raw["architecture_hash"]),
                hyperparams_hash=str(raw["hyperparams_hash"]),
                created=float(raw["created"]),
                parent=parent,
                retention=dict(raw.get("retention") or {}),
                checkpoints=sorted(entries, key=lambda e: e.step),
                architecture=_file_record(raw.get("architecture")),
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
        seq=int(e.get("seq", 0)),
        abandoned=bool(e.get("abandoned", False)),
        shards=tuple(r for raw in e.get("shards") or () if (r := _file_record(raw)) is not None),
    )


def _file_record(raw: Any) -> FileRecord | None:
    if raw is None:
        return None
    return FileRecord(file=str(raw["file"]), bytes=int(raw["bytes"]), xxh3_128=str(raw["xxh3_128"]))


def commit_order(entry: CheckpointEntry) -> tuple[bool, int, int]:
    """Sort key: abandoned checkpoints first, then the live run, each in commit order."""
    return (not entry.abandoned, entry.seq, entry.step)


def read_manifest(path: Path, storage: Storage | None = None) -> Manifest:
    """Read and validate one manifest file (through ``storage``, a local one by default)."""
    storage = storage if storage is not None else LocalStorage(durable=False)
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError as exc:
        raise ManifestError(path, "file not found") from exc
    return Manifest.from_json(data, path)
