"""Epoch, wall-clock and on-request saves, next to the step frequency, on real roots."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import weightslab as wl
from weightslab.components import checkpoint_on_epoch_end, checkpoint_on_step, get_checkpoint_system
from weightslab.errors import ConfigError
from weightslab.policy.save import EveryNEpochs, EveryNSeconds
from weightslab.registry.ledger import Ledger
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig

from .conftest import train_step
from .test_system import setup_run, steps_and_triggers


class FakeClock:
    """A clock the test moves by hand: the interval logic is tested without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_every_n_epochs_policy_counts_like_lightning() -> None:
    policy = EveryNEpochs(3)
    assert [e for e in range(9) if policy.should_save(e)] == [2, 5, 8]
    with pytest.raises(ValueError, match="n >= 1"):
        EveryNEpochs(0)


def test_every_n_seconds_policy_restarts_after_a_save() -> None:
    clock = FakeClock()
    timer = EveryNSeconds(60, clock)
    clock.now += 59.9
    assert not timer.due()
    clock.now += 0.1
    assert timer.due()
    timer.restart()
    assert not timer.due()
    with pytest.raises(ValueError, match="positive number of seconds"):
        EveryNSeconds(0, clock)


def test_epoch_saves_combine_with_the_step_frequency(make_system: Any, ledger: Ledger) -> None:
    system = make_system(checkpoint_frequency=25, every_n_epochs=2)
    model, opt, _ = setup_run(ledger)
    step = 0
    for epoch in range(4):
        for _ in range(10):
            step += 1
            train_step(model, opt)
            system.checkpoint_on_step(step, {"loss": 1.0 / step})
        system.checkpoint_on_epoch_end(epoch)
    system.close()
    assert steps_and_triggers(system) == [(20, "epoch"), (25, "step"), (40, "epoch")]


def test_an_epoch_end_at_a_step_already_saved_saves_nothing_more(make_system: Any, ledger: Ledger) -> None:
    system = make_system(checkpoint_frequency=10, every_n_epochs=1, save_last=False)
    model, opt, _ = setup_run(ledger)
    for step in range(1, 11):
        train_step(model, opt)
        system.checkpoint_on_step(step)
    system.checkpoint_on_epoch_end(0)
    system.checkpoint_on_epoch_end(1, step=10)
    assert steps_and_triggers(system) == [(10, "step")]


def test_train_time_interval_saves_when_due_and_restarts_after_any_save(tmp_path: Path) -> None:
    clock = FakeClock()
    ledger = Ledger()
    system = AutomaticCheckpointSystem(
        CheckpointConfig(root_log_dir=tmp_path / "root", checkpoint_frequency=50, train_time_interval=30),
        ledger=ledger,
        clock=clock,
    )
    model, opt, _ = setup_run(ledger)
    for step in range(1, 101):
        train_step(model, opt)
        clock.now += 1.0  # one second per step
        system.checkpoint_on_step(step)
    system.close()
    # 30 s after opening -> step 30; the step save at 50 restarts the interval -> 80; step save at 100
    assert steps_and_triggers(system) == [(30, "time"), (50, "step"), (80, "time"), (100, "step")]


