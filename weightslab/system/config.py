"""The configuration of the automatic checkpoint system: a keyword-only dataclass that checks itself."""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, get_args

from weightslab.errors import ConfigError

Mode = Literal["min", "max"]
OnError = Literal["warn", "raise"]
StorageMode = Literal["files", "dedup"]
Compression = Literal["zstd"]


def _positive_int(name: str, value: object, *, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    low = 0 if allow_zero else 1
    if value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")


@dataclass(kw_only=True, frozen=True)
class CheckpointConfig:
    """Settings of an :class:`AutomaticCheckpointSystem`.

    Attributes:
        root_log_dir: the checkpoint root (created if missing).
        checkpoint_frequency: save at every positive multiple of this step.
        keep_last: keep the newest N checkpoints of each experiment (None: keep all).
        keep_best: keep the best K checkpoints by ``monitor``/``mode``.
        monitor: metric name used by ``keep_best`` and ``resume("best")``.
        mode: "min" or "max": which direction of ``monitor`` is better.
        keep_every: also keep every checkpoint whose step is a multiple of M.
        async_save: snapshot on the training thread, write in the background.
        on_error: "warn" keeps training running when a save fails; "raise" raises.
        exclude_hyperparams: dotted hyperparameter keys that do not count in the hash.
        save_rng: save and restore the RNG states of torch, numpy and random.
        detect_changes: check for model, config and freeze changes on every call.
        durable: fsync files and folders (turn off only for throwaway runs).
        save_architecture: write the architecture pickle (needs a picklable model).
        handle_signals: on SIGTERM/SIGINT, checkpoint at the next step boundary, flush and exit
            with status 128 + signal; a second signal exits at once.
        save_last: at ``close()`` (and at interpreter exit), save the last step seen when it is newer
            than the newest checkpoint, with ``trigger="last"``.
        storage_options: for an object-store root (``s3://bucket/prefix``), the fsspec/s3fs options
            (``endpoint_url``, ``key``, ``secret``, ``client_kwargs``); without them the standard AWS
            environment variables apply.
        distributed_timeout: with several ranks, how long (seconds) a rank waits for the others at a
            checkpoint before raising DistributedError naming the ranks that did not come.
        every_n_epochs: also save at ``checkpoint_on_epoch_end(epoch)`` after every N-th epoch.
        train_time_interval: also save (``trigger="time"``) at the first ``checkpoint_on_step`` once
            this many seconds passed since the last save or since the system opened.
        max_staging_bytes: with ``async_save``, the most bytes of snapshot staging memory kept between
            saves (None: no bound). A state that fits is staged into memory kept and reused; a larger
            one into memory allocated per save and freed when its write ends (a longer stall).
        storage: "files" writes one self-contained step file per checkpoint; "dedup" writes each
            tensor once, by digest, and lets checkpoints reference unchanged ones.
        compression: "zstd" compresses the tensors of a "dedup" root losslessly (None: off).
    """

    root_log_dir: str | os.PathLike[str] = "experiments"
    checkpoint_frequency: int = 100
    keep_last: int | None = None
    keep_best: int = 0
    monitor: str | None = None
    mode: Mode = "min"
    keep_every: int | None = None
    async_save: bool = True
    on_error: OnError = "warn"
    exclude_hyperparams: tuple[str, ...] = field(default_factory=tuple)
    save_rng: bool = True
    detect_changes: bool = True
    durable: bool = True
    save_architecture: bool = True
    handle_signals: bool = False
    save_last: bool = True
    distributed_timeout: float = 600.0
    every_n_epochs: int | None = None
    train_time_interval: float | timedelta | None = None
    storage_options: Mapping[str, Any] | None = None
    max_staging_bytes: int | None = 2 << 30
    storage: StorageMode = "files"
    compression: Compression | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.root_log_dir, (str, os.PathLike)) or not os.fspath(self.root_log_dir):
            raise ConfigError(f"root_log_dir must be a non-empty path, got {self.root_log_dir!r}")
        if "\x00" in os.fspath(self.root_log_dir):
            raise ConfigError(f"root_log_dir {self.root_log_dir!r} contains a NUL byte")
        _positive_int("checkpoint_frequency", self.checkpoint_frequency)
        _positive_int("keep_last", self.keep_last, allow_none=True)
        _positive_int("keep_best", self.keep_best, allow_zero=True)
        _positive_int("keep_every", self.keep_every, allow_none=True)
        _positive_int("every_n_epochs", self.every_n_epochs, allow_none=True)
        interval = self.train_time_interval
        if isinstance(interval, timedelta):  # what Lightning's ModelCheckpoint takes
            interval = interval.total_seconds()
            object.__setattr__(self, "train_time_interval", interval)
        if interval is not None and (
            isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0
        ):
            raise ConfigError(
                f"train_time_interval must be a positive number of seconds (or None), got {interval!r}"
            )
        _positive_int("max_staging_bytes", self.max_staging_bytes, allow_none=True, allow_zero=True)
        if self.storage not in get_args(StorageMode):
            raise ConfigError(f"storage must be 'files' or 'dedup', got {self.storage!r}")
        if self.compression is not None and self.compression not in get_args(Compression):
            raise ConfigError(f"compression must be 'zstd' or None, got {self.compression!r}")
        if self.compression is not None and self.storage != "dedup":
            raise ConfigError(
                f"compression={self.compression!r} needs storage='dedup' (a 'files' step file is torch.save's "
                "format, which does not compress); pass storage='dedup' too"
            )
        if self.mode not in get_args(Mode):
            raise ConfigError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.on_error not in get_args(OnError):
            raise ConfigError(f"on_error must be 'warn' or 'raise', got {self.on_error!r}")
        if self.keep_best and not self.monitor:
            raise ConfigError(
                f"keep_best={self.keep_best} needs monitor=<metric name> (for example monitor='val/loss')"
            )
        if self.monitor is not None and (not isinstance(self.monitor, str) or not self.monitor):
            raise ConfigError(f"monitor must be a non-empty metric name, got {self.monitor!r}")
        if self.storage_options is not None and not isinstance(self.storage_options, Mapping):
            raise ConfigError(
                f"storage_options must be a mapping of s3fs options, got {self.storage_options!r}"
            )
        timeout = self.distributed_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ConfigError(f"distributed_timeout must be a positive number of seconds, got {timeout!r}")
        exclude = self.exclude_hyperparams
        if isinstance(exclude, str) or not isinstance(exclude, Iterable):
            raise ConfigError(f"exclude_hyperparams must be a list of key names, got {exclude!r}")
        exclude = tuple(exclude)
        bad = [k for k in exclude if not isinstance(k, str) or not k]
        if bad:
            raise ConfigError(f"exclude_hyperparams holds non-string or empty keys: {bad!r}")
        object.__setattr__(self, "exclude_hyperparams", exclude)
        for flag in (
            "async_save",
            "save_rng",
            "detect_changes",
            "durable",
            "save_architecture",
            "handle_signals",
            "save_last",
        ):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be True or False, got {getattr(self, flag)!r}")

    @property
    def root(self) -> str | Path:
        """The root as :func:`~weightslab.storage.open.open_storage` takes it (an ``s3://`` URL stays a string)."""
        if isinstance(self.root_log_dir, str) and self.root_log_dir.startswith("s3://"):
            return self.root_log_dir
        return Path(self.root_log_dir)

    def retention(self) -> dict[str, Any]:
        """The retention settings, as recorded in each manifest."""
        return {
            "keep_last": self.keep_last,
            "keep_best": self.keep_best,
            "monitor": self.monitor,
            "mode": self.mode,
            "keep_every": self.keep_every,
        }

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> CheckpointConfig:
        """Build from keyword arguments; an unknown name is a ConfigError that suggests the right one."""
        names = {f.name for f in dataclasses.fields(cls)}
        for key in kwargs:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = (
                    f"; did you mean {close[0]!r}?"
                    if close
                    else f"; valid options: {', '.join(sorted(names))}"
                )
                raise ConfigError(f"unknown checkpoint option {key!r}{hint}")
        return cls(**kwargs)

    def differences(self, other: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Options in ``other`` whose values differ from this config: {name: (mine, theirs)}."""
        out = {}
        for key, value in other.items():
            mine = getattr(self, key)
            if key == "root_log_dir":
                remote = any(str(v).startswith("s3://") for v in (mine, value))
                same = (
                    str(mine).rstrip("/") == str(value).rstrip("/")
                    if remote
                    else (Path(mine).resolve() == Path(value).resolve())
                )
            elif key == "exclude_hyperparams":
                same = tuple(mine) == tuple(value)
            else:
                same = mine == value
            if not same:
                out[key] = (mine, value)
        return out
