"""What the manager's mixins (:mod:`.commits`, :mod:`.reads`) use of :class:`CheckpointManager`.

Declarations for the type checker only: :class:`~weightslab.store.manager.CheckpointManager` defines
all of it, and the mixins are never used without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading

    from weightslab.format.journal import Journal
    from weightslab.format.layout import ExperimentLayout, RootLayout
    from weightslab.format.manifest import CheckpointEntry, Manifest
    from weightslab.storage.base import Storage
    from weightslab.store.blobs import BlobStore
    from weightslab.store.manifests import ManifestStore
    from weightslab.store.reaper import Reaper


class ManagerParts:
    """The attributes and methods of the manager that its mixins call."""

    if TYPE_CHECKING:
        root: Path
        layout: RootLayout
        manifests: ManifestStore
        blobs: BlobStore
        reaper: Reaper
        _lock: threading.RLock

        @property
        def storage(self) -> Storage: ...
        def _require_writer(self) -> Journal: ...
        def _write_manifest(self, m: Manifest) -> None: ...
        def experiment(self, exp_hash: str) -> ExperimentLayout: ...
        def experiments(self) -> list[str]: ...
        def has_experiment(self, exp_hash: str) -> bool: ...
        def manifest(self, exp_hash: str) -> Manifest: ...
        def resolve_hash(self, prefix: str) -> str: ...
        def verify_entry(self, exp_hash: str, entry: CheckpointEntry) -> Path: ...
        def delete(self, exp_hash: str, step: int, *, reason: str = "retention") -> None: ...
