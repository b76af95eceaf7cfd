"""The checkpointing components: the automatic system, the manager of one root, and hashing."""

from weightslab.format.manifest import CheckpointEntry, Manifest, ParentRef
from weightslab.inspect.importing import ImportResult, import_checkpoint
from weightslab.policy.retention import RetentionPolicy
from weightslab.store.manager import CheckpointManager, VerifyReport
from weightslab.system.api import (
    checkpoint_on_config_change,
    checkpoint_on_epoch_end,
    checkpoint_on_model_change,
    checkpoint_on_state_change,
    checkpoint_on_step,
    get_checkpoint_system,
)
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig
from weightslab.system.identity import ExperimentHashGenerator, ExperimentIdentity

__all__ = [
    "AutomaticCheckpointSystem",
    "CheckpointConfig",
    "CheckpointEntry",
    "CheckpointManager",
    "ExperimentHashGenerator",
    "ExperimentIdentity",
    "ImportResult",
    "Manifest",
    "ParentRef",
    "RetentionPolicy",
    "VerifyReport",
    "checkpoint_on_config_change",
    "checkpoint_on_epoch_end",
    "checkpoint_on_model_change",
    "checkpoint_on_state_change",
    "checkpoint_on_step",
    "get_checkpoint_system",
    "import_checkpoint",
]
