"""CheckpointManager: save, load, list, verify and delete the checkpoints of one root.

The manager does I/O and keeps the commit rule; it never decides when to save or what to keep
(that is :mod:`weightslab.policy.retention` and the automatic system). Commit rule: a checkpoint
exists when, and only when, its manifest entry exists, and the entry is written only after the step
file is durable. Files without an entry are crash leftovers: never loaded, cleaned up by a writer.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from weightslab.errors import (
    AmbiguousExperimentError,
    CheckpointNotFoundError,
    ManifestError,
    RootError,
    RootLockedError,
    UnknownExperimentError,
    UnsafePathError,
    UntrustedLoadError,
)
from weightslab.format.journal import Journal
from weightslab.format.layout import ExperimentLayout, RootLayout
from weightslab.format.manifest import (
    CheckpointEntry,
    Manifest,
    ParentRef,
)
from weightslab.storage.base import Storage, WriterLock
from weightslab.storage.open import open_storage
from weightslab.store import experiment_files
from weightslab.store.blobs import BlobStore, SweepResult, check_modes, committed_entries
from weightslab.store.commits import Committing
from weightslab.store.manifests import ManifestStore
from weightslab.store.reads import Reading, Which
from weightslab.store.reaper import Reaper
from weightslab.store.recovery import Recovery, _with_pending
from weightslab.store.verify import Problem, VerifyReport, verify_root
from weightslab.util.names import validate_hash

if TYPE_CHECKING:  # torch is imported by what saves and loads, never by the read-only CLI's open
    import torch

    from weightslab.format.architecture import architecture_text
    from weightslab.format.stepfile import load_step_file

log = logging.getLogger("weightslab")


class CheckpointManager(Committing, Reading):
    """Checkpoints of one root on local storage.

    ``mode="w"`` takes the root's writer lock (a second writer gets RootLockedError) and cleans crash
    leftovers; ``mode="r"`` only reads and may run beside a writer. ``storage_mode="dedup"`` writes new
    checkpoints' large tensors once each as content-addressed blobs (``compression="zstd"``: stored
    compressed); "files" (the default) writes self-contained step files. Readers need neither option.
    Raises ConfigError for another mode, or zstd without dedup.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        mode: Literal["r", "w"] = "w",
        durable: bool = True,
        storage: Storage | None = None,
        storage_options: Mapping[str, Any] | None = None,
        storage_mode: str = "files",
        compression: str | None = None,
    ) -> None:
        if mode not in ("r", "w"):
            raise ValueError(f"mode must be 'r' or 'w', got {mode!r}")
        check_modes(storage_mode, compression)
        if storage is None:
            self.root, storage = open_storage(root, storage_options=storage_options, durable=durable)
        else:
            self.root = Path(root).expanduser().absolute()
        self.mode = mode
        self.layout = RootLayout(self.root)
        self._storage: Storage = storage
        self.journal: Journal | None = None
        self.manifests = ManifestStore(self.layout, lambda: self._storage, caching=mode == "w")
        self._lock = self.manifests.lock  # one lock orders every manifest change
        self.recovery = Recovery(self.layout, lambda: self._storage, self.manifests, lambda: self.journal)
        # how new checkpoints are written; every reader resolves blob references whatever this says
        self.blobs = BlobStore(
            self.layout, lambda: self._storage, storage_mode=storage_mode, compression=compression
        )
        self._lock_file: WriterLock | None = None
        self.reaper = Reaper()  # unlinks deleted checkpoints' files in the background
        if self.storage.exists(self.root) and not self.storage.is_dir(self.root):
            raise RootError(f"checkpoint root {self.root} is a file, not a folder; pass a folder path")
        if mode == "r":
            self._check_root()
        else:
            self._open_for_writing()

    def _check_root(self) -> None:
        """A reader's open: the root must exist and hold a ``checkpoints/`` folder."""
        if not self.storage.exists(self.root):
            raise RootError(
                f"no such root: {self.root} does not exist, so it is not a weightslab root; pass the "
                "root_log_dir of a training run"
            )
        if not self.storage.is_dir(self.layout.checkpoints_dir):
            raise RootError(f"{self.root} is not a weightslab root (no checkpoints/ folder); check the path")

    def _open_for_writing(self) -> None:
        """A writer's open: create the folders, take the writer lock, open the journal, clean leftovers."""
        try:
            for d in (self.layout.data_dir, self.layout.logs_dir, self.layout.checkpoints_dir):
                self.storage.makedirs(d)
        except OSError as exc:
            hint = (
                "; it is read-only: open it with mode='r' or pass another root_log_dir"
                if exc.errno == errno.EROFS
                else ""
            )
            raise RootError(
                f"cannot create checkpoint root {self.root}: {exc.strerror or exc}{hint}"
            ) from exc
        self._lock_file = self.storage.lock(self.root, self.layout.lock_file)
        try:
            self._lock_file.acquire()
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise RootError(
                    f"checkpoint root {self.root} is read-only ({exc.strerror}); open it with "
                    "CheckpointManager(root, mode='r') to read, or pass another root_log_dir to train"
                ) from exc
            raise RootError(f"cannot lock checkpoint root {self.root}: {exc.strerror or exc}") from exc
        try:
            self.journal = Journal(self.layout.events_file, storage=self.storage)
            self.clean_leftovers()
        except BaseException as exc:
            # the lock must not outlive a failed open: every later open in this process would fail
            self._lock_file.release()
            self._lock_file = None
            if isinstance(exc, OSError) and not isinstance(exc, RootError):
                where = exc.filename or self.root
                raise RootError(
                    f"cannot open checkpoint root {self.root} for writing: {where}: {exc.strerror or exc}; "
                    "fix its permissions (or move it aside), or open the root with mode='r' to read"
                ) from exc
            raise

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def storage(self) -> Storage:
        """Where every byte of the root goes; assigning another one re-points the journal too."""
        return self._storage

    @storage.setter
    def storage(self, storage: Storage) -> None:
        self._storage = storage
        if self.journal is not None:
            self.journal.storage = storage

    def close(self) -> None:
        """Wait for the deleted checkpoints' files to be unlinked, then release the writer lock; the
        manager can still read afterwards."""
        self.reaper.drain()
        if self._lock_file is not None:
            self._lock_file.release()
            self._lock_file = None
        self.mode = "r"
        self.manifests.set_caching(False)  # a reader re-reads: another writer may open the root now

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_writer(self) -> Journal:
        if self.mode != "w" or self.journal is None:
            raise RootError(f"{self.root} is open read-only; open it with CheckpointManager(root, mode='w')")
        if self._lock_file is not None and not self._lock_file.held:
            raise RootLockedError(self.root, "another writer (this process lost its lease on the root)")
        return self.journal

    def event(self, name: str, **fields: Any) -> None:
        """Append an event to the journal (no-op for a read-only manager)."""
        if self.journal is not None:
            self.journal.append(name, **fields)

    # -- experiments ----------------------------------------------------------------------------
    def experiment(self, exp_hash: str) -> ExperimentLayout:
        return self.layout.experiment(exp_hash)

    def experiments(self) -> list[str]:
        """Hashes of the experiments that have a manifest, oldest first."""
        return self.manifests.experiments()

    def has_experiment(self, exp_hash: str) -> bool:
        return self.manifests.has(exp_hash)

    def resolve_hash(self, prefix: str) -> str:
        """A full hash from a unique prefix, like git; raises Unknown/AmbiguousExperimentError."""
        if not isinstance(prefix, str) or not prefix:
            raise UnknownExperimentError(f"experiment hash prefix must be a non-empty string, got {prefix!r}")
        matches = [h for h in self.experiments() if h.startswith(prefix.lower())]
        if not matches:
            raise UnknownExperimentError(
                f"no experiment in {self.root} matches {prefix!r}; list them with `weightslab ls`"
            )
        if len(matches) > 1:
            raise AmbiguousExperimentError(
                f"hash prefix {prefix!r} is ambiguous in {self.root}: {', '.join(matches)}; type more digits"
            )
        return matches[0]

    def manifest(self, exp_hash: str) -> Manifest:
        """The manifest of one experiment (cached by a writer, re-read by a reader)."""
        return self.manifests.read(exp_hash)

    def _write_manifest(self, m: Manifest) -> None:
        """Commit ``m`` (the crash tests stop the process here, so every commit passes through)."""
        self.manifests.write(m)

    def create_experiment(
        self,
        *,
        exp_hash: str,
        architecture_hash: str,
        hyperparams_hash: str,
        parent: ParentRef | None,
        retention: Mapping[str, Any],
        hyperparams: Mapping[str, Any],
        models: Mapping[str, torch.nn.Module],
        save_architecture: bool = True,
    ) -> tuple[Manifest, bool]:
        """Open the experiment directory; returns (manifest, created). Idempotent.

        Architecture files and the YAML config are written first, the manifest last: a directory
        without a manifest is a leftover of a crash.
        """
        journal = self._require_writer()
        with self._lock:
            if self.has_experiment(exp_hash):
                return self.manifest(exp_hash), False
            exp = self.experiment(exp_hash)
            for d in (exp.model_dir, exp.hp_dir, exp.data_dir):
                self.storage.makedirs(d)
            self.storage.write_bytes_atomic(
                exp.config_yaml, experiment_files.config_yaml(exp_hash, hyperparams)
            )
            experiment_files.write_architecture_summary(self.storage, exp, models)
            architecture = (
                experiment_files.write_architecture_pickle(
                    self.storage, exp, models, lambda exc: self._architecture_not_saved(exp_hash, exc)
                )
                if save_architecture and models
                else None
            )
            m = Manifest(
                exp_hash=exp_hash,
                architecture_hash=architecture_hash,
                hyperparams_hash=hyperparams_hash,
                created=time.time(),
                parent=parent,
                retention=dict(retention),
                architecture=architecture,
            )
            self._write_manifest(m)
        journal.append(
            "experiment_created",
            exp_hash=exp_hash,
            parent=None if parent is None else parent.to_dict(),
            reason=None if parent is None else parent.reason,
            architecture_hash=architecture_hash,
            hyperparams_hash=hyperparams_hash,
            retention=dict(retention),
        )
        return m, True

    def record_retention(self, exp_hash: str, retention: Mapping[str, Any]) -> None:
        """Record the retention policy now in force for an experiment (what ``weightslab gc`` applies)."""
        self._require_writer()
        with self._lock:
            m = self.manifest(exp_hash)
            if m.retention != dict(retention):
                updated = m.without_steps(set())  # a copy; the cached manifest is never mutated
                updated.retention = dict(retention)
                self._write_manifest(updated)

    def _architecture_not_saved(self, exp_hash: str, exc: Exception) -> None:
        log.warning("weightslab: architecture of %s not pickled (%s: %s)", exp_hash, type(exc).__name__, exc)
        self.event("architecture_not_saved", exp_hash=exp_hash, error=f"{type(exc).__name__}: {exc}")

    def has_architecture(self, exp_hash: str) -> bool:
        """Whether the experiment has an architecture pickle to rebuild its models from."""
        return self.storage.is_file(self.experiment(validate_hash(exp_hash)).architecture_pickle)

    def load_architecture(self, exp_hash: str, *, trust: bool = False) -> dict[str, torch.nn.Module]:
        """The model structures of an experiment, parameters on the meta device.

        Unpickling can run code from the file, so it needs ``trust=True``. Materialise with
        ``model.to_empty(device="cpu")`` and load weights with :meth:`load`.
        Raises UntrustedLoadError without ``trust=True``, CheckpointNotFoundError if absent.
        """
        path = self.experiment(validate_hash(exp_hash)).architecture_pickle
        if not trust:
            raise UntrustedLoadError(
                f"{path} is a pickle of Python objects and loading it can run code; call "
                "load_architecture(..., trust=True) only for roots you trust"
            )
        if not self.storage.is_file(path):
            raise CheckpointNotFoundError(
                f"no architecture pickle for {exp_hash} at {path} (the model could not be pickled when "
                "the experiment was created); build the model in code, as it was at that point"
            )
        return experiment_files.load_architecture_pickle(
            self.storage, self.experiment(exp_hash), self.manifest(exp_hash).architecture
        )

    def architecture_summary(self, exp_hash: str) -> dict[str, Any] | None:
        """The record of ``model/{hash}_architecture.json`` (format ``weightslab.architecture-summary/1``).

        None for roots written before it existed, or when it cannot be read: a display then says
        "not recorded". The ``.txt`` beside it is rendered from the same record, for people only.
        """
        return experiment_files.read_architecture_summary(
            self.storage, self.experiment(validate_hash(exp_hash))
        )

    def read_config(self, exp_hash: str) -> dict[str, Any]:
        """The hyperparameters of an experiment, from ``hp/{hash}_config.yaml``.

        Read with ``yaml.safe_load`` only: a tag such as ``!!python/object`` is refused, never run.
        Raises ConfigFileError naming the file when it is missing or unreadable, is not UTF-8 or not
        safe YAML, or does not hold a mapping.
        """
        return experiment_files.read_config(self.storage, self.experiment(exp_hash))

    # -- health ---------------------------------------------------------------------------------
    def verify(
        self, exp_hash: str | None = None, *, on_entry: Callable[[CheckpointEntry], None] | None = None
    ) -> VerifyReport:
        """Check every committed checkpoint's size and checksum, and look for orphaned files.

        ``on_entry`` is called after each checkpoint is checked (for progress bars).
        Problems: "corrupt", "missing", "orphaned" (a step or temp file without an entry; not reported
        while another process holds the root for writing, since it may be a write in flight), "manifest",
        "unreadable" (a file that exists but cannot be read: permissions, a folder in its place),
        "unsafe" (an entry naming anything but a real step file of the experiment, or a model or hp
        folder that a symlink leads out of the experiment folder). Each is reported and the check
        goes on with the next file.
        """
        writer_elsewhere = (
            self.mode == "r" and self.storage.lock(self.root, self.layout.lock_file).held_elsewhere()
        )
        hashes = [exp_hash] if exp_hash is not None else self.experiments()
        return verify_root(self.manifests, hashes, writer_elsewhere=writer_elsewhere, on_entry=on_entry)

    def collect_blobs(self) -> SweepResult:
        """Delete every blob that no committed checkpoint of any experiment references; returns them.

        Blobs of a save in flight in this process are kept. Nothing is deleted while a step file or
        manifest cannot be read (its references are unknown). Raises RootError for a reader.
        """
        self._require_writer()
        with self._lock:
            if not self.blobs.has_blobs():
                return SweepResult()
            result = self.blobs.sweep(committed_entries(self.manifests))
        if result.removed:
            self.event("blobs_collected", blobs=len(result.removed), bytes=result.bytes)
        return result

    def find_leftovers(self) -> tuple[list[Path], list[str]]:
        """What a writer cleans on opening, found without touching anything: (files, manifests to rebuild)."""
        return self.recovery.find_leftovers()

    def clean_leftovers(self) -> list[Path]:
        """Rebuild lost or broken manifests, finish interrupted replacements, remove crash leftovers."""
        self._require_writer()
        return self.recovery.clean_leftovers()

    def rebuild_manifest(self, exp_hash: str) -> Manifest:
        """Rebuild a lost or broken manifest from the step files that load and match (the broken one is kept)."""
        self._require_writer()
        return self.recovery.rebuild_manifest(exp_hash)

    def size_on_disk(self, exp_hash: str) -> int:
        """Bytes of every file in the experiment folder (step files, manifest, config, architecture).

        A committed step file counts the bytes its manifest entry records, which is its size (the
        write measured it, ``verify`` checks it), so a folder of 10,000 checkpoints costs a listing,
        not 10,000 ``stat`` calls. Every other file is measured: the manifest and its log, config,
        architecture, crash leftovers, a step file under replacement (``pending``: it may hold either
        version) and the files of a sharded checkpoint (its entry names a folder). A blob of a
        ``storage="dedup"`` root lives outside the folder and is not counted, as before.
        """
        exp = self.experiment(exp_hash)
        try:
            entries = self.manifest(exp_hash).checkpoints
        except ManifestError:  # measure everything: the entries are not known
            entries = []
        recorded: dict[str, dict[str, int]] = {}  # {folder: {name: bytes}}, folders as "model/"
        for e in entries:
            if not e.shards and e.pending is None:
                folder, _, name = e.file.rpartition("/")
                recorded.setdefault(folder + "/" if folder else "", {})[name] = e.bytes
        return self._folder_bytes(exp.dir, "", recorded, depth=1)

    def _folder_bytes(
        self, folder: Path, prefix: str, recorded: Mapping[str, Mapping[str, int]], *, depth: int
    ) -> int:
        """Bytes of the files below ``folder`` (``prefix``: its path in the experiment folder).

        ``depth`` more levels are listed name by name (step files sit one level down, in ``model/``);
        below that every file is measured.
        """
        known = recorded.get(prefix, {})
        total = 0
        for name in self.storage.listdir(folder):
            size = known.get(name)
            if size is not None:
                total += size
                continue
            path = folder / name
            if not self.storage.is_dir(path):
                total += self._file_bytes(path)
            elif depth > 0:
                total += self._folder_bytes(path, f"{prefix}{name}/", recorded, depth=depth - 1)
            else:
                total += sum(self._file_bytes(p) for p in self.storage.files_under(path))
        return total

    def _file_bytes(self, path: Path) -> int:
        try:
            return self.storage.size(path)
        except (FileNotFoundError, NotADirectoryError):  # removed meanwhile (a writer's retention)
            return 0

    def read_bytes(self, exp_hash: str, relative: str) -> bytes:
        """The bytes of a file of an experiment, ``relative`` to its folder (``hp/{hash}_config.yaml``).

        For the commands above the storage seam (show, export) that display such files; ``..`` and
        absolute paths are refused with UnsafePathError.
        """
        exp = self.experiment(validate_hash(exp_hash))
        parts = relative.split("/")
        if relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise UnsafePathError(
                relative, "a file of an experiment must be named inside its folder", where=exp.dir
            )
        return self.storage.read_bytes(exp.dir.joinpath(*parts))


def __getattr__(name: str) -> object:
    """``architecture_text`` and ``load_step_file``, importable from here as before, loaded on use."""
    if name == "architecture_text":
        from weightslab.format.architecture import architecture_text

        return architecture_text
    if name == "load_step_file":
        from weightslab.format.stepfile import load_step_file

        return load_step_file
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CheckpointManager",
    "Problem",
    "VerifyReport",
    "Which",
    "_with_pending",
    "architecture_text",
    "load_step_file",
]
