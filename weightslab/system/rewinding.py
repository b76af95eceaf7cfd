"""Going back: ``resume()``, and a step counter that goes backwards.

Both rewind the active experiment to a step: the live checkpoints after it are marked abandoned
(manifest and journal) so that "latest" and retention follow the run that continues. The search for
the checkpoint to load is in :mod:`.resume`, the restore into the ledger in :mod:`.restore`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch

from weightslab.errors import CheckpointNotFoundError, ConfigError, StepOrderError, WeightslabError
from weightslab.format.manifest import CheckpointEntry
from weightslab.store.split_check import SplitCheck
from weightslab.system import resume as resume_search
from weightslab.system import sharded
from weightslab.system.identity import ExperimentIdentity
from weightslab.system.parts import SystemParts
from weightslab.system.restore import restore_state
from weightslab.system.resume import ResumeMode
from weightslab.system.snapshot import restore_rng
from weightslab.system.verifying import Background, PendingCheck

log = logging.getLogger("weightslab")

Found = tuple[dict[str, Any], CheckpointEntry, str, list[str]]
"""A loaded checkpoint: its step dict, its entry, its experiment and the files skipped before it."""

Verify = Literal["split", "now", "background"]
VERIFY_MODES: tuple[Verify, ...] = ("split", "now", "background")


class Rewinding(SystemParts):
    """``resume`` and the handling of steps that go back."""

    def resume(self, mode: ResumeMode = "latest", *, verify: Verify = "split") -> int:
        """Restore every registered object from the run's newest checkpoint that verifies.

        ``mode`` is "latest", "best" (by the configured ``monitor``) or a step number of the active
        experiment. Returns the step to continue from (0 on a fresh root). Raises
        ArchitectureMismatchError when a registered model does not fit the checkpoint,
        CheckpointNotFoundError when nothing verifies.

        What is checked before it returns depends on ``verify``:

        - ``"split"`` (the default): resume returns once every block of the step file holding anything but
          optimizer state tensors passed its check (models, schedulers, other state, RNG); the
          blocks of the optimizers' moments, which only the optimizer uses, are checked on a
          helper thread, and each registered optimizer's ``step()`` and ``state_dict()``, every save,
          :meth:`wait_verified`, ``close()`` and the next ``resume()`` wait for them first, raising
          UnverifiedStateError when one failed (nothing is stepped or saved from that state). A
          step file without block digests (under two blocks) is checked whole before it returns.
        - ``"now"``: returns once the whole step file passed.
        - ``"background"``: returns once the state is restored, the whole checksum behind the same
          gates (the model itself may be read before it passed).

        The deferred check applies only to the active experiment's newest live checkpoint (a resume
        that rewinds nothing), in one process whose registered optimizers are all torch optimizers
        (at least one); everything else is verified before it returns, and a checkpoint the journal
        records as unreadable before anything is restored from it.
        """
        if verify not in VERIFY_MODES:
            raise ConfigError(
                f"resume(verify={verify!r}): use verify='split' (the default), 'now' or 'background'"
            )
        with self._lock:
            self._check_open()
            self._settle_verification()
            failed = self._verifying  # a failed background check: it gates until a restore replaces it
            if self._writer is not None:
                self._writer.wait()
            restored = not self._group.distributed  # restored while its checksum is computed
            found = self._resume_agreed(mode, restore=restored, verify=verify)
            if found is None:
                return 0
            data, entry, source_hash, skipped = found
            self._drop_check(failed)
            if not restored:
                self._restore_found(data, entry, source_hash)
            self._continue_resumed(entry, source_hash, f"resume({mode!r})")
            self.manager.event(
                "resumed",
                exp_hash=source_hash,
                step=entry.step,
                file=entry.file,
                skipped=skipped,
                mode=str(mode),
            )
            log.info("weightslab: resumed %s at step %d from %s", source_hash, entry.step, entry.file)
            return entry.step + 1

    def find_resume(self, mode: ResumeMode = "latest") -> Found | None:
        """The checkpoint ``resume(mode)`` would restore, found and verified without restoring anything.

        For trainers that restore the state themselves and then call :meth:`adopt`: returns its
        verified step dict, its entry, its experiment hash and the files skipped before it; None on a
        fresh root. Registered objects, the RNG and the active experiment are left as they are. Raises
        CheckpointNotFoundError when nothing verifies.
        """
        with self._lock:
            self._check_open()
            if self._writer is not None:
                self._writer.wait()
            return self._resume_agreed(mode)

    def wait_verified(self) -> None:
        """Wait for the deferred check of a resume (the optimizer's moments after the default
        ``verify="split"``, the whole file after ``"background"``); returns at once if none runs.

        Raises UnverifiedStateError when it failed: the registered objects hold unverified state
        (call ``resume()`` again).
        """
        with self._lock:
            self._gate()

    def _gate(self) -> None:
        """Wait for a background checksum; UnverifiedStateError when it failed. Once passed it is gone."""
        pending = self._verifying
        if pending is not None:
            pending.wait()
            self._drop_check(pending)

    def _settle_verification(self) -> bool:
        """Wait for a background checksum without raising (a failure is logged); whether it passed.

        A passed check is dropped; a failed one keeps gating until a restore replaces the state.
        """
        pending = self._verifying
        if pending is None or pending.passed():
            self._drop_check(pending)
            return True
        return False

    def _drop_check(self, pending: PendingCheck | None) -> None:
        """Forget ``pending`` (passed, or its state restored over) and remove its step hooks."""
        if pending is not None:
            pending.release()
            if self._verifying is pending:
                self._verifying = None

    def adopt(
        self,
        exp_hash: str,
        step: int,
        restore: Mapping[str, Any] | None = None,
        *,
        skipped: Iterable[str] = (),
        mode: str = "external",
    ) -> None:
        """Continue checkpoint ``step`` of ``exp_hash``, whose state a trainer's own restore loaded.

        What :meth:`resume` does after loading, without loading again: ``restore`` holds the step-dict
        sections still to put back (``frozen``, ``extra``, ``hyperparams``; not models or optimizers),
        the checkpoint is protected from retention, later ones are abandoned, and ``resumed`` is
        journalled with ``mode`` and the ``skipped`` files. Raises CheckpointNotFoundError when the
        step is not committed.
        """
        with self._lock:
            self._check_open()
            self._settle_verification()
            failed = self._verifying  # the trainer restored over it
            if self._writer is not None:
                self._writer.wait()
            entry = self.manager.entry(exp_hash, step)
            self._adopt_resumed(dict(restore or {}), entry, exp_hash, f"resume through {mode}")
            self._drop_check(failed)
            self.manager.event(
                "resumed",
                exp_hash=exp_hash,
                step=entry.step,
                file=entry.file,
                skipped=list(skipped),
                mode=mode,
            )

    def _resume_agreed(
        self, mode: ResumeMode, *, restore: bool = False, verify: Verify = "now"
    ) -> Found | None:
        """What to resume, chosen on rank 0 and loaded on every rank (None: start at step 0).

        With ``restore`` (one process only), the checkpoint found is also restored into the ledger,
        its checksum computed meanwhile (:func:`~weightslab.system.resume.load_and_restore`), and
        with ``verify`` "split" or "background" partly or wholly left running (see :meth:`resume`).
        """
        group = self._group
        if not group.distributed:
            return self._find_resume(mode, restore=restore, verify=verify)
        found: Found | None = None
        failure: BaseException | None = None
        if group.is_main:
            try:
                found = self._find_resume(mode)
            except Exception as exc:  # told to the other ranks, then raised here
                failure = exc
        choice = None if found is None else (found[2], found[1].step)
        said = None if failure is None else f"{type(failure).__name__}: {failure}"
        (chosen, error), *_ = group.steps.exchange("resume()", (choice, said))
        if failure is not None:
            raise failure
        if error is not None:
            raise CheckpointNotFoundError(f"rank 0 could not resume: {error}")
        if chosen is None or group.is_main:
            return found
        source_hash, step = chosen
        entry = self.manager.entry(source_hash, step)
        return self.manager.load_entry(source_hash, entry, consolidate=False), entry, source_hash, []

    def _find_resume(
        self, mode: ResumeMode, *, restore: bool = False, verify: Verify = "now"
    ) -> Found | None:
        exp_hash = self.manager.last_active()
        if exp_hash is None:
            self.manager.event("resume_fresh")
            log.info("weightslab: %s holds no checkpoint; starting at step 0", self.root)
            return None
        if mode == "latest" and not resume_search.chain_has_checkpoints(self.manager, exp_hash):
            # killed before its first checkpoint was committed: nothing to restore
            self.manager.event("resume_fresh", exp_hash=exp_hash)
            log.info("weightslab: %s has no committed checkpoint yet; starting at step 0", exp_hash)
            return None
        tried = resume_search.candidates(self.manager, exp_hash, mode, self.retention, self.config.monitor)
        optimizers = list(self.ledger.items("optimizer").values())
        # deferred only where every step is gated (torch optimizers, at least one) and the resume
        # rewinds nothing: the newest live checkpoint of the active experiment
        live = self.manager.manifest(exp_hash).live() if restore and verify != "now" else []
        deferred = (
            bool(live) and bool(optimizers) and all(isinstance(o, torch.optim.Optimizer) for o in optimizers)
        )

        def defer(checking: Background[Any], entry: CheckpointEntry, h: str) -> None:
            self._verifying = PendingCheck(checking, h, entry, optimizers, self.manager.event)

        return resume_search.load_first(
            self.manager,
            exp_hash,
            tried,
            strict=isinstance(mode, int),
            root=self.root,
            restore=self._restore_found if restore else None,
            defer=defer if deferred else None,
            deferrable=(exp_hash, live[-1].step) if deferred else None,
            verify_first=self.manager.unreadable() if deferred else (),
            split=verify == "split",
        )

    def _adopt_resumed(self, data: dict[str, Any], entry: Any, source_hash: str, why: str) -> None:
        """Restore ``data`` into the ledger and continue ``source_hash`` from ``entry``."""
        self._restore_found(data, entry, source_hash)
        self._continue_resumed(entry, source_hash, why)

    def _restore_found(
        self, data: dict[str, Any], entry: Any, source_hash: str, /, check: SplitCheck | None = None
    ) -> None:
        """Put ``data`` (checkpoint ``entry`` of ``source_hash``) into the ledger, RNG included
        (through ``check``, the split check of its step file, when one is given)."""
        where = f"checkpoint {source_hash} step {entry.step}"
        if "sharded" in data:  # the models and optimizers are in DCP's files, loaded on every rank
            folder = self.manager.experiment(source_hash).resolve(entry.file)
            reader = self.manager.storage.dcp_reader(folder)
            sharded.restore(self.ledger, data["sharded"], reader, self._group.save_group, where)
            data = {k: v for k, v in data.items() if k not in ("models", "optimizers", "sharded")}
        restore_state(
            self.ledger,
            data,
            where=where,
            root=self.root,
            exp_hash=source_hash,
            rng=self.config.save_rng,
            architecture_saved=self.manager.has_architecture(source_hash),
            check=check,
        )
        ranks = data.get("rng_ranks")
        if self.config.save_rng and ranks and len(ranks) == self._group.world and ranks[self._group.rank]:
            restore_rng(ranks[self._group.rank])  # each rank its own stream (same world size only)

    def _continue_resumed(self, entry: Any, source_hash: str, why: str) -> None:
        """Continue ``source_hash`` from ``entry``, whose state is restored: protect it, rewind after it."""
        self.manager.record_retention(source_hash, self.config.retention())
        manifest = self.manager.manifest(source_hash)
        self._exp.adopt(
            ExperimentIdentity(source_hash, manifest.architecture_hash, manifest.hyperparams_hash)
        )
        self._exp.branch_from = (source_hash, entry.step)
        self._protection.protect(source_hash, entry.step)
        # later steps of this experiment belong to the future this resume abandons (or were damaged):
        # the continued run saves them again
        self._submitted = {(source_hash, e.step) for e in manifest.checkpoints if e.step <= entry.step}
        self._last_step = entry.step
        self._last_metrics = dict(entry.metrics)
        self._resume_floor = entry.step
        self._monitor_seen = False
        self._rewind(source_hash, entry.step, why)

    def _check_backwards(self, step: int) -> None:
        if self._resume_floor is not None:
            raise StepOrderError(
                f"step {step} is not after step {self._resume_floor}, which this run resumed from; start the "
                f"loop at the step resume() returned ({self._resume_floor + 1})"
            )
        if not self._warned_backwards:
            self._warned_backwards = True
            log.warning(
                "weightslab: step went backwards (%d after %d); saves at steps already saved in this "
                "experiment replace those checkpoints. Pass a global step that only grows.",
                step,
                self._last_step,
            )
        identity = self._exp.identity
        if identity is not None and self.manager.has_experiment(identity.exp_hash):
            if self._writer is not None:
                self._writer.wait()  # a save of the abandoned future must not commit after the rewind
            self._rewind(identity.exp_hash, step - 1, "the step counter went back")

    def _rewind(self, exp_hash: str, step: int, why: str) -> None:
        """Mark the live checkpoints after ``step`` abandoned (manifest and journal), warning once."""
        # the steps after ``step`` will be trained again: their saves must not be skipped as done
        self._submitted = {(h, s) for h, s in self._submitted if h != exp_hash or s <= step}
        try:
            abandoned = self.manager.rewind(exp_hash, step)
        except (OSError, WeightslabError) as exc:
            self._errors.failed(exc, exp_hash, max(step, 0), what="recording the rewind of")
            self._errors.report([exc])
            return
        if abandoned and not self._warned_rewind:
            self._warned_rewind = True
            log.warning(
                "weightslab: %s: going back to step %d of %s abandons its checkpoints at steps %s; "
                "'latest' will not resume them and retention removes them like any older checkpoint",
                why,
                step,
                exp_hash,
                abandoned,
            )
