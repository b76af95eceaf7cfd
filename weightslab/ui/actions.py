"""What the dashboard's buttons do: verify, tag, delete, gc and export, through the same code as the CLI.

Actions that only read (verify, export, a gc dry run) run while a training writes the root. Actions that
write (tag, delete, gc) open the root as its writer for the length of the action, so a training that
holds the writer lock makes them fail with RootLockedError, which the page shows: they never write
behind a running training's back. A checkpoint that retention protects (the newest, a best, a branch
point) is never deleted.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from weightslab.errors import ConfigError, ProtectedCheckpointError
from weightslab.inspect import Tracker, open_root
from weightslab.inspect.checkpoints import checkpoint_infos, protection_reason
from weightslab.inspect.export import ExportFormat, export_checkpoint
from weightslab.inspect.gc import run_gc
from weightslab.inspect.verify import report_dict, verify_root
from weightslab.storage.open import is_remote
from weightslab.store.manager import CheckpointManager

MAX_TAGS, MAX_TAG_CHARS, MAX_DESCRIPTION_CHARS = 32, 100, 2000
EXPORT_PREFIX = "weightslab-ui-export-"
STALE_EXPORT_S = 3600.0


@contextlib.contextmanager
def writer(root: str) -> Iterator[CheckpointManager]:
    """The root opened for writing for one action (RootError if it is not a root, RootLockedError if busy)."""
    open_root(root)  # a writer's open would create a root where there is none: check first
    manager = CheckpointManager(root if is_remote(root) else Path(root).expanduser(), mode="w")
    try:
        yield manager
    finally:
        manager.close()


def verify(root: str, exp_hash: str | None, tracker: Tracker) -> dict[str, Any]:
    """Check every checksum (of one experiment, or all); the report plus ``{"statuses": {...}}``.

    ``statuses`` maps ``"<hash>@<step>"`` to "OK" or what is wrong with that checkpoint, ``digests``
    to the checksum its manifest entry had.
    """
    manager = open_root(root)
    h = manager.resolve_hash(exp_hash) if exp_hash else None
    report = verify_root(manager, h, tracker=tracker)
    statuses: dict[str, str] = {}
    digests: dict[str, str] = {}  # what was verified: a checkpoint rewritten since is unverified again
    for exp in [h] if h is not None else manager.experiments():
        with contextlib.suppress(Exception):
            for entry in manager.manifest(exp).checkpoints:
                statuses[f"{exp}@{entry.step}"] = "OK"
                digests[f"{exp}@{entry.step}"] = entry.xxh3_128
    for problem in report.problems:
        if problem.step is not None:
            statuses[f"{problem.exp_hash}@{problem.step}"] = f"{problem.kind}: {problem.detail}".strip(": ")
    return {**report_dict(report, manager.root), "exp_hash": h, "statuses": statuses, "digests": digests}


def parse_tags(text: object) -> list[str]:
    """``"best, keep me"`` -> ``["best", "keep me"]``; raises ConfigError naming a bad tag."""
    if not isinstance(text, str):
        raise ConfigError(f"tags must be one comma-separated string, got {type(text).__name__}")
    tags = [t.strip() for t in text.split(",") if t.strip()]
    if len(tags) > MAX_TAGS:
        raise ConfigError(f"{len(tags)} tags given; at most {MAX_TAGS} per request")
    for tag in tags:
        if len(tag) > MAX_TAG_CHARS or any(ord(c) < 32 for c in tag):
            raise ConfigError(
                f"tag {tag[:40]!r} is not allowed: tags are up to {MAX_TAG_CHARS} printable characters"
            )
    return tags


def check_description(value: object) -> str | None:
    """A checkpoint description from a page: None (keep it) or a string of at most 2,000 characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"the description must be a string, got {type(value).__name__}")
    if len(value) > MAX_DESCRIPTION_CHARS:
        raise ConfigError(
            f"the description has {len(value):,} characters; at most {MAX_DESCRIPTION_CHARS:,} are kept"
        )
    return value


def tag(root: str, exp_hash: str, step: int, tags: Sequence[str], description: str | None) -> dict[str, Any]:
    """Add ``tags`` to checkpoint ``step`` (and set its description unless None); returns the entry."""
    with writer(root) as manager:
        h = manager.resolve_hash(exp_hash)
        entry = manager.annotate(h, step, tags=tags, description=description)
    return {"exp_hash": h, "step": entry.step, "tags": list(entry.tags), "description": entry.description}


def delete(root: str, exp_hash: str, step: int) -> dict[str, Any]:
    """Delete checkpoint ``step`` of ``exp_hash``: manifest entry first, then the file.

    Raises ProtectedCheckpointError, deleting nothing, for a checkpoint retention protects, and
    CheckpointNotFoundError for a step the experiment does not hold.
    """
    with writer(root) as manager:
        h = manager.resolve_hash(exp_hash)
        info = next((i for i in checkpoint_infos(manager, h) if i.step == step), None)
        if info is not None:
            why = protection_reason(info)
            if why is not None:
                raise ProtectedCheckpointError(
                    f"checkpoint {h}@{step} is kept by retention: {why}; delete another one"
                )
        manager.delete(h, step, reason="deleted from weightslab ui")
    return {"exp_hash": h, "step": step, "deleted": True}


def gc(root: str, *, dry_run: bool, tracker: Tracker) -> dict[str, Any]:
    """``weightslab gc`` (a dry run touches nothing and runs beside a training)."""
    return run_gc(root, dry_run=dry_run, tracker=tracker).to_dict()


def export_check(root: str, exp_hash: str, step: int) -> dict[str, Any]:
    """What an export of ``step`` would read (raises as the export would, before any bytes are written)."""
    manager = open_root(root)
    h = manager.resolve_hash(exp_hash)
    entry = manager.entry(h, step)
    return {"exp_hash": h, "step": entry.step, "bytes": entry.bytes}


def sweep_exports(older_than_s: float = STALE_EXPORT_S) -> int:
    """Remove export folders a download left behind (a client that went away); returns how many."""
    removed = 0
    now = time.time()
    for folder in Path(tempfile.gettempdir()).glob(f"{EXPORT_PREFIX}*"):
        with contextlib.suppress(OSError):
            if folder.is_dir() and not folder.is_symlink() and now - folder.stat().st_mtime > older_than_s:
                shutil.rmtree(folder)
                removed += 1
    return removed


def export_zip(root: str, exp_hash: str, step: int, fmt: ExportFormat) -> tuple[Path, str]:
    """Export checkpoint ``step`` as ``weightslab export`` does, zipped; returns (zip path, file name).

    The zip lies in a temporary folder the caller removes with :func:`remove_export`.
    """
    manager = open_root(root)
    h = manager.resolve_hash(exp_hash)
    sweep_exports()
    scratch = Path(tempfile.mkdtemp(prefix=EXPORT_PREFIX))
    try:
        result = export_checkpoint(manager, h, scratch / "export", step=step, fmt=fmt)
        name = f"{h[:16]}_step_{result.step:06d}_{fmt}.zip"
        archive = scratch / name
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as z:  # weights barely deflate
            for file in sorted(result.directory.iterdir()):
                z.write(file, arcname=file.name)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return archive, name


def remove_export(archive: Path) -> None:
    """Remove the temporary folder of :func:`export_zip` (after the download was sent)."""
    shutil.rmtree(archive.parent, ignore_errors=True)


__all__ = [
    "check_description",
    "delete",
    "export_check",
    "export_zip",
    "sweep_exports",
    "gc",
    "parse_tags",
    "remove_export",
    "tag",
    "verify",
    "writer",
]
