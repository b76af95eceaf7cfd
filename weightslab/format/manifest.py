"""The typed, versioned commit record of one experiment (``manifest.json``, and its commit log).

A checkpoint exists when, and only when, its entry is in the manifest. The manifest is always
replaced atomically, so a reader sees the old or the new one, never a mix. A large manifest is the
base of an append-only commit log (:mod:`weightslab.format.manifest_log`): each change is then one
line, and the base is rewritten only when the log has grown as large as it.

Changes are copies (:meth:`Manifest.with_entry` and the other ``with_*``/``without_*`` methods): each
copy remembers the manifest it was derived from and the entries it put or removed, so a writer can
append exactly those to the log. The entries stay sorted by step, so a lookup is a bisection.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from weightslab.errors import ManifestError
from weightslab.format.layout import MANIFEST_FORMAT, MANIFEST_LOGGED_FORMAT
from weightslab.format.manifest_entries import (
    BlockDigests,
    CheckpointEntry,
    FileRecord,
    ParentRef,
    PendingReplacement,
    _entry_from_dict,
    _file_record,
    commit_order,
    entry_from_dict,
)
from weightslab.storage.base import Storage
from weightslab.storage.local import LocalStorage
from weightslab.util.names import validate_hash


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
        entries = self._sorted()
        i = bisect.bisect_left(entries, step, key=_step_of)
        return entries[i] if i < len(entries) and entries[i].step == step else None

    def steps(self) -> list[int]:
        return [e.step for e in self.checkpoints]

    def latest(self) -> CheckpointEntry | None:
        """The newest checkpoint of the live run: the last committed one that is not abandoned."""
        entries = self.checkpoints
        known = self.__dict__.get("_latest")
        if known is None or known[0] is not entries or known[1] != len(entries):
            newest = max((e for e in entries if not e.abandoned), key=_seq_of, default=None)
            known = (entries, len(entries), newest)
            self.__dict__["_latest"] = known
        return known[2]

    def live(self) -> list[CheckpointEntry]:
        """The checkpoints of the live run, in commit order."""
        return sorted((e for e in self.checkpoints if not e.abandoned), key=lambda e: e.seq)

    def in_commit_order(self) -> list[CheckpointEntry]:
        """Every checkpoint, oldest first: abandoned ones before the live run, each in commit order."""
        return sorted(self.checkpoints, key=commit_order)

    def next_seq(self) -> int:
        return self._max_seq() + 1

    def abandoned_after(self, step: int) -> list[int]:
        """Steps of the live run after ``step``: what going back to ``step`` abandons."""
        entries = self._sorted()
        start = bisect.bisect_right(entries, step, key=_step_of)
        return [e.step for e in entries[start:] if not e.abandoned]

    def with_entry(self, entry: CheckpointEntry) -> Manifest:
        """A copy in which ``entry`` replaces any entry of the same step; entries stay sorted by step."""
        entries = list(self._sorted())
        i = bisect.bisect_left(entries, entry.step, key=_step_of)
        replaced = i < len(entries) and entries[i].step == entry.step
        old = entries[i] if replaced else entry
        if replaced:
            entries[i] = entry
        else:
            entries.insert(i, entry)
        copy = self._copy(entries, puts=(entry,))
        top = self._known_top()
        if top is not None and (not replaced or old.seq < top or entry.seq >= top):
            copy._set_top(max(top, entry.seq))
        return copy

    def committing(self, entry: CheckpointEntry) -> Manifest:
        """:meth:`with_entry` for a new commit: ``entry`` gets the next ``seq``, and live checkpoints at
        later steps are marked abandoned (they belong to a future the run went back from)."""
        later = set(self.abandoned_after(entry.step))
        base = self.with_abandoned(later) if later else self
        committed = replace(entry, seq=self.next_seq(), abandoned=False)
        out = base.with_entry(committed)
        out.__dict__["_latest"] = (out.checkpoints, len(out.checkpoints), committed)  # highest seq, live
        out._set_top(committed.seq)
        return out

    def with_abandoned(self, steps: set[int]) -> Manifest:
        """A copy in which the entries of ``steps`` are marked abandoned."""
        entries = list(self._sorted())
        changed = []
        for step in steps:
            i = bisect.bisect_left(entries, step, key=_step_of)
            if i < len(entries) and entries[i].step == step and not entries[i].abandoned:
                entries[i] = replace(entries[i], abandoned=True)
                changed.append(entries[i])
        copy = self._copy(entries, puts=changed)
        top = self._known_top()
        if top is not None:
            copy._set_top(top)
        return copy

    def without_steps(self, steps: set[int]) -> Manifest:
        entries = list(self._sorted())
        removed = []
        for step in sorted(steps, reverse=True):
            i = bisect.bisect_left(entries, step, key=_step_of)
            if i < len(entries) and entries[i].step == step:
                removed.append(entries.pop(i))
        copy = self._copy(entries, deletes=[e.step for e in removed])
        top = self._known_top()
        if top is not None and all(e.seq < top for e in removed):
            copy._set_top(top)
        return copy

    def _sorted(self) -> list[CheckpointEntry]:
        """The entries sorted by step: :attr:`checkpoints` itself unless a caller built it out of order."""
        entries = self.checkpoints
        known = self.__dict__.get("_sorted_of")
        if known is None or known[0] is not entries or known[1] != len(entries):
            ordered = all(entries[i].step <= entries[i + 1].step for i in range(len(entries) - 1))
            view = entries if ordered else sorted(entries, key=_step_of)
            known = (entries, len(entries), view)
            self.__dict__["_sorted_of"] = known
        return known[2]

    def _max_seq(self) -> int:
        top = self._known_top()
        if top is None:
            top = max((e.seq for e in self.checkpoints), default=0)
            self._set_top(top)
        return top

    def _known_top(self) -> int | None:
        """The highest ``seq``, when it is known for the entries as they are now."""
        known = self.__dict__.get("_top")
        if known is None or known[0] is not self.checkpoints or known[1] != len(self.checkpoints):
            return None
        return int(known[2])

    def _set_top(self, top: int) -> None:
        self.__dict__["_top"] = (self.checkpoints, len(self.checkpoints), top)

    def change(self) -> ManifestChange | None:
        """What this copy changed since the manifest it was derived from (None for one built whole)."""
        return self.__dict__.get("_change")

    def forget_change(self) -> None:
        """Make this manifest a new origin: copies derived from it record changes relative to it."""
        self.__dict__.pop("_change", None)

    def header(self) -> dict[str, Any]:
        """Everything but the checkpoints, as :meth:`to_dict` writes it."""
        return {k: v for k, v in self.to_dict(checkpoints=False).items() if k != "checkpoints"}

    def _copy(
        self,
        checkpoints: list[CheckpointEntry],
        *,
        puts: Iterable[CheckpointEntry] = (),
        deletes: Iterable[int] = (),
    ) -> Manifest:
        copy = Manifest(
            exp_hash=self.exp_hash,
            architecture_hash=self.architecture_hash,
            hyperparams_hash=self.hyperparams_hash,
            created=self.created,
            parent=self.parent,
            retention=dict(self.retention),
            checkpoints=[],
            format=self.format,
            architecture=self.architecture,
        )
        copy.checkpoints = checkpoints  # sorted by step already: not checked again
        copy.__dict__["_sorted_of"] = (checkpoints, len(checkpoints), checkpoints)
        previous = self.change()
        origin = self if previous is None else previous.origin
        change = ManifestChange(
            origin,
            {} if previous is None else dict(previous.puts),
            set() if previous is None else set(previous.deletes),
        )
        for step in deletes:
            change.puts.pop(step, None)
            change.deletes.add(step)
        for e in puts:
            change.puts[e.step] = e
            change.deletes.discard(e.step)
        copy.__dict__["_change"] = change
        return copy

    def to_dict(self, *, checkpoints: bool = True) -> dict[str, Any]:
        return {
            "format": self.format,
            "exp_hash": self.exp_hash,
            "parent": None if self.parent is None else self.parent.to_dict(),
            "architecture_hash": self.architecture_hash,
            "hyperparams_hash": self.hyperparams_hash,
            "created": self.created,
            "retention": dict(self.retention),
            "architecture": None if self.architecture is None else self.architecture.to_dict(),
            "checkpoints": [e.to_dict() for e in self.checkpoints] if checkpoints else [],
        }

    def to_json(self, *, generation: int | None = None) -> bytes:
        """The manifest file; with ``generation``, the base of commit log ``generation`` (format /2).

        A log's base is written compact (one line per entry): it is large by definition.
        """
        if generation is None:
            return (json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n").encode()
        d = self.to_dict(checkpoints=False)
        del d["checkpoints"]
        d["format"] = MANIFEST_LOGGED_FORMAT
        d["log_generation"] = generation
        head = json.dumps(d, sort_keys=False, allow_nan=False)[:-1]
        lines = ",\n".join(json.dumps(e.to_dict(), allow_nan=False) for e in self.checkpoints)
        return f'{head}, "checkpoints": [\n{lines}\n]}}\n'.encode()

    @classmethod
    def from_json(cls, data: bytes, path: Path | str = "manifest.json") -> Manifest:
        """Parse and validate; raises ManifestError naming ``path`` and what is wrong.

        A commit log's base (format /2) gives the manifest as the base holds it, without its log:
        :meth:`~weightslab.store.manifests.ManifestStore.read` folds the log in.
        """
        return cls.parse_base(data, path)[0]

    @classmethod
    def parse_base(cls, data: bytes, path: Path | str = "manifest.json") -> tuple[Manifest, int | None]:
        """:meth:`from_json`, and the generation of the commit log that continues it (None: no log)."""
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(path, f"not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise ManifestError(path, f"expected a JSON object, got {type(raw).__name__}")
        fmt = raw.get("format")
        if fmt not in (MANIFEST_FORMAT, MANIFEST_LOGGED_FORMAT):
            raise ManifestError(
                path,
                f"format is {fmt!r}, this version of weightslab reads {MANIFEST_FORMAT!r} and "
                f"{MANIFEST_LOGGED_FORMAT!r}",
            )
        generation = None
        if fmt == MANIFEST_LOGGED_FORMAT:
            generation = raw.get("log_generation")
            if not isinstance(generation, int) or isinstance(generation, bool) or generation < 1:
                raise ManifestError(path, f"log_generation must be a positive integer, got {generation!r}")
        try:
            entries = [_entry_from_dict(e) for e in raw["checkpoints"]]
            if any("seq" not in e for e in raw["checkpoints"]):
                # written before commit order was recorded: the step order is the best record there is
                entries = [replace(e, seq=i + 1) for i, e in enumerate(sorted(entries, key=lambda e: e.step))]
            m = cls(checkpoints=sorted(entries, key=_step_of), **header_fields(raw))
            return m, generation
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(path, f"missing or malformed field ({type(exc).__name__}: {exc})") from exc


def header_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of :class:`Manifest` but the checkpoints, from a manifest's dict."""
    parent_raw = raw.get("parent")
    return {
        "exp_hash": validate_hash(raw["exp_hash"]),
        "architecture_hash": str(raw["architecture_hash"]),
        "hyperparams_hash": str(raw["hyperparams_hash"]),
        "created": float(raw["created"]),
        "parent": None if parent_raw is None else ParentRef.from_dict(parent_raw),
        "retention": dict(raw.get("retention") or {}),
        "architecture": _file_record(raw.get("architecture")),
    }