def test_train_time_interval_takes_a_timedelta() -> None:
    config = CheckpointConfig(train_time_interval=timedelta(minutes=2))
    assert config.train_time_interval == 120.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"every_n_epochs": 0}, "every_n_epochs must be >= 1"),
        ({"every_n_epochs": 1.5}, "every_n_epochs must be an int"),
        ({"train_time_interval": -5}, "train_time_interval must be a positive number of seconds"),
        ({"train_time_interval": "1h"}, "train_time_interval must be a positive number of seconds"),
    ],
)
def test_bad_schedules_are_rejected_with_the_value(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CheckpointConfig(**options)


def test_save_on_request_records_tags_and_the_last_metrics(make_system: Any, ledger: Ledger) -> None:
    system = make_system(checkpoint_frequency=100, save_last=False)
    model, opt, _ = setup_run(ledger)
    for step in range(1, 8):
        train_step(model, opt)
        system.checkpoint_on_step(step, {"loss": float(step)})
    h = system.save(trigger="best", tags=["keep"], description="hand-picked")
    assert h == system.exp_hash
    assert system.save(trigger="best") == h  # the same step is not saved twice
    system.flush()
    (entry,) = system.manager.checkpoints(h)
    assert (entry.step, entry.trigger, entry.metrics, entry.tags, entry.description) == (
        7,
        "best",
        {"loss": 7.0},
        ("keep",),
        "hand-picked",
    )


def test_save_on_request_records_a_config_change_first(make_system: Any, ledger: Ledger) -> None:
    system = make_system(checkpoint_frequency=100, save_last=False)
    model, opt, cfg = setup_run(ledger)
    for step in range(1, 4):
        train_step(model, opt)
        system.checkpoint_on_step(step)
    first = system.save(step=3)
    cfg["lr"] = 1e-4
    second = system.save(step=5, trigger="manual")
    assert second != first
    assert steps_and_triggers(system, second) == [(5, "config_change")]
    assert system.manager.manifest(second).parent is not None


def test_save_needs_a_step_before_the_first_call(make_system: Any, ledger: Ledger) -> None:
    system = make_system()
    setup_run(ledger)
    with pytest.raises(ValueError, match="needs step="):
        system.save()
    with pytest.raises(ValueError, match="trigger must be"):
        system.save(step=1, trigger="")


def test_module_functions_drive_the_global_system(tmp_path: Path) -> None:
    system = get_checkpoint_system(
        root_log_dir=tmp_path / "root", checkpoint_frequency=1000, every_n_epochs=1
    )
    model, opt, _ = setup_run(wl.get_ledger())
    for step in range(1, 6):
        train_step(model, opt)
        checkpoint_on_step(step)
    checkpoint_on_epoch_end(0, {"val_loss": 0.5})
    system.close()
    assert steps_and_triggers(system) == [(5, "epoch")]
    assert system.manager.checkpoints(system.exp_hash or "")[0].metrics == {"val_loss": 0.5}


def test_tag_merges_metrics_a_later_validation_reports(make_system: Any, ledger: Ledger) -> None:
    system = make_system(
        checkpoint_frequency=5, save_last=False, keep_best=1, monitor="val_loss", keep_last=1
    )
    model, opt, _ = setup_run(ledger)
    for step in range(1, 16):
        train_step(model, opt)
        # the first save lacks the monitored metric: one warning, then retention waits for it
        with pytest.warns(UserWarning, match="val_loss") if step == 5 else contextlib.nullcontext():
            system.checkpoint_on_step(step, {"loss": float(step)})
        if step in (5, 10):  # validation after the step save: its metric arrives late
            system.tag(step, "validated", metrics={"val_loss": 1.0 if step == 5 else 2.0})
    system.flush()
    h = system.exp_hash or ""
    kept = {e.step: (e.metrics, e.tags) for e in system.manager.checkpoints(h)}
    # step 5 is the best by the late metric, 15 the newest; 10 went to retention
    assert kept == {5: ({"loss": 5.0, "val_loss": 1.0}, ("validated",)), 15: ({"loss": 15.0}, ())}


def test_a_better_late_metric_applies_retention_at_once(make_system: Any, ledger: Ledger) -> None:
    system = make_system(
        checkpoint_frequency=5, save_last=False, keep_best=1, monitor="val_loss", keep_last=1
    )
    model, opt, _ = setup_run(ledger)
    for step in range(1, 11):
        train_step(model, opt)
        system.checkpoint_on_step(step, {"val_loss": 1.0} if step == 5 else {"loss": float(step)})
    system.flush()
    h = system.exp_hash or ""
    assert [e.step for e in system.manager.checkpoints(h)] == [5, 10]
    system.tag(10, metrics={"val_loss": 0.5})  # 10 is now best and newest: 5 is kept by nothing
    assert [e.step for e in system.manager.checkpoints(h)] == [10]


def test_metrics_merged_into_another_experiment_leave_its_checkpoints_alone(
    make_system: Any, tmp_path: Path
) -> None:
    first = make_system(checkpoint_frequency=1, save_last=False, ledger=Ledger())
    model, opt, _ = setup_run(first.ledger)
    for step in range(1, 6):
        train_step(model, opt)
        first.checkpoint_on_step(step)
    other = first.exp_hash or ""
    first.close()
    second = make_system(checkpoint_frequency=1, keep_last=1, ledger=Ledger())
    second.tag(3, exp_hash=other, metrics={"val": 0.5})  # this run's keep_last=1 is not that experiment's
    assert [e.step for e in second.manager.checkpoints(other)] == [1, 2, 3, 4, 5]
    assert second.manager.checkpoints(other)[2].metrics == {"val": 0.5}
