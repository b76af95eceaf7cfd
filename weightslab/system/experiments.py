"""The active experiment: its identity, opening its folder, and switching to a new one on a change.

The tracker holds what identifies the experiment being trained (hashes, the canonical
hyperparameters and module records it was opened with, the checkpoint a child would branch from)
and journals each switch. It never saves: the system decides that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from weightslab.errors import WeightslabError
from weightslab.format.manifest import ParentRef
from weightslab.registry.ledger import Ledger, changed_keys
from weightslab.store.manager import CheckpointManager
from weightslab.system.changes import ChangeDetector, module_diff, module_names
from weightslab.system.config import CheckpointConfig
from weightslab.system.errors_policy import ErrorPolicy
from weightslab.system.identity import ExperimentHashGenerator, ExperimentIdentity
from weightslab.system.sharded import is_sharded
from weightslab.util.canonical import canonicalize

log = logging.getLogger("weightslab")


class ExperimentTracker:
    """Which experiment the registered state belongs to, and the folder it is saved in."""

    def __init__(
        self,
        manager: CheckpointManager,
        ledger: Ledger,
        config: CheckpointConfig,
        detector: ChangeDetector,
        errors: ErrorPolicy,
    ) -> None:
        self.manager = manager
        self.ledger = ledger
        self.config = config
        self.detector = detector
        self.errors = errors
        self.hasher = ExperimentHashGenerator(config.exclude_hyperparams)
        self.identity: ExperimentIdentity | None = None
        self.branch_from: tuple[str, int] | None = None  # the checkpoint a child branches from
        self.unopened: tuple[ExperimentIdentity, ParentRef | None] | None = None  # an open that failed
        self._hp_canonical: dict[str, Any] = {}
        self._arch_modules: dict[str, dict[str, str]] = {}

    def identity_now(self) -> ExperimentIdentity:
        """The identity of the registered models and hyperparameters as they are now."""
        return self.hasher.identity(self.ledger.items("model"), self.ledger.items("hyperparams"))

    def live_hyperparams_hash(self) -> str:
        """The hyperparameter hash as it is now (cheaper than the full identity)."""
        return self.hasher.hyperparams_hash(self.ledger.items("hyperparams"))

    def adopt(self, ident: ExperimentIdentity) -> None:
        """Make ``ident`` active with the registered state as its baseline."""
        self.identity = ident
        self._hp_canonical = self.hasher.hyperparams(self.ledger.items("hyperparams"))
        self._arch_modules = module_names(self.ledger.items("model"))
        self.detector.rebaseline()

    def begin(self, step: int, rewind: Callable[[str, int, str], None]) -> None:
        """The first step: the configuration active now is the first experiment (setup is not a change)."""
        ident = self.identity_now()
        created = self.try_open(ident, None, step)
        if created is False:
            latest = self.manager.manifest(ident.exp_hash).latest()
            self.manager.event("experiment_activated", exp_hash=ident.exp_hash, step=step, reason="start")
            if latest is not None and latest.step >= step:
                log.warning(
                    "weightslab: experiment %s already has checkpoints up to step %d and this run did not "
                    "resume(); saves at the same steps will replace them",
                    ident.exp_hash,
                    latest.step,
                )
                rewind(ident.exp_hash, step - 1, "the step counter restarted")
        self.adopt(ident)

    def try_open(self, ident: ExperimentIdentity, parent: ParentRef | None, step: int) -> bool | None:
        """Open the experiment folder; True if created, False if it existed, None if it failed.

        A failure (a full or read-only disk) is reported like a failed save and does not stop training:
        the experiment becomes active anyway and the next save of it tries to open it again.
        """
        try:
            created = self._open(ident, parent)
        except (OSError, WeightslabError) as exc:
            self.unopened = (ident, parent)
            self.errors.failed(exc, ident.exp_hash, step, what="opening experiment")
            self.errors.report([exc])
            return None
        self.unopened = None
        return created

    def reopen_if_needed(self, step: int) -> bool:
        """Retry the failed open of the active experiment; False while it still cannot be opened."""
        unopened = self.unopened
        assert self.identity is not None
        if unopened is None or unopened[0].exp_hash != self.identity.exp_hash:
            return True
        return self.try_open(unopened[0], unopened[1], step) is not None

    def _open(self, ident: ExperimentIdentity, parent: ParentRef | None) -> bool:
        retention = self.config.retention()
        if self.manager.has_experiment(ident.exp_hash):
            self.manager.record_retention(ident.exp_hash, retention)
        _, created = self.manager.create_experiment(
            exp_hash=ident.exp_hash,
            architecture_hash=ident.architecture_hash,
            hyperparams_hash=ident.hyperparams_hash,
            parent=parent,
            retention=retention,
            hyperparams=self._full_hyperparams(),
            models=self.ledger.items("model"),
            # a sharded module cannot be copied for the pickle (FSDP refuses deepcopy); the JSON
            # record and the text summary are still written
            save_architecture=self.config.save_architecture and not is_sharded(self.ledger.items("model")),
        )
        return bool(created)

    def _full_hyperparams(self) -> dict[str, Any]:
        """Every registered set, canonical, excluded keys included (they are restored on resume)."""
        return {name: canonicalize(hp, name) for name, hp in self.ledger.items("hyperparams").items()}

    def switch(self, ident: ExperimentIdentity, reason: str, step: int) -> None:
        """Make ``ident`` active as a child of the active experiment; journal what changed.

        The caller waits for the writer first: the parent's newest checkpoint must be committed to
        be referenced.
        """
        assert self.identity is not None
        old = self.identity
        parent = ParentRef(old.exp_hash, step, reason, checkpoint=self._parent_checkpoint(old.exp_hash))
        self._journal_change(old, ident, reason, step)
        created = self.try_open(ident, parent, step)
        if created is False:
            self.manager.event(
                "experiment_activated",
                exp_hash=ident.exp_hash,
                previous=old.exp_hash,
                step=step,
                reason=reason,
            )
        log.info(
            "weightslab: %s at step %d: experiment %s -> %s%s",
            reason,
            step,
            old.exp_hash,
            ident.exp_hash,
            " (returning to an earlier configuration)" if created is False else "",
        )
        self.adopt(ident)
        self.branch_from = None

    def _parent_checkpoint(self, exp_hash: str) -> int | None:
        """The checkpoint a child of ``exp_hash`` continues from: the resumed one, else the newest."""
        if self.branch_from is not None and self.branch_from[0] == exp_hash:
            return self.branch_from[1]
        latest = self.manager.manifest(exp_hash).latest() if self.manager.has_experiment(exp_hash) else None
        return None if latest is None else latest.step

    def _journal_change(
        self, old: ExperimentIdentity, ident: ExperimentIdentity, reason: str, step: int
    ) -> None:
        details: dict[str, Any] = {}
        if reason == "config_change" or ident.hyperparams_hash != old.hyperparams_hash:
            new_hp = self.hasher.hyperparams(self.ledger.items("hyperparams"))
            details["changed_keys"] = list(changed_keys(self._hp_canonical, new_hp))
        if ident.architecture_hash != old.architecture_hash:
            details["modules"] = module_diff(self._arch_modules, module_names(self.ledger.items("model")))
        self.manager.event(
            "change_detected",
            kind=reason,
            exp_hash=ident.exp_hash,
            previous=old.exp_hash,
            step=step,
            **details,
        )
