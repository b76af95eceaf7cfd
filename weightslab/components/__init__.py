"""The checkpointing components: the automatic system, the manager of one root, and hashing."""

from typing import TYPE_CHECKING

from weightslab.util.lazy import lazy_names

if TYPE_CHECKING:  # the names as mypy and editors see them; at run time they load on first use
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


# Loaded on first use (PEP 562), so that importing this package, or weightslab, imports no torch.
_LAZY = {
    "CheckpointEntry": "weightslab.format.manifest",
    "Manifest": "weightslab.format.manifest",
    "ParentRef": "weightslab.format.manifest",
    "ImportResult": "weightslab.inspect.importing",
    "import_checkpoint": "weightslab.inspect.importing",
    "RetentionPolicy": "weightslab.policy.retention",
    "CheckpointManager": "weightslab.store.manager",
    "VerifyReport": "weightslab.store.manager",
    "checkpoint_on_config_change": "weightslab.system.api",
    "checkpoint_on_epoch_end": "weightslab.system.api",
    "checkpoint_on_model_change": "weightslab.system.api",
    "checkpoint_on_state_change": "weightslab.system.api",
    "checkpoint_on_step": "weightslab.system.api",
    "get_checkpoint_system": "weightslab.system.api",
    "AutomaticCheckpointSystem": "weightslab.system.automatic",
    "CheckpointConfig": "weightslab.system.config",
    "ExperimentHashGenerator": "weightslab.system.identity",
    "ExperimentIdentity": "weightslab.system.identity",
}


__getattr__, __dir__ = lazy_names("weightslab.components", _LAZY, globals())


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
