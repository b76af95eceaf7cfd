"""What :class:`~weightslab.integrations.lightning.WeightslabCheckpoint` reads of a Lightning ``Trainer``.

Where its loops stand at a batch end (the epoch's last batch, the run's last step, whether a
validation follows), and whether its strategy and optimizers hold state the callback can save: it
saves replicated state, on rank 0, through the checkpoint system. Lightning has no public API for
the loop positions; the attributes read here are those of Lightning 2.x (``lightning.pytorch`` and
``pytorch_lightning`` alike).
"""

from __future__ import annotations

import lightning.pytorch as pl

from weightslab.errors import ConfigError


def check_strategy(trainer: pl.Trainer) -> None:
    """Raise ConfigError unless the strategy keeps the model replicated (one device or DDP)."""
    # by name: pytorch_lightning's Trainer has its own copies of these classes
    kinds = {c.__name__ for c in type(trainer.strategy).__mro__}
    if "DeepSpeedStrategy" in kinds or not kinds & {"SingleDeviceStrategy", "DDPStrategy"}:
        raise ConfigError(
            f"WeightslabCheckpoint saves replicated state (one device or DDP); the "
            f"{type(trainer.strategy).__name__} shards the model across ranks. Use strategy='ddp', or "
            "Lightning's ModelCheckpoint for sharded strategies"
        )


def check_optimizers(trainer: pl.Trainer) -> None:
    """Raise ConfigError for an optimizer that shards its state across ranks (ZeroRedundancyOptimizer).

    Such an optimizer's ``state_dict()`` holds the whole state only after ``consolidate_state_dict()``,
    a collective every rank must enter (Lightning's ``Strategy.optimizer_state`` calls it on all of
    them); the checkpoint system reads the state on rank 0 alone, and at saves the other ranks cannot
    foresee (time, detected changes, signals), so it could neither gather it nor save it fresh.
    """
    for i, optimizer in enumerate(trainer.optimizers):
        if hasattr(optimizer, "consolidate_state_dict"):  # the test Strategy.optimizer_state makes
            raise ConfigError(
                f"optimizer {i} is a {type(optimizer).__name__}, which shards its state across ranks; "
                "WeightslabCheckpoint saves replicated state from rank 0 and cannot gather it. Use a "
                "plain torch.optim optimizer with strategy='ddp', or Lightning's ModelCheckpoint"
            )


def epoch_exhausted(trainer: pl.Trainer) -> bool:
    """After a restore: whether the epoch loop resumes with no batch left (and will not start afresh)."""
    loop = trainer.fit_loop.epoch_loop
    if loop.restarted_on_train_batch_end:  # Lightning starts the next epoch on the loader made at setup
        return False
    return bool(loop.batch_progress.current.ready >= trainer.num_training_batches)


def last_batch(trainer: pl.Trainer) -> bool:
    """Whether the batch that just ended is its epoch's last."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def final_step(trainer: pl.Trainer, step: int) -> bool:
    """Whether the run ends with this step: ``max_steps`` reached, or the last batch of the last epoch."""
    if trainer.max_steps != -1 and step >= trainer.max_steps:
        return True
    max_epochs = trainer.max_epochs
    return max_epochs not in (None, -1) and last_batch(trainer) and trainer.current_epoch + 1 >= max_epochs


def validation_follows(trainer: pl.Trainer) -> bool:
    """At a batch end: whether Lightning runs a validation right after it, before the next batch.

    Lightning's own decision (``_TrainingEpochLoop.on_advance_end``): ``_should_check_val_fx``, unless
    the first batch after a resume skips the validation its checkpoint already saw. It reads
    ``enable_validation`` and ``check_val_every_n_epoch``, not ``num_val_batches``, which is empty
    until the first validation sets its loader up. A loader that turns out to have no batch runs no
    validation (and no ``on_validation_end``): the callback then records the step at the epoch's end.
    """
    loop, fetcher = trainer.fit_loop.epoch_loop, trainer.fit_loop._data_fetcher
    if fetcher is None or getattr(loop, "_skip_next_val", False):
        return False
    return bool(loop._should_check_val_fx(fetcher))
