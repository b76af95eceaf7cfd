"""A checkpoint-manager API (``save_checkpoint``/``load_checkpoint``/``compare_checkpoints``...) over weightslab.

For code written against a manager that is called explicitly at the end of each epoch::

    from weightslab.integrations.manager import CheckpointConfig, CheckpointManager

    manager = CheckpointManager(CheckpointConfig(checkpoint_dir="checkpoints"), experiment_name="run1")
    checkpoint_id = manager.save_checkpoint(model, optimizer, epoch=3, metrics={"val_loss": 0.41})
    manager.load_checkpoint(checkpoint_id, model=model, optimizer=optimizer)

It is a thin adapter. Each manager owns an isolated :class:`AutomaticCheckpointSystem` on its own
ledger (nothing global is touched), whose root is ``<checkpoint_dir>/<experiment_name>``: a normal
weightslab root that ``weightslab ls/show/verify/compare`` read. A checkpoint id is
``<exp_hash>@<step>`` (any unique hash prefix works, as on the command line). Saves are synchronous
and checked: ``save_checkpoint`` returns once the checkpoint is committed.

Mapping of the options:

* ``save_interval``: in epochs; a save whose ``epoch % save_interval != 0`` is skipped (returns None).
* ``save_best_only``: a save is skipped unless ``metrics[monitor_metric]`` improves on every
  checkpoint of the root; the metric must then be in ``metrics``.
* ``max_checkpoints=N``: retention keeps the newest N of each experiment, plus the best by
  ``monitor_metric`` when it is older (so at most N + 1); None keeps all.
* the epoch is recorded as the metric ``"epoch"`` (so ``weightslab ls``, ``compare`` and
  ``analyze`` show it); a step not given defaults to the epoch, else to one past the newest step.
* ``save_optimizer``/``save_scheduler``: whether those states go into the step file.
* ``backup_checkpoints``: after each save, the best and the newest checkpoint of the experiment, and
  every checkpoint tagged ``backup`` (what :meth:`CheckpointManager.backup_checkpoint` copies), are
  copied to ``backup_dir`` (default: the sibling root ``<checkpoint_dir>/<experiment_name>-backups``;
  a backup inside the root itself is refused); copies no longer chosen are pruned, tagged ones never.
* ``validate_checkpoints``: checksums are verified on load (False skips the check).
* ``save_metadata=False`` and ``compression=True`` are refused (ConfigError): every manifest entry
  records its metadata because it is the commit record, and compressed step files do not exist yet.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from weightslab.errors import (
    CheckpointNotFoundError,
    CheckpointSaveError,
    ConfigError,
    ProtectedCheckpointError,
    WeightslabError,
)
from weightslab.inspect.backup import BackupResult, backup_root
from weightslab.inspect.experiments import best_metric
from weightslab.inspect.export import ExportFormat, ExportResult
from weightslab.inspect.export import export_checkpoint as export_record
from weightslab.integrations import manager_lookup as lookup
from weightslab.integrations.manager_config import CheckpointConfig, CheckpointMetadata
from weightslab.integrations.manager_lookup import EPOCH_METRIC, STATE_KINDS, as_number, join_root, only_state
from weightslab.registry.ledger import Ledger
from weightslab.registry.wrappers import unwrap
from weightslab.storage.open import is_remote
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig as SystemConfig
from weightslab.util.names import validate_name

log = logging.getLogger("weightslab")

BACKUP_TAG = "backup"
"""The tag :meth:`CheckpointManager.backup_checkpoint` puts on a checkpoint: automatic backups keep it."""


class CheckpointManager:
    """Explicit saves, loads, comparisons and backups of one experiment's checkpoints.

    Not to be confused with :class:`weightslab.store.manager.CheckpointManager`, the store behind
    every root (``self.store``). Holds the root's writer lock until :meth:`close` (a second manager
    on the same root gets RootLockedError). Raises ConfigError for invalid options.
    """

    def __init__(self, config: CheckpointConfig | None = None, experiment_name: str = "experiment") -> None:
        self.config = config or CheckpointConfig()
        self.experiment_name = validate_name(experiment_name, "experiment name")
        self.root = join_root(self.config.checkpoint_dir, self.experiment_name)
        self.backup_dir = (
            join_root(self.config.checkpoint_dir, f"{self.experiment_name}-backups")
            if self.config.backup_dir is None
            else os.fspath(self.config.backup_dir)
        )
        monitor = self.config.monitor_metric
        self.ledger = Ledger()
        self.system = AutomaticCheckpointSystem(
            SystemConfig(
                root_log_dir=self.root,
                keep_last=self.config.max_checkpoints,
                keep_best=1 if monitor and self.config.max_checkpoints is not None else 0,
                monitor=monitor,
                mode=self.config.monitor_mode,
                async_save=False,  # save_checkpoint returns a committed checkpoint
                save_last=False,  # closing must not add a checkpoint that save_best_only would skip
                durable=self.config.durable,
                storage_options=self.config.storage_options,
            ),
            ledger=self.ledger,
        )
        self.store = self.system.manager
        self._rank = (monitor, self.config.monitor_mode)  # what "best" means, for the lookups

    # -- saving ---------------------------------------------------------------------------------
    def save_checkpoint(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        epoch: int | None = None,
        step: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        tags: Iterable[str] | None = None,
        description: str | None = None,
        scheduler: Any = None,
        *,
        config: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Save the model (and optimizer, scheduler) now; returns the checkpoint id, or None when skipped.

        Skipped when ``epoch`` is off the ``save_interval`` grid or, with ``save_best_only``, when the
        monitored metric does not improve. ``config``: the training configuration, recorded with
        this checkpoint and the later ones until another is passed (a different one opens a new
        experiment, as any hyperparameter change does). Saving a step already saved in the same
        experiment keeps the first and returns its id. Raises ConfigError for a bad epoch or a
        missing monitored metric, CheckpointSaveError when the save failed.
        """
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
            raise ConfigError(f"epoch must be a whole number >= 0, got {epoch!r}")
        if epoch is not None and epoch % self.config.save_interval != 0:
            return None
        recorded = dict(metrics or {})
        if epoch is not None:
            if EPOCH_METRIC in recorded and as_number(recorded[EPOCH_METRIC]) != epoch:
                raise ConfigError(
                    f"metrics['epoch'] = {recorded[EPOCH_METRIC]!r} but epoch={epoch}; the epoch is recorded "
                    "as the metric 'epoch', so pass one of them"
                )
            recorded[EPOCH_METRIC] = epoch
        if self.config.save_best_only and not lookup.improves(self.store, recorded, *self._rank):
            return None
        self._register(model, optimizer, scheduler, config)
        if step is None:
            step = epoch if epoch is not None else self._next_step()
        failures = self.system.failures
        exp_hash = self.system.save(step, recorded, trigger="manual", tags=tags, description=description)
        if self.system.failures > failures:
            raise CheckpointSaveError(
                f"checkpoint {exp_hash}@{step} was not saved (the log and {self.root}/logs/events.jsonl say why)",
                step=step,
            )
        if self.store.manifest(exp_hash).entry(step) is None:  # saved and deleted since: never saved twice
            raise CheckpointSaveError(
                f"step {step} of experiment {exp_hash} was saved by this manager before (and deleted "
                "since); a step is saved once per experiment: pass another step",
                step=step,
            )
        if self.config.backup_checkpoints:
            try:
                self._backup(experiments=[exp_hash])
            except (WeightslabError, OSError) as exc:  # the checkpoint itself is committed
                message = f"weightslab: backup of {exp_hash}@{step} to {self.backup_dir} failed: {exc}"
                log.error("%s", message)
                warnings.warn(message + " (the checkpoint is saved; the next save tries again)", stacklevel=2)
        return f"{exp_hash}@{step}"

    def _register(
        self, model: torch.nn.Module, optimizer: Any, scheduler: Any, config: Mapping[str, Any] | None
    ) -> None:
        """Register what this save holds; what is not passed (or not to be saved) is left out of it."""
        self.ledger.register("model", "model", model)
        wanted = {
            "optimizer": optimizer if self.config.save_optimizer else None,
            "scheduler": scheduler if self.config.save_scheduler else None,
        }
        for kind, obj in wanted.items():
            if obj is not None:
                self.ledger.register(kind, kind, obj)  # type: ignore[arg-type]
            elif kind in self.ledger.list(kind):  # type: ignore[arg-type]
                self.ledger.unregister(kind, kind)  # type: ignore[arg-type]
        if config is not None:
            self.ledger.register_hyperparams("config", dict(config))

    def _next_step(self) -> int:
        last = self.system.last_step
        if last is not None:
            return last + 1
        steps = [e.step for h in self.store.experiments() for e in self.store.checkpoints(h)]
        return max(steps) + 1 if steps else 0

    # -- loading and checking -------------------------------------------------------------------
    def load_checkpoint(
        self,
        checkpoint_id: str | None = None,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> dict[str, Any] | None:
        """Restore a checkpoint (default: the newest) into the objects given, in place; returns its data.

        The data: ``checkpoint_id``, ``epoch``, ``step``, ``metrics``, ``tags``, ``description``,
        ``timestamp``, ``model_state_dict``, ``optimizer_state_dict``, ``scheduler_state_dict`` (None
        when not saved), ``config`` and ``metadata`` (a :class:`CheckpointMetadata`). None when the
        root holds no checkpoint yet and no id is given. Raises CheckpointNotFoundError /
        UnknownExperimentError for an id that names none, CheckpointCorruptedError when the file
        does not verify (with validate_checkpoints), the load_state_dict errors of a model that does
        not fit.
        """
        if checkpoint_id is None:
            latest = lookup.latest_entry(self.store)
            if latest is None:
                return None
            exp_hash, entry = latest
        else:
            exp_hash, entry = lookup.resolve_id(self.store, checkpoint_id)
        data = self.store.load_entry(exp_hash, entry, verify=self.config.validate_checkpoints)
        states = {kind: data.get(key) or {} for kind, key in STATE_KINDS.items()}
        model_state = only_state(states["model"], "model")
        if model is not None:
            if model_state is None:
                raise CheckpointNotFoundError(f"checkpoint {exp_hash}@{entry.step} holds no model state")
            unwrap(model).load_state_dict(model_state)
        for kind, target in (("optimizer", optimizer), ("scheduler", scheduler)):
            state = only_state(states[kind], kind)
            if target is not None and state is None:
                log.warning(
                    "weightslab: checkpoint %(id)s holds no %(kind)s state (saved with save_%(kind)s=False "
                    "or without one); the %(kind)s was left as it is",
                    {"id": f"{exp_hash}@{entry.step}", "kind": kind},
                )
            elif target is not None:
                target.load_state_dict(state)
        meta = lookup.checkpoint_metadata(self.store, exp_hash, entry, self.experiment_name, self._marks())
        return {
            "checkpoint_id": meta.checkpoint_id,
            "epoch": meta.epoch,
            "step": entry.step,
            "metrics": dict(entry.metrics),
            "tags": list(entry.tags),
            "description": entry.description,
            "timestamp": meta.timestamp,
            "model_state_dict": model_state,
            "optimizer_state_dict": only_state(states["optimizer"], "optimizer"),
            "scheduler_state_dict": only_state(states["scheduler"], "scheduler"),
            "config": dict(data.get("hyperparams", {}).get("config") or {}),
            "metadata": meta,
        }

    def validate_checkpoint(self, checkpoint_id: str) -> bool:
        """Whether the checkpoint exists, matches its checksum and opens with ``weights_only=True``.

        Never raises for a bad checkpoint: False, with a log line saying why.
        """
        try:
            exp_hash, entry = lookup.resolve_id(self.store, checkpoint_id)
            self.store.verify_entry(exp_hash, entry)
            self.store.load_entry(exp_hash, entry, verify=False, mmap=True)
        except (WeightslabError, OSError, KeyError, ValueError) as exc:
            log.warning("weightslab: checkpoint %r is not valid: %s", checkpoint_id, exc)
            return False
        return True

    # -- looking ----------------------------------------------------------------------------------
    def compare_checkpoints(self, checkpoint_ids: Sequence[str]) -> dict[str, Any]:
        """Compare checkpoints (the first is the baseline): metrics, hyperparameters, layers, weights.

        Returns ``metrics_comparison`` ({metric: {id: value}}), ``hyperparameter_changes`` and
        ``architecture_changes`` ({id: [changes from the baseline]}), ``weight_distance`` ({id: l2,
        relative, cosine, max_abs, identical}) and ``details`` (the full record). Raises as
        :func:`weightslab.inspect.compare.compare_checkpoints`.
        """
        return lookup.compare_ids(self.store, checkpoint_ids)

    def list_checkpoints(self) -> list[CheckpointMetadata]:
        """Every committed checkpoint of the root: experiments oldest first, each in commit order."""
        marks = self._marks()
        out: list[CheckpointMetadata] = []
        for h in self.store.experiments():
            config = lookup.experiment_config(self.store, h)
            out += [
                lookup.checkpoint_metadata(self.store, h, e, self.experiment_name, marks, config)
                for e in self.store.manifest(h).in_commit_order()
            ]
        return out

    def get_checkpoint_summary(self) -> dict[str, Any]:
        """Counts and sizes: ``total_checkpoints``, ``total_size_mb`` (of the step files, MiB),
        ``best_checkpoint`` and ``latest_checkpoint`` (ids or None), ``best_metric_value``,
        ``monitor_metric``, ``monitor_mode``, ``experiments``, ``root`` and ``backup_dir``."""
        entries = [(h, e) for h in self.store.experiments() for e in self.store.checkpoints(h)]
        best, latest = self._marks()
        return {
            "total_checkpoints": len(entries),
            "total_size_mb": sum(e.bytes for _, e in entries) / (1024 * 1024),
            "best_checkpoint": None if best is None else f"{best[0]}@{best[1].step}",
            "latest_checkpoint": None if latest is None else f"{latest[0]}@{latest[1].step}",
            "best_metric_value": lookup.best_value(self.store, *self._rank),
            "monitor_metric": self.config.monitor_metric,
            "monitor_mode": self.config.monitor_mode,
            "experiments": len(self.store.experiments()),
            "experiment_name": self.experiment_name,
            "root": self.root,
            "backup_dir": self.backup_dir if self.config.backup_checkpoints else None,
        }

    # -- removing, exporting, backing up ------------------------------------------------------------
    def delete_checkpoint(self, checkpoint_id: str) -> None:
        """Delete one checkpoint (manifest entry first, then the file).

        Raises ProtectedCheckpointError (a ConfigError), deleting nothing, for a checkpoint retention
        protects: the newest of its experiment, the best by ``monitor_metric`` (while max_checkpoints
        keeps a best), or one a later experiment branched from.
        """
        exp_hash, entry = lookup.resolve_id(self.store, checkpoint_id)
        m = self.store.manifest(exp_hash)
        why = []
        latest = m.latest()
        if latest is not None and latest.step == entry.step:
            why.append("it is the newest checkpoint of its experiment")
        best = best_metric(m, None, None) if self.system.config.keep_best else None
        if best is not None and best.step == entry.step:
            why.append(f"it is the best by {best.monitor} ({best.mode})")
        if entry.step in self.store.branch_points(exp_hash):
            why.append("a later experiment continued from it")
        if why:
            raise ProtectedCheckpointError(
                f"checkpoint {exp_hash}@{entry.step} is kept by retention: {'; '.join(why)}; "
                "delete another one, or save a newer (or better) checkpoint first"
            )
        self.store.delete(exp_hash, entry.step, reason="deleted by user")

    def export_checkpoint(
        self,
        checkpoint_id: str,
        destination: str | os.PathLike[str],
        format: ExportFormat = "safetensors",
        *,
        force: bool = False,
    ) -> ExportResult:
        """Write one checkpoint to the folder ``destination`` as ``weightslab export`` does.

        ``format``: "safetensors" (``model.safetensors``) or "pt" (the whole step file as
        ``checkpoint.pt``); both add ``config.yaml`` and ``checkpoint.json``. Raises FileExistsError
        for files already there unless ``force``.
        """
        exp_hash, entry = lookup.resolve_id(self.store, checkpoint_id)
        return export_record(
            self.store, exp_hash, os.fspath(destination), step=entry.step, fmt=format, force=force
        )

    def backup_checkpoint(self, checkpoint_id: str) -> BackupResult:
        """Copy one checkpoint to the backup root and tag it ``backup`` (automatic backups keep it there)."""
        exp_hash, entry = lookup.resolve_id(self.store, checkpoint_id)
        self.system.tag(entry.step, BACKUP_TAG, exp_hash=exp_hash)
        return self._backup(checkpoints=[(exp_hash, entry.step)])

    def _backup(self, **selection: Any) -> BackupResult:
        remote = is_remote(self.backup_dir)
        if "checkpoints" not in selection:
            selection.update(tagged=BACKUP_TAG, prune=True)
        result = backup_root(
            self.store,
            self.backup_dir,
            storage_options=self.config.storage_options if remote else None,
            durable=self.config.durable,
            **selection,
        )
        if result.failed:
            raise CheckpointSaveError(
                f"backup to {self.backup_dir} failed for {', '.join(f'{i.exp_hash}@{i.step}' for i in result.failed)}: "
                f"{result.failed[0].detail}"
            )
        return result

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the root (its writer lock); the manager cannot save afterwards."""
        if not self.system.closed:
            self.system.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _marks(self) -> lookup.Marks:
        """The root's (best, latest) checkpoints."""
        return lookup.best_entry(self.store, *self._rank), lookup.latest_entry(self.store)


__all__ = ["BACKUP_TAG", "CheckpointConfig", "CheckpointManager", "CheckpointMetadata"]
