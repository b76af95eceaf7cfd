"""What one running dashboard holds between requests: its source, token, jobs and last verify results."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from weightslab.inspect import open_root
from weightslab.store.manager import CheckpointManager
from weightslab.ui.curves import CurveCache
from weightslab.ui.jobs import Jobs


@dataclass
class UiState:
    """The dashboard over one source: a root (a folder or ``s3://``) or a Hub repo (``hub_repo`` set).

    ``token`` is sent back by the pages with every action (``X-Weightslab-Token``): another web page
    open in the same browser cannot make this server delete anything, as it cannot read the token.
    """

    source: str
    hub_repo: str | None = None
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    poll_ms: int = 2000
    jobs: Jobs = field(default_factory=Jobs)
    curves: CurveCache = field(default_factory=CurveCache)
    hub_options: dict[str, Any] = field(default_factory=dict)
    _verified: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> CheckpointManager:
        """The root, opened read-only for one request (RootError when it is not a weightslab root)."""
        return open_root(self.source)

    def record_verify(self, statuses: dict[str, str], digests: dict[str, str]) -> None:
        """Remember what a verify run found, per checkpoint and checksum, for the checkpoint tables."""
        with self._lock:
            for name, status in statuses.items():
                exp, _, step = name.rpartition("@")
                self._verified[(exp, int(step))] = (status, digests.get(name, ""))

    def forget(self, exp_hash: str, step: int) -> None:
        with self._lock:
            self._verified.pop((exp_hash, step), None)

    def verified(self) -> dict[tuple[str, int], tuple[str, str]]:
        with self._lock:
            return dict(self._verified)


__all__ = ["UiState"]
