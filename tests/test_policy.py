"""The pure policies: no disk at all."""

from __future__ import annotations

import pytest

from weightslab.policy.retention import (
    CheckpointRecord,
    KeepBest,
    KeepEvery,
    KeepLast,
    RetentionPolicy,
    union,
)
from weightslab.policy.save import EveryNSteps


def recs(*pairs: tuple[int, float | None]) -> list[CheckpointRecord]:
    return [CheckpointRecord(step, {} if v is None else {"loss": v}) for step, v in pairs]


@pytest.mark.parametrize(
    ("step", "freq", "expected"),
    [(0, 10, False), (10, 10, True), (15, 10, False), (20, 10, True), (1, 1, True), (0, 1, False)],
)
def test_every_n_steps(step: int, freq: int, expected: bool) -> None:
    assert EveryNSteps(freq).should_save(step) is expected


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_every_n_steps_refuses_a_bad_n(bad: object) -> None:
    with pytest.raises(ValueError, match="n >= 1"):
        EveryNSteps(bad)  # type: ignore[arg-type]


def test_small_policies_combine_as_a_union() -> None:
    records = recs((10, 0.9), (20, 0.1), (30, 0.5), (40, 0.8))
    assert KeepLast(1).keep(records) == {40: ["last"]}
    assert KeepBest(1, "loss").keep(records) == {20: ["best"]}
    assert KeepBest(1, "acc").keep(records) == {s: ["awaiting_monitor"] for s in (10, 20, 30, 40)}
    assert KeepEvery(20).keep(records) == {20: ["every"], 40: ["every"]}
    merged = union([KeepLast(1).keep(records), KeepEvery(20).keep(records)])
    assert merged == {40: ["last", "every"], 20: ["every"]}
    combined = RetentionPolicy(keep_last=1, keep_best=1, monitor="loss", keep_every=20)
    assert combined.reasons(records) == {20: ["best", "every"], 40: ["last", "every", "newest"]}


def test_no_policy_keeps_everything() -> None:
    records = recs((10, 1.0), (20, 0.5), (30, 0.7))
    assert RetentionPolicy().to_delete(records) == []


def test_keep_last() -> None:
    records = recs((10, None), (20, None), (30, None), (40, None))
    assert RetentionPolicy(keep_last=2).to_delete(records) == [10, 20]


def test_keep_best_min_and_max() -> None:
    records = recs((10, 0.9), (20, 0.2), (30, 0.5), (40, 0.8))
    keep_min = RetentionPolicy(keep_best=1, monitor="loss", mode="min")
    keep_max = RetentionPolicy(keep_best=1, monitor="loss", mode="max")
    # the newest (40) always stays
    assert keep_min.to_delete(records) == [10, 30]
    assert keep_max.to_delete(records) == [20, 30]
    assert keep_min.best(records, 4) == [20, 30, 40, 10]


def test_best_ignores_missing_and_non_finite_metrics() -> None:
    records = [
        CheckpointRecord(10, {"loss": float("nan")}),
        CheckpointRecord(20, {}),
        CheckpointRecord(30, {"loss": 0.3}),
        CheckpointRecord(40, {"loss": None}),
    ]
    assert RetentionPolicy(keep_best=2, monitor="loss").best(records) == [30]


def test_best_ties_prefer_the_later_step() -> None:
    assert RetentionPolicy(keep_best=1, monitor="loss").best(recs((10, 0.5), (20, 0.5))) == [20]


def test_keep_every() -> None:
    records = recs(*((s, None) for s in range(10, 101, 10)))
    assert RetentionPolicy(keep_every=50).to_delete(records) == [10, 20, 30, 40, 60, 70, 80, 90]


def test_policies_combine_as_a_union() -> None:
    records = recs((10, 0.1), (20, 0.9), (30, 0.8), (40, 0.7), (50, 0.6))
    policy = RetentionPolicy(keep_last=1, keep_best=1, monitor="loss", keep_every=20)
    reasons = policy.reasons(records)
    assert reasons == {10: ["best"], 20: ["every"], 40: ["every"], 50: ["last", "newest"]}
    assert policy.to_delete(records) == [30]


def test_protected_steps_are_kept() -> None:
    records = recs((10, None), (20, None), (30, None))
    policy = RetentionPolicy(keep_last=1)
    assert policy.to_delete(records, protected={10, 99}) == [20]
    assert policy.reasons(records, protected={10})[10] == ["protected"]


def test_empty_records() -> None:
    assert RetentionPolicy(keep_last=1).to_delete([]) == []
