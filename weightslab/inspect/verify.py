"""``weightslab verify``: every checksum, and the manifests against the files, with progress.

The checks are :meth:`CheckpointManager.verify`'s; this module adds a progress bar over the bytes
read (checksumming is the slow part on large roots) and the ``--json`` form.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from weightslab.errors import ManifestError
from weightslab.inspect import NullTracker, Tracker
from weightslab.store.manager import CheckpointManager, VerifyReport


def verify_root(
    manager: CheckpointManager, exp_hash: str | None = None, *, tracker: Tracker | None = None
) -> VerifyReport:
    """:meth:`CheckpointManager.verify` with a progress bar over the bytes to checksum."""
    tracker = tracker or NullTracker()
    hashes = [exp_hash] if exp_hash is not None else manager.experiments()
    total = 0
    for h in hashes:
        with contextlib.suppress(ManifestError):
            total += sum(e.bytes for e in manager.manifest(h).checkpoints)
    tracker.start("verifying", total)
    return manager.verify(exp_hash, on_entry=lambda entry: tracker.advance(entry.bytes))


def report_dict(report: VerifyReport, root: Path) -> dict[str, Any]:
    """The ``--json`` form of a report; paths relative to ``root``."""
    return {
        "root": str(root),
        "healthy": report.healthy,
        "checked": report.checked,
        "ok": report.ok,
        "problems": [
            {
                "kind": p.kind,
                "exp_hash": p.exp_hash,
                "step": p.step,
                "path": relative_to_root(p.path, root),
                "detail": p.detail,
            }
            for p in report.problems
        ],
    }


def relative_to_root(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` with forward slashes, or as given when it lies elsewhere."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


__all__ = ["relative_to_root", "report_dict", "verify_root"]