@dataclass
class ManifestChange:
    """The entries a derived manifest put (by step) or removed, relative to ``origin``."""

    origin: Manifest
    puts: dict[int, CheckpointEntry]
    deletes: set[int]


def _step_of(entry: CheckpointEntry) -> int:
    return entry.step


def _seq_of(entry: CheckpointEntry) -> int:
    return entry.seq


def read_manifest(path: Path, storage: Storage | None = None) -> Manifest:
    """Read and validate one manifest file (through ``storage``, a local one by default).

    The base of a commit log has its log (beside it) folded in. A root being written is better read
    through a read-only ``CheckpointManager``, which starts over when a compaction races the read.
    """
    from weightslab.format.manifest_log import fold  # it builds on this module

    storage = storage if storage is not None else LocalStorage(durable=False)
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError as exc:
        raise ManifestError(path, "file not found") from exc
    m, generation = Manifest.parse_base(data, path)
    if generation is None:
        return m
    log_path = path.with_name(f"manifest.{generation:06d}.jsonl")
    try:
        log = storage.read_bytes(log_path)
    except FileNotFoundError as exc:
        raise ManifestError(path, f"its commit log {log_path.name} is missing") from exc
    return fold(m, log, generation, log_path).manifest


__all__ = [
    "BlockDigests",
    "CheckpointEntry",
    "FileRecord",
    "Manifest",
    "ManifestChange",
    "ParentRef",
    "PendingReplacement",
    "commit_order",
    "entry_from_dict",
    "header_fields",
    "read_manifest",
]
