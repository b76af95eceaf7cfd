"""PyTorch Lightning: :class:`WeightslabCheckpoint` checkpoints a ``Trainer`` run into a weightslab root.

    cb = WeightslabCheckpoint(root_log_dir="runs", checkpoint_frequency=50, monitor="val_loss", keep_best=2)
    trainer = L.Trainer(max_steps=1000, callbacks=[cb])
    trainer.fit(model, train_dl, val_dl, ckpt_path=cb.resume_path())   # None on a fresh root

The hooks it relies on, in the order ``Trainer._run`` calls them:

- ``setup`` (after the strategy set up the process group, before ``_restore_modules_and_callbacks``):
  opens the checkpoint system and wraps ``trainer.strategy.checkpoint_io`` in a :class:`StepFileIO`,
  so that the step file ``resume_path()`` returned is verified and converted in memory to Lightning's
  checkpoint dictionary when ``_CheckpointConnector.resume_start`` loads it (no ``.ckpt`` copy);
  any other path goes to the original ``CheckpointIO``.
- ``on_fit_start`` (the last hook before ``FitLoop.setup_data`` draws the first epoch's order; the
  sanity check in between runs under ``isolate_rng``): refuses an optimizer that shards its state
  (ZeroRedundancyOptimizer), then puts back the step file's RNG states, which Lightning does not
  restore, so that shuffling and dropout continue as in an uninterrupted run.
- ``on_train_start`` (after ``restore_training_state``): registers the module, optimizers,
  schedulers, hyperparameters and the rest of the trainer state, and tells the system which
  checkpoint it continues (journalled as ``resumed``).
- ``on_train_batch_end``: ``checkpoint_on_step(trainer.global_step, callback_metrics)`` for every
  optimizer step, at its own number (the hook and step of ModelCheckpoint's ``every_n_train_steps``);
  at an epoch's last batch also ``checkpoint_on_epoch_end``, and at the run's last step the ``last``
  save. When a validation follows an epoch's last batch, all of it waits for ``on_validation_end``
  (same step, same state, fresh metrics). Lightning resumes exactly from both points.

With DDP the system saves on rank 0 only, so Lightning's ``dump_checkpoint`` (the loops, callback
states and ``on_save_checkpoint`` hooks in ``extra["lightning"]``) runs there alone: those hooks
must not run collectives. Calling it on every rank first is not possible, since the other ranks
cannot know every save in advance (the time check is rank 0's clock, changes are detected inside
``checkpoint_on_step``, a signal may arrive).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as exc:  # the optional extra is not installed
    raise ImportError(
        "weightslab.integrations.lightning needs Lightning >= 2.4: pip install 'weightslab[lightning]'"
    ) from exc
import torch.distributed as dist
from lightning.pytorch.callbacks import Checkpoint

from weightslab.errors import CheckpointFormatError, ConfigError, RootError, SystemConfigurationError
from weightslab.format.trainers import (
    LIGHTNING_DATAMODULE_HPARAMS,
    LIGHTNING_HPARAMS,
    LIGHTNING_MODEL,
    LIGHTNING_STATE,
    numbered,
)
from weightslab.integrations.lightning_state import (
    Offered,
    StepFileIO,
    TrainerState,
    metrics_of,
    newest_verified,
    plain_hparams,
    to_lightning,
)
from weightslab.integrations.lightning_trainer import (
    check_optimizers,
    check_strategy,
    epoch_exhausted,
    final_step,
    last_batch,
    validation_follows,
)
from weightslab.store.manager import CheckpointManager
from weightslab.system.api import get_checkpoint_system
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig
from weightslab.system.snapshot import restore_rng

log = logging.getLogger("weightslab")

__all__ = ["WeightslabCheckpoint"]


@dataclass(frozen=True)
class _Resumed:
    """A step file Lightning loaded through the callback in this fit: what the system must adopt."""

    exp_hash: str
    step: int
    data: dict[str, Any]  # the sections the system restores itself (RNG, frozen, other statefuls)
    skipped: list[str]


class WeightslabCheckpoint(Checkpoint):
    """A Lightning checkpoint callback that saves into a weightslab root, and resumes from it exactly.

    Takes every option of :func:`~weightslab.components.get_checkpoint_system` (``root_log_dir``,
    ``checkpoint_frequency``, ``keep_last``, ``keep_best``, ``monitor``, ``mode``, ``keep_every``,
    ``every_n_epochs``, ``train_time_interval``, ``async_save``, ...). ``save_on_train_end`` saves the
    last step when training ends (``trigger="last"``). It is a Lightning ``Checkpoint``, so the
    Trainer adds no ModelCheckpoint of its own (and refuses ``enable_checkpointing=False``). Raises
    ConfigError for an unknown or invalid option, and when a fit starts with a sharded strategy
    (FSDP, DeepSpeed) or an optimizer that shards its state (ZeroRedundancyOptimizer).
    """

    def __init__(self, *, save_on_train_end: bool = True, **options: Any) -> None:
        super().__init__()
        if not isinstance(save_on_train_end, bool):
            raise ConfigError(f"save_on_train_end must be True or False, got {save_on_train_end!r}")
        options.setdefault("save_last", False)  # the last step is saved at on_train_end, not at close()
        self.config = CheckpointConfig.from_kwargs(**options)  # a bad option fails here, not in fit()
        self.save_on_train_end = save_on_train_end
        self._options = options
        self._system: AutomaticCheckpointSystem | None = None
        self._offered: Offered | None = None
        self._resumed: _Resumed | None = None
        self._registered: list[tuple[str, str]] = []
        self._seen: int | None = None  # the last step whose batch end this fit handled
        self._deferred: int | None = None  # a step waiting for the validation right after its batch

    # -- what users call ------------------------------------------------------------------------
    @property
    def system(self) -> AutomaticCheckpointSystem:
        """The checkpoint system of the current fit (opened by ``setup``).

        Raises SystemConfigurationError outside a fit.
        """
        if self._system is None or self._system.closed:
            raise SystemConfigurationError(
                "WeightslabCheckpoint opens its checkpoint system when Trainer.fit() starts and closes it "
                "when the fit ends; read the root with CheckpointManager(root, mode='r') in between"
            )
        return self._system

    def resume_path(self) -> str | None:
        """The step file to pass as ``trainer.fit(ckpt_path=...)``: None on a fresh root.

        It is the newest checkpoint that verifies of the experiment active last, as
        ``system.resume()`` picks it (a corrupt newest file is skipped with a warning). The root is
        read, never written, so every DDP rank may call this before the process group exists; once
        it exists, rank 0 chooses for all. Raises CheckpointNotFoundError when checkpoints exist but
        none verifies.
        """
        self._offered = None
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            self._offered = self._newest()
            return None if self._offered is None else str(self._offered.path)
        choice: list[Any] = [None]
        if dist.get_rank() == 0:
            try:
                choice = [("ok", self._newest())]
            except Exception as exc:  # told to the other ranks, then raised here
                choice = [("error", exc)]
                dist.broadcast_object_list(choice, src=0)
                raise
        dist.broadcast_object_list(choice, src=0)
        kind, value = choice[0]
        if kind == "error":
            raise value
        self._offered = value
        return None if value is None else str(value.path)

    def _newest(self) -> Offered | None:
        root = Path(self.config.root_log_dir).expanduser().resolve()
        if not root.exists() or (root.is_dir() and not (root / "checkpoints").is_dir()):
            return None  # no root yet, or nothing was ever saved in it
        return newest_verified(CheckpointManager(root, mode="r"))

    @property
    def best_model_path(self) -> str:
        """The step file of the best checkpoint by ``monitor`` ("" without one): ``ckpt_path="best"`` uses it."""
        monitor = self.config.monitor
        if monitor is None:
            return ""
        try:
            manager = CheckpointManager(Path(self.config.root_log_dir).expanduser().resolve(), mode="r")
            exp_hash = manager.last_active()
            if exp_hash is None:
                return ""
            entry = manager.entry(exp_hash, "best", monitor=monitor, mode=self.config.mode)
        except (RootError, FileNotFoundError):
            return ""
        return str(manager.experiment(exp_hash).resolve(entry.file))

    # -- setup and restore ----------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(trainer.strategy.checkpoint_io, StepFileIO):
            trainer.strategy.checkpoint_io = StepFileIO(trainer.strategy.checkpoint_io, self._load)
        if stage != "fit":
            return
        check_strategy(trainer)
        self._system = get_checkpoint_system(**self._options)
        self._resumed = None
        self._seen = self._deferred = None

    def _load(self, root: Path, exp_hash: str, step: int) -> dict[str, Any]:
        """Verify and convert a step file; in a fit of this root, remember it for the system to adopt."""
        system = self._system if self._system is not None and not self._system.closed else None
        ours = system is not None and Path(system.root).resolve() == root
        manager = system.manager if ours and system is not None else CheckpointManager(root, mode="r")
        entry = manager.entry(exp_hash, step)
        if entry.shards:
            raise CheckpointFormatError(
                f"checkpoint {exp_hash} step {step} is sharded (saved under FSDP); WeightslabCheckpoint "
                "loads replicated state only"
            )
        data = manager.load_entry(exp_hash, entry)  # size and xxh3-128 checked first; weights_only
        checkpoint = to_lightning(data, f"{root} checkpoint {exp_hash} step {step}")
        if ours:
            offered = self._offered
            skipped = (
                offered.skipped if offered and (offered.exp_hash, offered.step) == (exp_hash, step) else []
            )
            # what the system restores itself; the tensors go to Lightning and are not kept here
            sections = ("rng", "rng_ranks", "frozen", "extra", "hyperparams")
            kept: dict[str, Any] = {k: data[k] for k in sections if k in data}
            kept["extra"] = {k: v for k, v in kept.get("extra", {}).items() if k != LIGHTNING_STATE}
            self._resumed = _Resumed(exp_hash, step, kept, skipped)
        return checkpoint

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            check_optimizers(trainer)  # configure_optimizers ran in strategy.setup, before this hook
        if self._resumed is not None:
            self._restore_rng(trainer, self._resumed)

    def _restore_rng(self, trainer: pl.Trainer, resumed: _Resumed) -> None:
        rng = resumed.data.get("rng") or {}
        ranks = resumed.data.get("rng_ranks")
        if ranks and len(ranks) == trainer.world_size and ranks[trainer.global_rank]:
            rng = ranks[trainer.global_rank]  # each DDP rank its own stream (same world size only)
        if rng and self.config.save_rng:
            restore_rng(rng)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        system = self.system
        optimizers = numbered("optimizer", len(trainer.optimizers))
        schedulers = numbered("scheduler", len(trainer.lr_scheduler_configs))
        self._unregister(system)
        self._register(system, "model", LIGHTNING_MODEL, pl_module)
        for name, optimizer in zip(optimizers, trainer.optimizers, strict=True):
            self._register(system, "optimizer", name, optimizer)
        for name, config in zip(schedulers, trainer.lr_scheduler_configs, strict=True):
            self._register(system, "scheduler", name, config.scheduler)
        hparams = {LIGHTNING_HPARAMS: plain_hparams(pl_module.hparams, "LightningModule")}
        datamodule = getattr(trainer, "datamodule", None)  # set by Lightning's data connector
        if datamodule is not None and datamodule.hparams:
            hparams[LIGHTNING_DATAMODULE_HPARAMS] = plain_hparams(datamodule.hparams, "LightningDataModule")
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            if epoch_exhausted(trainer):
                # The checkpoint was taken after its epoch's last batch (at on_validation_end):
                # Lightning finishes that epoch without a batch and gives the next one a new
                # iterator, so the one FitLoop.setup_data drew after on_fit_start is never used; the
                # uninterrupted run drew the next epoch's order from the saved state: draw it again.
                self._restore_rng(trainer, resumed)
            # the checkpoint's values first, so that the system continues its experiment; this run's
            # values, registered next, are then a change it records at the next step (with the keys)
            saved = resumed.data.get("hyperparams", {})
            for name in hparams:
                self._register(system, "hyperparams", name, dict(saved.get(name, {})))
            self._adopt(system, resumed)
        for name, values in hparams.items():
            self._register(system, "hyperparams", name, values)
        # registered after the adopt: Lightning restored this state already, resume must not call it
        self._register(system, "stateful", LIGHTNING_STATE, TrainerState(trainer, optimizers, schedulers))
        # the step training starts from is done: with gradient accumulation, the first batches after a
        # resume end on it again
        self._seen = trainer.global_step

    def _register(self, system: AutomaticCheckpointSystem, kind: str, name: str, obj: Any) -> None:
        system.ledger.register(kind, name, obj)  # type: ignore[arg-type]  # one of the ledger's kinds
        self._registered.append((kind, name))

    def _unregister(self, system: AutomaticCheckpointSystem) -> None:
        for kind, name in self._registered:
            if name in system.ledger.items(kind):  # type: ignore[arg-type]
                system.ledger.unregister(kind, name)  # type: ignore[arg-type]
        self._registered = []

    def _adopt(self, system: AutomaticCheckpointSystem, resumed: _Resumed) -> None:
        """Continue the resumed checkpoint's experiment, as ``system.resume()`` would after loading it.

        Lightning restored the module, optimizers, schedulers and loops; the system restores what
        Lightning does not (which parameters were frozen, other registered stateful objects) and records
        the resume. The hyperparameters of the run stay its own (Lightning's restore leaves them).
        """
        data = resumed.data
        ours = {LIGHTNING_HPARAMS, LIGHTNING_DATAMODULE_HPARAMS}
        rest = {
            "frozen": data.get("frozen", {}),
            "extra": data.get("extra", {}),
            "hyperparams": {k: v for k, v in data.get("hyperparams", {}).items() if k not in ours},
        }
        system.adopt(resumed.exp_hash, resumed.step, rest, skipped=resumed.skipped, mode="lightning")
        entry = system.manager.entry(resumed.exp_hash, resumed.step)
        log.info(
            "weightslab: Lightning resumed %s at step %d from %s", resumed.exp_hash, entry.step, entry.file
        )

    # -- saving ---------------------------------------------------------------------------------
    def _skip(self, trainer: pl.Trainer) -> bool:
        return (
            self._system is None
            or bool(getattr(trainer, "fast_dev_run", False))  # set by Lightning's debugging connector
            or trainer.sanity_checking
            or trainer.state.fn != "fit"
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self._skip(trainer) or step == 0 or step == self._seen:
            return  # gradient accumulation: several batches end on the same optimizer step
        self._seen = step
        if last_batch(trainer) and validation_follows(trainer):
            # recorded at on_validation_end, at this step: the validation moves neither the step nor
            # the state, and it brings this epoch's metrics
            self._deferred = step
            return
        # every other step now, at its own number; a monitored metric that no validation reported yet
        # is missing from its saves (the system warns once, as ModelCheckpoint does before validating)
        self._record(trainer, step, metrics_of(trainer))

    def _record(self, trainer: pl.Trainer, step: int, metrics: dict[str, float]) -> None:
        """Give ``step`` to the system: its step and epoch schedules, and the run's last step."""
        system = self.system
        system.checkpoint_on_step(step, metrics)
        if last_batch(trainer):
            # the epoch's save is taken at its last batch, not at on_train_epoch_end: Lightning resumes a
            # run without validation one batch off from a checkpoint taken there
            system.checkpoint_on_epoch_end(trainer.current_epoch, metrics, step=step)
        if self.save_on_train_end and final_step(trainer, step):
            # at the batch end, not at on_train_end: by then the loops count the epoch as done, and a
            # resume from there would skip the next epoch's batches
            system.save(step, metrics, trigger="last")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._skip(trainer):
            return
        if self._deferred == trainer.global_step:
            self._deferred = None
            self._record(trainer, trainer.global_step, metrics_of(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._skip(trainer) and self._deferred == trainer.global_step:
            self._deferred = None  # the validation that was due did not run
            self._record(trainer, trainer.global_step, metrics_of(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if self._skip(trainer) or step == 0:
            return
        metrics = metrics_of(trainer)
        if self._deferred == step:
            self._deferred = None
            self._record(trainer, step, metrics)
        if self.save_on_train_end:
            # stopped before its last step (EarlyStopping, should_stop): saved once here
            self.system.save(step, metrics, trigger="last")

    # -- the end of a fit -----------------------------------------------------------------------
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        io = trainer.strategy.checkpoint_io
        if isinstance(io, StepFileIO):
            trainer.strategy.checkpoint_io = io.inner
        if stage == "fit":
            self._close()
            if trainer.world_size > 1:  # the next fit's resume_path() must see rank 0's last commit
                trainer.strategy.barrier("WeightslabCheckpoint.teardown")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close()  # Lightning calls no teardown hook after an exception: flush what is in flight

    def _close(self) -> None:
        system, self._system = self._system, None
        if system is not None and not system.closed:
            self._unregister(system)
            system.close()
