"""What :class:`~weightslab.integrations.lightning.WeightslabCheckpoint` keeps of a Lightning run, and the way back.

A step file written through the callback holds the LightningModule under ``models["model"]``, the
optimizers and LR schedulers under their own sections (so that ``weightslab analyze`` and ``show``
see them), its hyperparameters under ``hyperparams["hparams"]``, and everything else that Lightning's
own checkpoint holds (loops, callback states, precision plugin, epoch and global step, the keys the
``on_save_checkpoint`` hooks add) under ``extra["lightning"]``. :func:`to_lightning` turns such a
step dict back into the dictionary ``Trainer.fit(ckpt_path=...)`` restores from, and
:class:`StepFileIO` is the ``CheckpointIO`` that does it when Lightning loads a step file. These
names are fixed in :mod:`weightslab.format.trainers`, which the import of a ``.ckpt`` shares.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

from weightslab.errors import (
    CheckpointCorruptedError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    HyperparamsError,
    UnsafePathError,
)
from weightslab.format.layout import parse_step_file
from weightslab.format.trainers import (
    LIGHTNING_DATAMODULE_HPARAMS,
    LIGHTNING_DM_KEY,
    LIGHTNING_HPARAMS,
    LIGHTNING_MODEL,
    LIGHTNING_ORDER,
    LIGHTNING_STATE,
    lightning_extra,
)
from weightslab.store.manager import CheckpointManager
from weightslab.system.resume import latest_candidates
from weightslab.util.canonical import canonicalize

log = logging.getLogger("weightslab")


class TrainerState:
    """The rest of Lightning's checkpoint, as a registered stateful object (``extra["lightning"]``).

    ``state_dict()`` runs Lightning's own ``dump_checkpoint`` (so every ``on_save_checkpoint`` hook
    runs, as with ModelCheckpoint) and leaves out what the step file holds in its own sections.
    With DDP the system calls it on rank 0 alone, where it saves: the hooks run there only and must
    not run collectives (an optimizer that needs one to gather its state is refused at fit start).
    Lightning restores this state itself through ``ckpt_path``; ``load_state_dict`` only keeps it.
    """

    def __init__(self, trainer: pl.Trainer, optimizers: list[str], schedulers: list[str]) -> None:
        self._trainer = trainer
        self._optimizers, self._schedulers = list(optimizers), list(schedulers)
        self.loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        checkpoint = self._trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        return lightning_extra(checkpoint, self._optimizers, self._schedulers)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.loaded = dict(state)


def to_lightning(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The checkpoint dictionary Lightning restores from, built from a step dict without copying tensors.

    Raises CheckpointFormatError when the step file was not written by WeightslabCheckpoint.
    """
    state = data.get("extra", {}).get(LIGHTNING_STATE)
    if not isinstance(state, Mapping) or LIGHTNING_MODEL not in data.get("models", {}):
        raise CheckpointFormatError(
            f"{where} was not saved by WeightslabCheckpoint (it has no extra[{LIGHTNING_STATE!r}] section or "
            f"no model {LIGHTNING_MODEL!r}); resume it with system.resume() in a plain loop, or pass a "
            "Lightning .ckpt"
        )
    checkpoint = {k: v for k, v in state.items() if k != LIGHTNING_ORDER}
    order = state.get(LIGHTNING_ORDER, {})
    checkpoint["state_dict"] = data["models"][LIGHTNING_MODEL]
    checkpoint["optimizer_states"] = [data["optimizers"][n] for n in order.get("optimizers", [])]
    checkpoint["lr_schedulers"] = [data["schedulers"][n] for n in order.get("schedulers", [])]
    hyperparams = data.get("hyperparams", {})
    if LIGHTNING_HPARAMS in hyperparams:
        checkpoint["hyper_parameters"] = dict(hyperparams[LIGHTNING_HPARAMS])
    if LIGHTNING_DATAMODULE_HPARAMS in hyperparams:
        checkpoint[LIGHTNING_DM_KEY] = dict(hyperparams[LIGHTNING_DATAMODULE_HPARAMS])
    return checkpoint


