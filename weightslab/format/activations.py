"""Which journal events make an experiment the active one, and finding the last of them in journal bytes.

Standard library only: ``weightslab ls`` reads the end of the journal with it before anything else of
weightslab is loaded (:mod:`weightslab.format.journal` reads whole journals through a storage).
"""

from __future__ import annotations

import json

ACTIVATING_EVENTS = frozenset({"experiment_created", "experiment_activated", "checkpoint_saved", "resumed"})


def newest_activation(data: bytes, *, partial_first: bool = False) -> str | None:
    """The experiment hash of the last activating event in the journal lines ``data``; with
    ``partial_first``, its first line is a piece of a line (the tail of a journal) and is skipped.
    Lines that do not parse (a torn last line) are skipped."""
    lines = data.split(b"\n")
    if partial_first:
        lines = lines[1:]
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if (
            isinstance(record, dict)
            and isinstance(record.get("event"), str)
            and record["event"] in ACTIVATING_EVENTS
            and isinstance(record.get("exp_hash"), str)
        ):
            return str(record["exp_hash"])
    return None


__all__ = ["ACTIVATING_EVENTS", "newest_activation"]
