"""The options and the checkpoint records of :class:`weightslab.integrations.manager.CheckpointManager`.

Import them from :mod:`weightslab.integrations.manager`, which re-exports both; what each option maps
to is described there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from weightslab.errors import ConfigError

Mode = Literal["min", "max"]


@dataclass(kw_only=True, frozen=True)
class CheckpointConfig:
    """Options of the manager adapter; :mod:`weightslab.integrations.manager` says what each maps to.

    ``backup_dir``: the backup root (a folder or ``s3://``), default ``<checkpoint_dir>/<name>-backups``.
    ``storage_options``: for ``s3://`` roots, as in weightslab's own config. ``durable``: fsync
    every file (turn off only for throwaway runs). Raises ConfigError for invalid values.
    """

    checkpoint_dir: str | os.PathLike[str] = "checkpoints"
    save_interval: int = 1
    max_checkpoints: int | None = 10
    save_best_only: bool = False
    monitor_metric: str | None = "val_loss"
    monitor_mode: Mode = "min"
    save_optimizer: bool = True
    save_scheduler: bool = True
    save_metadata: bool = True
    compression: bool = False
    backup_checkpoints: bool = True
    validate_checkpoints: bool = True
    backup_dir: str | os.PathLike[str] | None = None
    storage_options: Mapping[str, Any] | None = None
    durable: bool = True

    def __post_init__(self) -> None:
        for name in ("save_interval", "max_checkpoints"):
            value = getattr(self, name)
            if value is None and name == "max_checkpoints":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        flags = ("save_best_only", "save_optimizer", "save_scheduler", "save_metadata", "compression")
        for name in (*flags, "backup_checkpoints", "validate_checkpoints", "durable"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.monitor_mode not in ("min", "max"):
            raise ConfigError(f"monitor_mode must be 'min' or 'max', got {self.monitor_mode!r}")
        if self.monitor_metric is not None and (
            not isinstance(self.monitor_metric, str) or not self.monitor_metric
        ):
            raise ConfigError(f"monitor_metric must be a metric name or None, got {self.monitor_metric!r}")
        if self.save_best_only and self.monitor_metric is None:
            raise ConfigError(
                "save_best_only=True needs monitor_metric=<metric name>, for example 'val_loss'"
            )
        if self.compression:
            raise ConfigError(
                "compression=True is not supported yet: weightslab writes uncompressed step files "
                "(checksummed and memory-mapped on load); leave compression=False"
            )
        if not self.save_metadata:
            raise ConfigError(
                "save_metadata=False is not supported: each checkpoint's metadata (metrics, tags, "
                "description, checksum) is its manifest entry, the record that commits it; drop the option"
            )


@dataclass
class CheckpointMetadata:
    """What is known of one checkpoint without loading it (from its manifest entry).

    ``checksum`` is the step file's xxh3-128 (the checksum every load verifies), not a SHA-256.
    ``timestamp`` is local ISO-8601 time; ``epoch`` is the recorded ``epoch`` metric, or None.
    """

    checkpoint_id: str
    timestamp: str
    epoch: int | None
    step: int
    model_name: str
    experiment_name: str
    file_size: int
    checksum: str
    metrics: dict[str, float | None] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    description: str = ""
    is_best: bool = False
    is_latest: bool = False
    exp_hash: str = ""
    trigger: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


__all__ = ["CheckpointConfig", "CheckpointMetadata", "Mode"]
