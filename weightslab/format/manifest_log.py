"""The commit log of a large manifest: one JSON line per change, folded onto its base on read.

Rewriting a manifest of 10,000 checkpoints costs megabytes per commit; appending the one entry that
changed costs a line. So a manifest with at least :data:`LOG_MIN_ENTRIES` entries is written as a
base (``manifest.json``, format ``weightslab.manifest/2``, with ``log_generation`` G) continued by
``manifest.{G:06d}.jsonl``. Each line is one commit::

    {"g": G, "n": 1, "put": [{entry}, ...], "del": [step, ...], "header": {...}}

``n`` counts the lines of the log from 1; ``put`` replaces or adds entries by step, ``del`` removes
steps, ``header`` (when present) replaces every field but the checkpoints. A line counts only once it
ends in a newline and parses, so a line torn by a crash is not a commit: the writer's
``append_line`` makes it durable whole or not at all, and a writer that finds a torn tail on opening
compacts the manifest (writes a new base) before it appends again.

Compaction writes the folded manifest as the base of generation G+1 (an atomic replace: a reader
sees the old base and its log, or the new base) and then deletes log G. A reader that finds the log
of the base it read gone reads the base again (see :mod:`weightslab.store.manifests`). The base is
rewritten when the log has grown as large as the base, so the bytes written per commit are amortised
O(1): each rewrite of n entries follows at least n entries' worth of appended lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from weightslab.errors import ManifestError
from weightslab.format.manifest import CheckpointEntry, Manifest, entry_from_dict, header_fields

LOG_MIN_ENTRIES = 64
"""Below this many entries a manifest is rewritten whole on every change (it is a few kilobytes)."""


@dataclass(frozen=True)
class FoldedLog:
    """A base with its log applied: the manifest, how many lines counted, and the log's state."""

    manifest: Manifest
    lines: int
    bytes: int  # bytes of the lines that counted (what a writer appends after)
    torn: bool  # the log ends in something that is not a whole line (a crash mid-append)


def encode_change(
    generation: int,
    number: int,
    puts: Iterable[CheckpointEntry],
    deletes: Iterable[int],
    header: dict[str, Any] | None,
) -> bytes:
    """One line of log ``generation``: its ``number``-th commit."""
    record: dict[str, Any] = {"g": generation, "n": number}
    put = [e.to_dict() for e in puts]
    if put:
        record["put"] = put
    dropped = sorted(deletes)
    if dropped:
        record["del"] = dropped
    if header is not None:
        record["header"] = header
    return (json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n").encode()


def fold(base: Manifest, data: bytes, generation: int, path: Path | str) -> FoldedLog:
    """Apply the whole lines of log ``generation`` (its bytes ``data``) to ``base``.

    Raises ManifestError naming ``path`` when a whole line is not a commit of this log in order (a
    hand edit, a damaged disk): the manifest cannot be known then, and a writer rebuilds it.
    """
    end = data.rfind(b"\n") + 1
    body, tail = data[:end], data[end:]
    raws = body.split(b"\n")[:-1]
    parsed = _parse_all(raws)
    try:
        by_step, header = _apply(base, raws, parsed, generation, path)
    except ManifestError:
        if parsed is None:
            raise
        # a line is wrong: read line by line, so that the error names the first bad line as such
        by_step, header = _apply(base, raws, None, generation, path)
    lines, used = len(raws), len(body)
    entries = sorted(by_step.values(), key=lambda e: e.step)
    if header is None:
        folded = replace(base, checkpoints=entries)
    else:
        try:
            folded = Manifest(checkpoints=entries, **header_fields(header))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(path, f"malformed header ({type(exc).__name__}: {exc})") from exc
        if folded.exp_hash != base.exp_hash:
            raise ManifestError(
                path, f"a header names experiment {folded.exp_hash}, the base {base.exp_hash}"
            )
    return FoldedLog(folded, lines, used, torn=bool(tail))


def _apply(
    base: Manifest, raws: list[bytes], parsed: list[Any] | None, generation: int, path: Path | str
) -> tuple[dict[int, CheckpointEntry], dict[str, Any] | None]:
    """The entries by step and the last header after the lines ``raws`` (``parsed`` when known)."""
    by_step = {e.step: e for e in base.checkpoints}
    header: dict[str, Any] | None = None
    for lines, raw in enumerate(raws):
        if parsed is not None:
            record = parsed[lines]
        else:
            try:
                record = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ManifestError(path, f"line {lines + 1} is not valid JSON ({exc})") from exc
        if not isinstance(record, dict) or record.get("g") != generation or record.get("n") != lines + 1:
            raise ManifestError(
                path, f"line {lines + 1} is not commit {lines + 1} of log generation {generation}"
            )
        try:
            for step in record.get("del") or ():
                by_step.pop(int(step), None)
            for raw_entry in record.get("put") or ():
                entry = entry_from_dict(raw_entry)
                by_step[entry.step] = entry
            if record.get("header") is not None:
                header = dict(record["header"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(
                path, f"line {lines + 1}: missing or malformed field ({type(exc).__name__}: {exc})"
            ) from exc
    return by_step, header


def _parse_all(raws: list[bytes]) -> list[Any] | None:
    """The lines parsed in one call (one JSON array), or None when that does not give one JSON object
    per line: then each line is parsed alone, and the first bad one named. A call per line costs
    about twice as much at 10,000 lines."""
    try:
        records = json.loads(b"[" + b",".join(raws) + b"]")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if len(records) != len(raws) or not all(isinstance(r, dict) for r in records):
        return None
    return list(records)


def change_line(m: Manifest, origin: Manifest, generation: int, number: int) -> bytes | None:
    """The log line that turns ``origin`` into ``m`` (derived from it), or None when ``m`` was not.

    ``m`` records what it put and removed since ``origin`` (see :meth:`Manifest.change`); the header
    is compared field by field, so a retention changed on the copy is logged too.
    """
    change = m.change()
    if change is None or change.origin is not origin or m.exp_hash != origin.exp_hash:
        return None
    header = m.header()
    return encode_change(
        generation,
        number,
        change.puts.values(),
        change.deletes,
        None if header == origin.header() else header,
    )


__all__ = ["LOG_MIN_ENTRIES", "FoldedLog", "change_line", "encode_change", "fold"]
