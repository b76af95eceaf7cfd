"""weightslab: automatic, ledger-integrated checkpointing for PyTorch training.

Register what a run trains once, call ``checkpoint_on_step(step)`` in the loop, and every
experiment is saved, named by its architecture and hyperparameters, traceable and resumable.
"""

from typing import TYPE_CHECKING

from weightslab.util.lazy import lazy_names

if TYPE_CHECKING:  # the names as mypy and editors see them; at run time they load on first use
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


# Importing weightslab costs nothing until a name is used: `weightslab ls` and the other read-only
# commands never touch torch, and a training script pays for what it uses (PEP 562).
_LAZY = {
    "AutomaticCheckpointSystem": "weightslab.components",
    "CheckpointManager": "weightslab.components",
    "checkpoint_on_config_change": "weightslab.components",
    "checkpoint_on_epoch_end": "weightslab.components",
    "checkpoint_on_model_change": "weightslab.components",
    "checkpoint_on_state_change": "weightslab.components",
    "checkpoint_on_step": "weightslab.components",
    "get_checkpoint_system": "weightslab.components",
    "Ledger": "weightslab.registry.ledger",
    "LedgerEvent": "weightslab.registry.ledger",
    "clear_ledger": "weightslab.registry.ledger",
    "get_hyperparams": "weightslab.registry.ledger",
    "get_ledger": "weightslab.registry.ledger",
    "get_model": "weightslab.registry.ledger",
    "get_optimizer": "weightslab.registry.ledger",
    "get_scheduler": "weightslab.registry.ledger",
    "get_stateful": "weightslab.registry.ledger",
    "list_hyperparams": "weightslab.registry.ledger",
    "list_models": "weightslab.registry.ledger",
    "list_optimizers": "weightslab.registry.ledger",
    "list_schedulers": "weightslab.registry.ledger",
    "on_hyperparams_change": "weightslab.registry.ledger",
    "register_hyperparams": "weightslab.registry.ledger",
    "register_model": "weightslab.registry.ledger",
    "register_optimizer": "weightslab.registry.ledger",
    "register_scheduler": "weightslab.registry.ledger",
    "register_stateful": "weightslab.registry.ledger",
    "set_hyperparam": "weightslab.registry.ledger",
    "unregister_hyperparams": "weightslab.registry.ledger",
    "unregister_model": "weightslab.registry.ledger",
    "unregister_optimizer": "weightslab.registry.ledger",
    "unregister_scheduler": "weightslab.registry.ledger",
    "apply_lr_changes": "weightslab.registry.watch",
}


__getattr__, __dir__ = lazy_names("weightslab", _LAZY, globals())


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
