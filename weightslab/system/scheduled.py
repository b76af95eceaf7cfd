"""Saves the caller schedules: at an epoch's end, on a wall-clock interval, and on request.

``checkpoint_on_step`` keeps the step frequency (:class:`~weightslab.policy.save.EveryNSteps`);
this mixin adds ``every_n_epochs`` (:meth:`checkpoint_on_epoch_end`), ``train_time_interval`` (checked
by ``checkpoint_on_step`` through :meth:`_time_due`) and :meth:`save`, which trainer adapters call when
they decide the moment themselves. With several ranks, the time check is rank 0's, shared with the
others at every step (as Lightning broadcasts it), so that every rank saves at the same step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from weightslab.system.parts import SystemParts
from weightslab.system.validation import check_notes, check_step, clean_metrics

if TYPE_CHECKING:
    from weightslab.policy.save import EveryNEpochs
    from weightslab.system.distributed import Channel


class Scheduled(SystemParts):
    """``save``, ``checkpoint_on_epoch_end`` and the time check of ``checkpoint_on_step``."""

    if TYPE_CHECKING:
        _epochs: EveryNEpochs | None
        _clock_channel: Channel
        _last_epoch: int | None

    def save(
        self,
        step: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        *,
        trigger: str = "manual",
        tags: Iterable[str] | None = None,
        description: str | None = None,
    ) -> str:
        """Save now, at ``step`` (default: the last step seen), in the current experiment; returns its hash.

        A model or hyperparameter change not yet recorded is recorded first (it may open a new
        experiment, whose first checkpoint this is). A step already saved in this experiment is not
        saved twice. With ``async_save`` the commit runs in the background: :meth:`flush` waits for it.
        Without ``metrics``, a save at the last step seen records that step's metrics. Raises
        ValueError for a bad step, trigger or metric, and when no step was ever seen and none is given.
        """
        if not isinstance(trigger, str) or not trigger or len(trigger) > 64:
            raise ValueError(f"trigger must be a non-empty string of at most 64 characters, got {trigger!r}")
        notes = check_notes(tags, description)
        with self._lock:
            self._check_open()
            self._surface_errors()
            if step is None:
                if self._last_step is None:
                    raise ValueError("save() needs step=<int> before any checkpoint_on_step call")
                step = self._last_step
            step = check_step(step)
            clean = clean_metrics(metrics if metrics is not None else self._last_metrics_or_empty(step))
            if self._exp.identity is None:
                self._begin(step)
            self._notes = notes
            try:
                if self._pending:
                    pending, self._pending = self._pending, []
                    self._save_announced(step, pending, clean)
                else:
                    with self._staging_early(step):  # the copy runs beside the change check
                        if not self._record_changes(step, clean, announced=None):
                            assert self._exp.identity is not None
                            if (self._exp.identity.exp_hash, step) not in self._submitted:
                                self._save(step, trigger, clean)
            finally:
                self._notes = ((), "")
            if self._last_step is None or step > self._last_step:
                self._last_step = step
            assert self._exp.identity is not None
            return self._exp.identity.exp_hash

    def checkpoint_on_epoch_end(
        self, epoch: int, metrics: Mapping[str, Any] | None = None, *, step: int | None = None
    ) -> None:
        """Call when an epoch ends (``epoch``: its 0-based index): saves after every ``every_n_epochs``-th.

        The checkpoint is labelled ``step`` (default: the last step seen), with ``trigger="epoch"``.
        Without ``every_n_epochs`` it only records the epoch. Raises ValueError for a bad epoch.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be the 0-based index of the epoch that ended, got {epoch!r}")
        with self._lock:
            self._check_open()
            self._last_epoch = epoch
            if self._epochs is None or not self._epochs.should_save(epoch):
                return
            if step is None and self._last_step is None:
                return  # an epoch without a training step: nothing trained to save
        self.save(step, metrics, trigger="epoch")

    def _time_due(self) -> bool:
        """Whether ``train_time_interval`` has passed (rank 0's clock decides for every rank)."""
        assert self._timer is not None
        due = self._timer.due()
        if self._group.distributed:
            due = bool(self._clock_channel.exchange("the train_time_interval check", due)[0])
        return due

    def _last_metrics_or_empty(self, step: int) -> Mapping[str, Any]:
        """The metrics of the last ``checkpoint_on_step`` when saving at that step; else none."""
        if step != self._last_step or self._last_metrics is None:
            return {}
        try:
            clean_metrics(self._last_metrics)
        except (TypeError, ValueError):  # never recorded: that call saved nothing, so it never checked them
            return {}
        return self._last_metrics
