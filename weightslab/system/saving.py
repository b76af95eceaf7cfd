"""Saving one checkpoint: the last check of the configuration, the step dict, the hand-off to the writer.

The training thread holds the system lock here. ``_save`` re-checks, with the ledger held still, that
the hyperparameters did not move since the change check (a file is always filed under the hash of the
values it holds), builds the step dict into the snapshot buffers and submits the job to the
background writer (or runs it now with ``async_save=False``). Several ranks, or sharded state, go
through :mod:`.ranks`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any

from weightslab.system.commit import CommitJob
from weightslab.system.parts import SystemParts
from weightslab.system.payload import build_payload, stage_state
from weightslab.system.ranks import ShardJob
from weightslab.system.sharded import is_sharded


class Saving(SystemParts):
    """``_save`` and what it calls."""

    def _save(self, step: int, trigger: str, metrics: dict[str, float | None]) -> None:
        self._gate()  # resume(verify="background"): UnverifiedStateError when its checksum failed
        if self._timer is not None:  # train_time_interval counts from the last save of any kind
            self._timer.restart()
        if self._writer is not None:
            self._writer.wait()  # the buffers are about to be overwritten
            self._surface_errors()
        # Another thread (set_hyperparam, a watched file) may move the config between the change check
        # and the snapshot. Holding the ledger still, re-check the hyperparameters and record such a
        # change first, so that a file is always filed under the hash of the values it holds.
        with self.ledger.locked():
            current = self._exp.identity
            assert current is not None
            if self._exp.live_hyperparams_hash() != current.hyperparams_hash:
                ident = self._exp.identity_now()
                if ident.exp_hash != current.exp_hash:
                    moved = ident.architecture_hash != current.architecture_hash
                    trigger = "model_change" if moved else "config_change"
                    self._switch(ident, trigger, step)
            self._save_locked(step, trigger, metrics)
        if self.config.monitor is not None and not (self._monitor_seen or self._monitor_warned):
            self._check_monitor(self.config.monitor, metrics)

    def _check_monitor(self, monitor: str, metrics: Mapping[str, float | None]) -> None:
        """Warn (or raise, with on_error="raise") at the first save that lacks the monitored metric,
        unless an earlier checkpoint of the experiment reported it. Retention deletes nothing by
        ``keep_best`` until it appears, so a misspelt name costs disk, never checkpoints."""
        if metrics.get(monitor) is not None:
            self._monitor_seen = True
            return
        assert self._exp.identity is not None
        h = self._exp.identity.exp_hash
        if self.manager.has_experiment(h) and any(
            e.metric(monitor) is not None for e in self.manager.manifest(h).checkpoints
        ):
            self._monitor_seen = True
            return
        self._monitor_warned = True  # once warned, later saves need not look at the manifest again
        self._errors.monitor_missing(monitor, metrics)

    def _save_locked(self, step: int, trigger: str, metrics: dict[str, float | None]) -> None:
        assert self._exp.identity is not None
        exp_hash = self._exp.identity.exp_hash
        if not self._exp.reopen_if_needed(step):
            return  # still cannot open it: reported, training goes on
        # inside _staging_early the state is a single process's plain state: no second look
        if self._walk is None and (self._group.distributed or is_sharded(self.ledger.items("model"))):
            self._save_ranked(exp_hash, step, trigger, metrics)
            return
        try:
            payload, event = self._payload(exp_hash, step, trigger, metrics)
        except Exception as exc:
            self._submitted.add((exp_hash, step))  # reported once; close() does not try it again
            self._errors.failed(exc, exp_hash, step)
            self._errors.report([exc])
            return
        self._submit(CommitJob(exp_hash, step, payload, trigger, metrics, event, self._notes))

    def _payload(
        self,
        exp_hash: str,
        step: int,
        trigger: str,
        metrics: dict[str, float | None],
        *,
        tensors: bool = True,
    ) -> tuple[dict[str, Any], Any]:
        staged, self._early = self._early, None  # staged by _staging_early: the whole state
        assert staged is None or tensors
        frozen = None
        if staged is None:
            staged = stage_state(self.ledger, self._buffers, tensors=tensors)
        try:
            if self._walk is not None:  # the change check of this call took its baseline from it
                frozen = self._detector.frozen_names()
            created = self._clock()
        except BaseException:
            staged.drop()  # no copy may run on once the save is given up
            raise
        return build_payload(
            self.ledger,
            staged,
            frozen=frozen,
            exp_hash=exp_hash,
            step=step,
            trigger=trigger,
            metrics=metrics,
            created=created,
            save_rng=self.config.save_rng,
        )

    @contextmanager
    def _staging_early(self, step: int) -> Iterator[None]:
        """Around a scheduled save: stage the state first, its batched copy on the copier thread.

        The copy then overlaps the change check (the architecture walk, the detector's baseline) and
        the rest of the step dict, which read only metadata; the save in the block takes the staged
        state. Only for a single process's asynchronous save of plain state; anything that goes
        wrong here is left to the save itself, which stages again and reports it as usual. A
        snapshot the block did not take is finished (and dropped) on the way out.
        """
        ident = self._exp.identity
        if (
            self._writer is None
            or self._group.distributed
            or (ident is not None and (ident.exp_hash, step) in self._submitted)  # saved already
        ):
            yield
            return
        models = self.ledger.items("model")
        # the one walk of the parameters this save makes: the sharded check, then the detector's
        # new baseline and the frozen list (nothing in the block changes the models)
        walk = [(m, n, p) for m, model in models.items() for n, p in model.named_parameters()]
        if is_sharded(models, [p for _, _, p in walk]):
            yield
            return
        self._writer.wait()  # the buffers are about to be overwritten
        self._walk = walk
        try:
            try:
                # the steady state: the same tensors as at the last save, copied before they are read
                self._buffers.copy_ahead()
                self._early = stage_state(self.ledger, self._buffers, background=True)
            except Exception:  # the save stages again and reports the error
                self._early = None
            yield
        finally:
            self._walk = None
            staged, self._early = self._early, None
            if staged is not None:
                staged.drop()
            self._buffers.cancel_ahead()  # a copy made ahead that no staging took (it failed)

    def _submit(self, job: CommitJob | ShardJob) -> None:
        """Hand a job to the writer (or run it now); the step counts as saved from here on."""
        self._submitted.add((job.exp_hash, job.step))
        branch = self._exp.branch_from
        if branch is not None and branch[0] == job.exp_hash:
            self._exp.branch_from = (
                None  # a child now branches from the newest checkpoint, not the resumed one
            )
        run: Callable[[], None] = (
            partial(self._committer, job)
            if isinstance(job, CommitJob)
            else partial(self._shard_committer, job)
        )
        if self._writer is not None:
            self._writer.submit(run)
        else:
            try:
                run()
            except Exception as exc:
                self._errors.report([exc])
