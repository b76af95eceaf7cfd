"""weightslab: automatic, ledger-integrated checkpointing for PyTorch training.

Register what a run trains once, call ``checkpoint_on_step(step)`` in the loop, and every
experiment is saved, named by its architecture and hyperparameters, traceable and resumable.
"""

from weightslab.components import (
    AutomaticCheckpointSystem,
    CheckpointManager,
    checkpoint_on_config_change,
    checkpoint_on_epoch_end,
    checkpoint_on_model_change,
    checkpoint_on_state_change,
    checkpoint_on_step,
    get_checkpoint_system,
)
from weightslab.registry.ledger import (
    Ledger,
    LedgerEvent,
    clear_ledger,
    get_hyperparams,
    get_ledger,
    get_model,
    get_optimizer,
    get_scheduler,
    get_stateful,
    list_hyperparams,
    list_models,
    list_optimizers,
    list_schedulers,
    on_hyperparams_change,
    register_hyperparams,
    register_model,
    register_optimizer,
    register_scheduler,
    register_stateful,
    set_hyperparam,
    unregister_hyperparams,
    unregister_model,
    unregister_optimizer,
    unregister_scheduler,
)
from weightslab.registry.watch import apply_lr_changes

__version__ = "0.1.0"

__all__ = [
    "AutomaticCheckpointSystem",
    "CheckpointManager",
    "Ledger",
    "LedgerEvent",
    "__version__",
    "apply_lr_changes",
    "checkpoint_on_config_change",
    "checkpoint_on_epoch_end",
    "checkpoint_on_model_change",
    "checkpoint_on_state_change",
    "checkpoint_on_step",
    "clear_ledger",
    "get_checkpoint_system",
    "get_hyperparams",
    "get_ledger",
    "get_model",
    "get_optimizer",
    "get_scheduler",
    "get_stateful",
    "list_hyperparams",
    "list_models",
    "list_optimizers",
    "list_schedulers",
    "on_hyperparams_change",
    "register_hyperparams",
    "register_model",
    "register_optimizer",
    "register_scheduler",
    "register_stateful",
    "set_hyperparam",
    "unregister_hyperparams",
    "unregister_model",
    "unregister_optimizer",
    "unregister_scheduler",
]
