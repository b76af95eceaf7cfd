"""The names under which the trainer integrations file their state in a step file.

The Lightning callback (``weightslab.integrations.lightning``) and the Hugging Face ``Trainer``
callback (``weightslab.integrations.transformers``) register the trainer's objects in the ledger
under fixed names, so they land in the step file's sections under those names. The import
(``weightslab.inspect.importing*``) files a Lightning ``.ckpt`` or a ``checkpoint-N/`` folder under
the same names, so that the integration resumes it as one of its own. Every name here
is part of the on-disk format: step files already saved, imports and resumes depend on it, and a
renamed one would leave them unresumable by the integration. The integrations sit above ``inspect/``,
which cannot import them; both import these names from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "HF_ARGS",
    "HF_MODEL",
    "HF_OPTIMIZER",
    "HF_PROGRESS",
    "HF_PROGRESS_JSON",
    "HF_SCALER",
    "HF_SCHEDULER",
    "LIGHTNING_DATAMODULE_HPARAMS",
    "LIGHTNING_DM_KEY",
    "LIGHTNING_HPARAMS",
    "LIGHTNING_MODEL",
    "LIGHTNING_ORDER",
    "LIGHTNING_OWN_SECTIONS",
    "LIGHTNING_STATE",
    "TRAINING_ARGUMENTS",
    "hf_progress",
    "lightning_extra",
    "numbered",
]


def numbered(kind: str, count: int) -> list[str]:
    """Names for ``count`` states: ``optimizer`` for one, else ``optimizer_0``, ``optimizer_1``...

    The names of a Lightning run's optimizers and schedulers in the step file (and of an imported
    torch file's list of them); a resume matches the saved states to the live ones by them.
    """
    return [kind] if count == 1 else [f"{kind}_{i}" for i in range(count)]


# -- Lightning ------------------------------------------------------------------------------------------
# models[...]: to_lightning() hands this model's state back as Lightning's "state_dict".
LIGHTNING_MODEL = "model"
# hyperparams[...]: the sets of self.hparams and the datamodule's hparams; they count in the
# experiment hash, so an imported .ckpt and the run that continues it must use the same names.
LIGHTNING_HPARAMS = "hparams"
LIGHTNING_DATAMODULE_HPARAMS = "datamodule_hparams"
# extra[...]: the rest of Lightning's checkpoint (loops, callback states, epoch, global step), which
# Trainer.fit(ckpt_path=...) restores from when it resumes a step file.
LIGHTNING_STATE = "lightning"
# extra["lightning"][...]: the registered names of the optimizers and schedulers in Lightning's
# order, by which the lists optimizer_states and lr_schedulers are rebuilt.
LIGHTNING_ORDER = "weightslab_order"
# Lightning's checkpoint keys that the step file holds in its own sections (models, optimizers,
# schedulers, hyperparams), hence not in extra["lightning"].
LIGHTNING_OWN_SECTIONS: tuple[str, ...] = (
    "state_dict",
    "optimizer_states",
    "lr_schedulers",
    "hyper_parameters",
)
# Lightning's key for the datamodule's hyperparameters, kept as the set LIGHTNING_DATAMODULE_HPARAMS.
LIGHTNING_DM_KEY = "datamodule_hyper_parameters"


def lightning_extra(
    checkpoint: Mapping[str, Any], optimizers: list[str], schedulers: list[str]
) -> dict[str, Any]:
    """``extra["lightning"]`` for a Lightning checkpoint dict: what the step file's own sections do not
    hold, with the names of its ``optimizers`` and ``schedulers`` in Lightning's order."""
    rest = {k: v for k, v in checkpoint.items() if k not in LIGHTNING_OWN_SECTIONS and k != LIGHTNING_DM_KEY}
    rest[LIGHTNING_ORDER] = {"optimizers": list(optimizers), "schedulers": list(schedulers)}
    return rest


# -- Hugging Face Trainer -----------------------------------------------------------------------------------
# models[...], optimizers[...], schedulers[...]: the Trainer has one of each, and resume_path() writes
# them back as model.safetensors, optimizer.pt and scheduler.pt.
HF_MODEL, HF_OPTIMIZER, HF_SCHEDULER = "model", "optimizer", "scheduler"
# hyperparams[...]: the set of TRAINING_ARGUMENTS; it counts in the experiment hash, so an imported
# checkpoint-N/ folder and the run that continues it must use the same name.
HF_ARGS = "training_args"
# extra[...]: the Trainer's progress (trainer_state.json) and its gradient scaler (scaler.pt).
HF_PROGRESS, HF_SCALER = "trainer_state", "grad_scaler"
# extra["trainer_state"][...]: the text of trainer_state.json, written back as is when resuming.
HF_PROGRESS_JSON = "trainer_state_json"


def hf_progress(trainer_state_json: str) -> dict[str, Any]:
    """``extra["trainer_state"]`` for the text of a ``trainer_state.json`` (``format`` 1: this layout)."""
    return {"format": 1, HF_PROGRESS_JSON: trainer_state_json}


TRAINING_ARGUMENTS: tuple[str, ...] = (
    # optimisation
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "optim",
    "optim_args",
    "optim_target_modules",
    "label_smoothing_factor",
    "neftune_noise_alpha",
    # batches and length of training
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "average_tokens_across_devices",
    "auto_find_batch_size",
    "num_train_epochs",
    "max_steps",
    # randomness and data order
    "seed",
    "data_seed",
    "full_determinism",
    "train_sampling_strategy",
    "group_by_length",
    "dataloader_drop_last",
    # precision
    "bf16",
    "fp16",
    "tf32",
    "half_precision_backend",
    "fp16_opt_level",
)
"""The TrainingArguments fields that change what training computes, hence the experiment hash.

Fixed because they are hashed: a field added or removed changes the hash of every Trainer run, and
an imported ``checkpoint-N/`` (read from its ``training_args.bin``) would no longer match the run
that continues it. Fields a transformers version does not have are left out. Paths, logging,
evaluation, saving, reporting and data-loading performance options (``output_dir``,
``logging_steps``, ``save_steps``, ``eval_steps``, ``report_to``, ``dataloader_num_workers``...) do
not count.
"""
