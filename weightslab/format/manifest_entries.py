"""The records inside a manifest: checkpoint entries, the parent reference, file records.

:mod:`weightslab.format.manifest` holds the manifest that lists them (and re-exports these names).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

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
class BlockDigests:
    """The digest of every block of a step file, so that a reader can check its blocks on all cores.

    ``xxh3_128_hi64[i]`` is the high 64 bits (the first 16 hex digits) of the xxh3-128 of bytes ``i * block_bytes`` up to the
    next block; the last block may be shorter. ``of`` is the file's own xxh3-128 when they were
    computed: an entry whose file digest differs (a copy re-encoded, a replacement) does not use them.
    """

    block_bytes: int
    of: str
    xxh3_128_hi64: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"bytes": self.block_bytes, "of": self.of, "xxh3_128_hi64": list(self.xxh3_128_hi64)}

    def cover(self, size: int, xxh3_128: str) -> bool:
        """Whether these are the blocks of a file of ``size`` bytes whose xxh3-128 is ``xxh3_128``."""
        return (
            self.of == xxh3_128
            and self.block_bytes > 0
            and len(self.xxh3_128_hi64) == -(-size // self.block_bytes)
        )


def _block_digests(raw: Any) -> BlockDigests | None:
    if not raw:
        return None
    return BlockDigests(int(raw["bytes"]), str(raw["of"]), tuple(str(d) for d in raw["xxh3_128_hi64"]))


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
    # the digests of the step file's blocks (files of two blocks or more), checked in parallel
    blocks: BlockDigests | None = None

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
        if self.blocks is not None:
            d["blocks"] = self.blocks.to_dict()
        return d

    def usable_blocks(self) -> BlockDigests | None:
        """The block digests that describe this entry's one step file now, or None (then the whole
        file's digest is checked): none recorded, a replacement under way, or blocks of other bytes."""
        blocks = self.blocks
        if blocks is None or self.pending is not None or self.shards:
            return None
        return blocks if blocks.cover(self.bytes, self.xxh3_128) else None

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        if value is None or not math.isfinite(value):
            return None
        return value


def entry_from_dict(e: dict[str, Any]) -> CheckpointEntry:
    """A :class:`CheckpointEntry` from its dict; fields it does not know are ignored."""
    return _entry_from_dict(e)


def _entry_from_dict(e: dict[str, Any]) -> CheckpointEntry:
    # A manifest of 10,000 checkpoints builds 10,000 entries on every read (`weightslab ls`), and a
    # frozen dataclass's __init__ sets each of its 14 fields through object.__setattr__. The entry is
    # built here with the same conversions (and the same errors for a malformed field), its fields
    # set at once; it is equal to, and behaves as, one made by the constructor.
    pending = e.get("pending")
    metrics = e.get("metrics")
    tags = e.get("tags")
    shards = e.get("shards")
    entry = _new_entry(CheckpointEntry)
    entry.__dict__.update(
        step=int(e["step"]),
        file=str(e["file"]),
        bytes=int(e["bytes"]),
        xxh3_128=str(e["xxh3_128"]),
        created=float(e["created"]),
        trigger=str(e["trigger"]),
        metrics={str(k): (None if v is None else float(v)) for k, v in metrics.items()} if metrics else {},
        tags=tuple(str(t) for t in tags) if tags else (),
        description=str(e.get("description") or ""),
        pending=None if not pending else PendingReplacement(int(pending["bytes"]), str(pending["xxh3_128"])),
        seq=int(e.get("seq", 0)),
        abandoned=bool(e.get("abandoned", False)),
        shards=tuple(r for raw in shards if (r := _file_record(raw)) is not None) if shards else (),
        blocks=_block_digests(e.get("blocks")),
    )
    return entry


_new_entry = object.__new__


def _file_record(raw: Any) -> FileRecord | None:
    if raw is None:
        return None
    return FileRecord(file=str(raw["file"]), bytes=int(raw["bytes"]), xxh3_128=str(raw["xxh3_128"]))


def commit_order(entry: CheckpointEntry) -> tuple[bool, int, int]:
    """Sort key: abandoned checkpoints first, then the live run, each in commit order."""
    return (not entry.abandoned, entry.seq, entry.step)
