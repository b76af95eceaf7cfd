"""The checkpointing components: the automatic system, the manager of one root, and hashing."""

from weightslab.components.auto_checkpoint import (
    AutomaticCheckpointSystem,
    checkpoint_on_config_change,
    checkpoint_on_model_change,
    checkpoint_on_state_change,
    checkpoint_on_step,
    get_checkpoint_system,
)
from weightslab.components.checkpoint_manager import CheckpointManager, VerifyReport
from weightslab.components.config import CheckpointConfig
from weightslab.components.experiment_hash import ExperimentHashGenerator, ExperimentIdentity
from weightslab.components.manifest import CheckpointEntry, Manifest, ParentRef
from weightslab.components.policy import RetentionPolicy

__all__ = [
    "AutomaticCheckpointSystem",
    "CheckpointConfig",
    "CheckpointEntry",
    "CheckpointManager",
    "ExperimentHashGenerator",
    "ExperimentIdentity",
    "Manifest",
    "ParentRef",
    "RetentionPolicy",
    "VerifyReport",
    "checkpoint_on_config_change",
    "checkpoint_on_model_change",
    "checkpoint_on_state_change",
    "checkpoint_on_step",
    "get_checkpoint_system",
]