def plain_hparams(hparams: Mapping[str, Any], owner: str) -> Mapping[str, Any]:
    """``hparams`` itself when every value can be hashed and saved, else a copy without the others (warned).

    The live mapping is registered when it can be, so that a change of ``self.hparams`` during
    training is recorded like any hyperparameter change.
    """
    try:
        canonicalize(hparams, LIGHTNING_HPARAMS)
        return hparams
    except HyperparamsError:
        pass
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in hparams.items():
        try:
            canonicalize({key: value}, LIGHTNING_HPARAMS)
            kept[key] = value
        except HyperparamsError:
            dropped.append(f"{key} ({type(value).__name__})")
    log.warning(
        "weightslab: %s hyperparameters %s are not plain values (str, numbers, bool, None, lists or "
        "mappings of them); they do not count in the experiment hash and are not saved. Exclude them "
        "with self.save_hyperparameters(ignore=[...])",
        owner,
        ", ".join(dropped),
    )
    return kept


def metrics_of(trainer: pl.Trainer) -> dict[str, float]:
    """``trainer.callback_metrics`` (what ``self.log`` recorded) as floats; non-scalar values are left out."""
    out: dict[str, float] = {}
    for key, value in trainer.callback_metrics.items():
        number: Any = value
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            number = value.item()
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            out[key] = float(number)
    return out


def locate_step_file(path: str | os.PathLike[str]) -> tuple[Path, str, int] | None:
    """(root, exp_hash, step) when ``path`` names a step file ``{root}/checkpoints/{h}/model/{h}_step_N.pt``."""
    p = Path(os.fspath(path)).expanduser()
    parsed = parse_step_file(p.name)
    if parsed is None:
        return None
    exp_hash, step = parsed
    model_dir = p.parent
    exp_dir = model_dir.parent
    if model_dir.name != "model" or exp_dir.name != exp_hash or exp_dir.parent.name != "checkpoints":
        return None
    return exp_dir.parent.parent.resolve(), exp_hash, step


@dataclass(frozen=True)
class Offered:
    """The step file :func:`newest_verified` chose, and the files it skipped on the way."""

    path: Path
    exp_hash: str
    step: int
    skipped: list[str] = field(default_factory=list)


def newest_verified(manager: CheckpointManager) -> Offered | None:
    """The newest checkpoint that verifies, of the experiment active last, as ``resume()`` would pick it.

    Its live run newest first, then its ancestors from the checkpoint it branched from. None when the
    root holds no checkpoint. Raises CheckpointNotFoundError when checkpoints exist but none verifies,
    CheckpointFormatError for a sharded checkpoint (saved by FSDP), which Lightning cannot load here.
    """
    exp_hash = manager.last_active()
    if exp_hash is None:
        return None
    tried = latest_candidates(manager, exp_hash)
    if not tried:
        return None
    skipped: list[str] = []
    for h, entry in tried:
        if entry.shards:
            raise CheckpointFormatError(
                f"checkpoint {h} step {entry.step} is sharded (saved under FSDP); WeightslabCheckpoint resumes "
                "replicated state only (one device or DDP)"
            )
        try:
            path = manager.verify_entry(h, entry)
        except (CheckpointCorruptedError, UnsafePathError) as exc:
            skipped.append(f"{h}/{entry.file}")
            log.warning("weightslab: skipping %s/%s: %s", h, entry.file, exc)
            continue
        return Offered(Path(path), h, entry.step, skipped)
    raise CheckpointNotFoundError(
        f"no checkpoint of experiment {exp_hash} in {manager.root} verifies (tried {len(skipped)}: "
        f"{', '.join(skipped)}); run `weightslab verify {manager.root}` for details"
    )


class StepFileIO(CheckpointIO):
    """Lightning's ``CheckpointIO`` with weightslab step files readable: anything else goes to ``inner``.

    ``load`` gets (root, exp_hash, step) of a step file and returns Lightning's checkpoint dictionary.
    Saving and removing are ``inner``'s: the callback saves through the checkpoint system, not here.
    """

    def __init__(self, inner: CheckpointIO, load: Callable[[Path, str, int], dict[str, Any]]) -> None:
        self.inner = inner
        self._load = load

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        found = locate_step_file(path) if isinstance(path, (str, os.PathLike)) else None
        if found is None:
            return self.inner.load_checkpoint(path, *args, **kwargs)
        return self._load(*found)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()
