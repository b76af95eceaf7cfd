"""Adapters of the checkpoint system to the trainers and checkpoint APIs users already have.

- ``weightslab.integrations.lightning``: ``WeightslabCheckpoint``, a Lightning callback.
- ``weightslab.integrations.transformers``: ``WeightslabCallback``, a Hugging Face ``TrainerCallback``.
- ``weightslab.integrations.checkpointer``: ``Checkpointer`` (rolling latest, numbered, best).
- ``weightslab.integrations.callbacks``: ``CheckpointCallback``/``AsyncCheckpointCallback`` configured
  by ``CheckpointParameters``, for a loop of your own, and ``find_checkpoints``.
- ``weightslab.integrations.manager``: a ``CheckpointManager`` with tags, comparison, backups, export.

The Lightning and transformers modules import their framework, so they are imported only by name,
never from here: ``import weightslab`` never imports Lightning or transformers. The others import no
framework, and their main names are re-exported here.
"""

from weightslab.integrations.callbacks import (
    AsyncCheckpointCallback,
    CheckpointCallback,
    CheckpointInfo,
    CheckpointParameters,
    as_trainer_checkpoint,
    find_checkpoints,
)
from weightslab.integrations.checkpointer import Checkpointer

__all__ = [
    "AsyncCheckpointCallback",
    "CheckpointCallback",
    "CheckpointInfo",
    "CheckpointParameters",
    "Checkpointer",
    "as_trainer_checkpoint",
    "find_checkpoints",
]
