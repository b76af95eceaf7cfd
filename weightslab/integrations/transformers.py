"""The Hugging Face ``Trainer`` adapter: a ``TrainerCallback`` that checkpoints the run with weightslab.

::

    cb = WeightslabCallback(root_log_dir="runs", checkpoint_frequency=50)
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
    trainer.train(resume_from_checkpoint=cb.resume_path())      # None on a fresh root

When a save happens: the decision is taken at ``on_step_end`` (``state.global_step`` after the
optimizer and scheduler steps) and the checkpoint is taken at the next event of the loop, after the
Trainer's ``_maybe_log_save_evaluate`` for that step: the next ``on_step_begin`` (mid-epoch), the next
``on_epoch_begin`` or ``on_train_end``. By then the step's logs and evaluation metrics are known (so
``keep_best`` compares the evaluation of that step), ``ReduceLROnPlateau`` has stepped, and the
random state is the one the Trainer restores when it resumes at that step (after fetching the
step's first batch mid-epoch, before the epoch's first fetch at an epoch boundary). The callback owns
the process-wide checkpoint system it opens and closes it at ``on_train_end``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as exc:  # the optional extra is not installed
    raise ImportError(
        "weightslab.integrations.transformers needs transformers >= 4.44: "
        "pip install 'weightslab[transformers]'"
    ) from exc

from weightslab.errors import ConfigError, SystemConfigurationError
from weightslab.format.trainers import (
    HF_ARGS,
    HF_MODEL,
    HF_OPTIMIZER,
    HF_PROGRESS,
    HF_SCALER,
    HF_SCHEDULER,
    TRAINING_ARGUMENTS,
)
from weightslab.integrations.transformers_state import (
    OWN_NAMES,
    TrainerProgress,
    find_trainer_parts,
    numeric_metrics,
    training_hyperparams,
    write_trainer_checkpoint,
)
from weightslab.registry.core import Ledger
from weightslab.registry.events import Kind
from weightslab.system.api import get_checkpoint_system
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig

log = logging.getLogger("weightslab")

__all__ = ["TRAINING_ARGUMENTS", "WeightslabCallback"]


class WeightslabCallback(TrainerCallback):
    """Checkpoints a ``transformers.Trainer`` run with weightslab and gives it what to resume from.

    Takes every option of ``get_checkpoint_system`` (``root_log_dir``, ``checkpoint_frequency``,
    ``keep_last``, ``keep_best``, ``monitor`` (a Trainer log key such as ``"eval_loss"``), ``mode``,
    ``every_n_epochs``, ``train_time_interval``, ``async_save``...), and:

    Args:
        save_on_train_end: save the last step at ``on_train_end`` (``trigger="last"``) when it is not
            saved yet; also the default of ``save_last`` (the save at interpreter exit).
        resume_dir: the folder under which :meth:`resume_path` builds the ``checkpoint-N/`` folder
            (default: the system's temporary folder). It is deleted once the Trainer has read it.

    Raises ConfigError at construction for an unknown or invalid option.
    """

    def __init__(
        self,
        *,
        save_on_train_end: bool = True,
        resume_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(save_on_train_end, bool):
            raise ConfigError(f"save_on_train_end must be True or False, got {save_on_train_end!r}")
        options.setdefault("save_last", save_on_train_end)
        CheckpointConfig.from_kwargs(**options)  # a bad option fails here, not at the first step
        self.save_on_train_end = save_on_train_end
        self._options = options
        self._resume_dir = None if resume_dir is None else Path(resume_dir).resolve()
        self.system: AutomaticCheckpointSystem | None = None
        self._owns_system = False
        self._progress = TrainerProgress()
        self._args: TrainingArguments | None = None
        self._registered: dict[tuple[Kind, str], object] = {}
        self._metrics: dict[str, float] = {}
        self._pending_step: int | None = None
        self._pending_epoch: int | None = None
        self._epoch = 0
        self._resumed_at: int | None = None
        self._folder: Path | None = None
        self._cleanup: weakref.finalize[Any, Any] | None = None

    # -- resuming ---------------------------------------------------------------------------------
    def resume_path(self) -> str | None:
        """Resume the weightslab run and return a ``checkpoint-N/`` folder for ``Trainer.train``.

        None on a fresh root. Otherwise the newest checkpoint that verifies, of the experiment active
        last, is found (``system.find_resume``), continued (``system.adopt``, journalled; the next saves
        continue that experiment, or branch from it when the model or the training arguments changed)
        and laid out as the Trainer's checkpoint files:
        ``model.safetensors``, ``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``,
        ``trainer_state.json`` (and ``scaler.pt``). The folder is deleted at the first
        ``on_step_begin`` (or ``on_train_end``) of the training that follows, when the Trainer has
        read all of it. The process RNG is left as it was: the Trainer restores the saved one itself.
        Raises CheckpointNotFoundError when no checkpoint verifies, RootLockedError when another
        process writes the root.
        """
        if self._folder is not None:
            return str(self._folder)
        system = self._open_system()
        if self._args is not None:
            # registered before adopt() restores the saved values into it, and updated with the live
            # ones at on_train_begin: the journal names exactly the arguments that changed
            self._register_args(system.ledger, self._args)
        found = system.find_resume("latest")
        if found is None:
            return None
        data, entry, exp_hash, skipped = found
        step = entry.step
        if self._resume_dir is not None:
            self._resume_dir.mkdir(parents=True, exist_ok=True)
        base = Path(tempfile.mkdtemp(prefix="weightslab-resume-", dir=self._resume_dir))
        self._cleanup = weakref.finalize(self, shutil.rmtree, base, ignore_errors=True)
        folder = base / f"checkpoint-{step}"
        # what the Trainer does not load from the folder: frozen parameters, the user's stateful objects
        # and hyperparameters (the training arguments included, see above)
        restore = {
            "frozen": data.get("frozen", {}),
            "extra": {k: v for k, v in data.get("extra", {}).items() if k not in OWN_NAMES},
            "hyperparams": data.get("hyperparams", {}),
        }
        try:
            written = write_trainer_checkpoint(folder, data)
            system.adopt(exp_hash, step, restore, skipped=skipped, mode="transformers")
        except BaseException:
            self._drop_folder()
            raise
        self._folder, self._resumed_at = folder, step
        log.info(
            "weightslab: step %d of %s laid out for the Trainer in %s (%s)", step, exp_hash, folder, written
        )
        return str(folder)

    def _drop_folder(self) -> None:
        if self._cleanup is not None:
            self._cleanup()  # removes the folder now, once
            self._cleanup = None
        self._folder = None

    # -- the Trainer's events ---------------------------------------------------------------------
    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Remember the training arguments, for :meth:`resume_path` before training starts."""
        self._args = args

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Register the model, optimizer, scheduler, arguments and Trainer state with the system.

        Raises ConfigError when :meth:`resume_path` resumed a step the Trainer does not start from.
        """
        system = self._open_system()
        if self._resumed_at is not None and state.global_step != self._resumed_at:
            raise ConfigError(
                f"resume_path() resumed the weightslab run at step {self._resumed_at} but the Trainer starts "
                f"at step {state.global_step}; call trainer.train(resume_from_checkpoint=callback.resume_path())"
            )
        self._args = args
        handler, trainer = find_trainer_parts()
        self._progress.handler = handler
        self._track(state, control)
        self._epoch = int(state.epoch or 0)
        ledger = system.ledger
        self._register(ledger, "model", HF_MODEL, kwargs["model"])
        optimizer = kwargs.get("optimizer")
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
        if isinstance(inner, torch.optim.Optimizer):
            self._register(ledger, "optimizer", HF_OPTIMIZER, inner)
        else:
            log.warning("weightslab: the Trainer's optimizer (%s) is not saved", type(optimizer).__name__)
        scheduler = kwargs.get("lr_scheduler")
        if callable(getattr(scheduler, "state_dict", None)) and callable(
            getattr(scheduler, "load_state_dict", None)
        ):
            self._register(ledger, "scheduler", HF_SCHEDULER, scheduler)
        scaler = getattr(getattr(trainer, "accelerator", None), "scaler", None)
        if scaler is not None:
            self._register(ledger, "stateful", HF_SCALER, scaler)
        self._register(ledger, "stateful", HF_PROGRESS, self._progress)
        self._register_args(ledger, args)

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Take the checkpoint the end of the last epoch decided (before this epoch fetches data)."""
        self._track(state, control)
        self._flush()
        self._epoch = int(state.epoch or 0)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Take the checkpoint the last step decided; drop the resume folder, read by now."""
        self._track(state, control)
        self._flush()
        self._drop_folder()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Mark the update step ``state.global_step`` done: saved at the next event if it is due."""
        self._track(state, control)
        self._flush()
        self._pending_step = state.global_step

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Mark the epoch ended (for ``every_n_epochs``), saved once its evaluation is logged."""
        self._track(state, control)
        self._pending_epoch = self._epoch

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Keep the latest value of every number the Trainer logs, as the next checkpoint's metrics."""
        self._metrics.update(numeric_metrics(logs or {}))

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Keep the evaluation metrics (``eval_loss``...) as the next checkpoint's metrics."""
        self._metrics.update(numeric_metrics(metrics or {}))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Save what is due and (``save_on_train_end``) the last step; wait for the writes; close."""
        self._track(state, control)
        self._drop_folder()
        system = self.system
        if system is None or system.closed:
            return
        self._flush()
        if self.save_on_train_end and state.global_step > 0:
            system.save(step=state.global_step, metrics=dict(self._metrics), trigger="last")
        system.flush()
        if self._owns_system:
            system.close()
            for (kind, name), obj in self._registered.items():
                try:
                    if system.ledger.get(kind, name) is obj:
                        system.ledger.unregister(kind, name)
                except KeyError:
                    pass
            self._registered.clear()
            self.system = None
        self._resumed_at = None

    # -- helpers --------------------------------------------------------------------------------
    def _open_system(self) -> AutomaticCheckpointSystem:
        """The process-wide system with this callback's options (opened, and then owned, if none is)."""
        if self.system is not None and not self.system.closed:
            return self.system
        try:
            get_checkpoint_system(auto_init=False)
            existed = True
        except SystemConfigurationError:
            existed = False
        # SystemConfigurationError when a system with other options is open: it names the difference
        self.system = get_checkpoint_system(**self._options)
        self._owns_system = not existed
        return self.system

    def _track(self, state: TrainerState, control: TrainerControl) -> None:
        # the Trainer replaces both when it starts or resumes; the events always pass the live ones
        self._progress.state = state
        self._progress.control = control

    def _register(self, ledger: Ledger, kind: Kind, name: str, obj: object) -> None:
        ledger.register(kind, name, obj)
        self._registered[(kind, name)] = ledger.get(kind, name)  # models are stored unwrapped

    def _register_args(self, ledger: Ledger, args: TrainingArguments) -> None:
        values = training_hyperparams(args)
        if ("hyperparams", HF_ARGS) in self._registered:
            ledger.update_hyperparams(HF_ARGS, values)  # in place: the change detector compares with it
        else:
            self._registered[("hyperparams", HF_ARGS)] = ledger.register_hyperparams(HF_ARGS, values)

    def _flush(self) -> None:
        """Hand the step (and the epoch end) marked done to the system, which saves what is due."""
        system = self.system
        step, self._pending_step = self._pending_step, None
        epoch, self._pending_epoch = self._pending_epoch, None
        if system is None or system.closed:
            return
        if step is not None:
            system.checkpoint_on_step(step, dict(self._metrics))
        state = self._progress.state
        if epoch is not None and state is not None and state.global_step > 0:
            system.checkpoint_on_epoch_end(epoch, dict(self._metrics), step=state.global_step)
