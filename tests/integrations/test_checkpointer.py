"""The Checkpointer API: a rolling latest, numbered checkpoints kept to max_to_keep, the best one,
loads that verify. Real models, real files; the retained steps are read back from the manifests."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from weightslab.errors import (
    CheckpointCorruptedError,
    CheckpointNotFoundError,
    CheckpointSaveError,
    ConfigError,
    InvalidNameError,
    RootLockedError,
)
from weightslab.integrations.checkpointer import Checkpointer
from weightslab.registry.ledger import get_ledger
from weightslab.store.manager import CheckpointManager
from weightslab.system import api as system_api

from ..conftest import mlp, train_step


def committed(checkpointer: Checkpointer) -> set[int]:
    """Every committed step of the run, from the manifests on disk."""
    manager = CheckpointManager(checkpointer.checkpoint_dir, mode="r")
    return {e.step for h in manager.experiments() for e in manager.checkpoints(h)}


def tags_at(checkpointer: Checkpointer, step: int) -> set[str]:
    manager = CheckpointManager(checkpointer.checkpoint_dir, mode="r")
    return {
        t for h in manager.experiments() for e in manager.checkpoints(h) if e.step == step for t in e.tags
    }


def metrics_at(checkpointer: Checkpointer, step: int) -> dict[str, float | None]:
    manager = CheckpointManager(checkpointer.checkpoint_dir, mode="r")
    return {
        k: v
        for h in manager.experiments()
        for e in manager.checkpoints(h)
        if e.step == step
        for k, v in e.metrics.items()
    }


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def val_loss(model: torch.nn.Module) -> float:
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        return float(model(torch.randn(32, 8, generator=g)).pow(2).mean())


@pytest.fixture
def model_opt() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = mlp()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def test_documented_api_in_a_training_loop(tmp_path: Path, model_opt: Any) -> None:
    model, opt = model_opt
    ckpt = Checkpointer(
        registry_path=str(tmp_path),
        run_id="run-1",
        save_every=10,
        checkpoint_every=50,
        max_to_keep=2,
        keep_best=True,
        metric_name="val/loss",
        minimize_metric=True,
    )
    assert ckpt.checkpoint_dir == str(tmp_path.resolve() / "run-1")
    assert (ckpt.registry_path, ckpt.run_id, ckpt.save_every, ckpt.checkpoint_every) == (
        str(tmp_path.resolve()),
        "run-1",
        10,
        50,
    )
    assert (ckpt.max_to_keep, ckpt.keep_best, ckpt.metric_name, ckpt.minimize_metric) == (
        2,
        True,
        "val/loss",
        True,
    )
    assert ckpt.best_metric_value == math.inf and ckpt.prepare_fn is None
    assert [s for s in range(101) if ckpt.should_save_latest(s)] == list(range(10, 101, 10))
    assert [s for s in range(101) if ckpt.should_save_numbered(s)] == [50, 100]

    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    vals: dict[int, float] = {}
    for step in range(1, 121):
        train_step(model, opt)
        metrics = None
        if step % 10 == 0:
            vals[step] = val_loss(model)
            metrics = {"val/loss": vals[step]}
        saved = ckpt.maybe_save_checkpoints({"model": model, "optimizer": opt, "step": step}, step, metrics)
        if saved:
            snapshots[step] = weights(model)
            assert all(Path(p).is_file() for p in saved.values())
            assert "latest" in saved and ("numbered" in saved) == (step % 50 == 0)
    best = min(vals, key=lambda s: (vals[s], s))  # strict improvements only: the first of equal values
    assert ckpt.best_metric_value == vals[best]
    assert committed(ckpt) == {50, 100, 120, best}
    names = ckpt.list_available_checkpoints()
    assert set(names) == {"latest", "best", *(f"step_{s}" for s in {50, 100, 120, best})}
    assert names["latest"] == names["step_120"] and names["best"] == names[f"step_{best}"]

    fifty = ckpt.load_checkpoint(50)
    assert set(fifty) == {"model", "optimizer", "step", "metrics"} and fifty["step"] == 50
    assert same(fifty["model"], snapshots[50]) and set(fifty["optimizer"]) == {"state", "param_groups"}
    assert same(ckpt.load_checkpoint("step_100")["model"], snapshots[100])
    assert same(ckpt.load_checkpoint(names["step_100"])["model"], snapshots[100])
    assert ckpt.load_latest()["step"] == 120  # type: ignore[index]
    loaded_best = ckpt.load_best()
    assert loaded_best is not None and loaded_best["step"] == best
    assert loaded_best["metrics"] == {"val/loss": vals[best]}
    fresh = mlp(seed=1)
    fresh.load_state_dict(loaded_best["model"])
    assert same(weights(fresh), snapshots[best])

    state = {"model": model, "optimizer": opt, "step": 125}
    path = ckpt.save_checkpoint(state, metrics={"val/loss": 9.0}, suffix="final")  # step from train_state
    assert path is not None and path.endswith("_step_000125.pt")
    assert tags_at(ckpt, 125) == {"numbered", "final"}
    assert committed(ckpt) == {100, 125, best}  # numbered 50 rotated out; 120 no longer the newest
    assert ckpt.save_latest({**state, "step": 130}) is not None
    assert ckpt.update_best_checkpoint({**state, "step": 135}, metric_value=-1.0) is True
    assert ckpt.update_best_checkpoint({**state, "step": 136}, metric_value=0.0) is False
    assert ckpt.best_metric_value == -1.0
    assert committed(ckpt) == {100, 125, 135}  # the new best is the newest; latest 130 and the old best go
    ckpt.close()

    reopened = Checkpointer(str(tmp_path), "run-1", save_every=10, checkpoint_every=50, max_to_keep=2)
    assert reopened.best_metric_value == -1.0
    assert reopened.load_best()["step"] == 135  # type: ignore[index]
    reopened.close()


def test_a_new_latest_replaces_the_previous_latest_only(tmp_path: Path, model_opt: Any) -> None:
    model, opt = model_opt
    with Checkpointer(str(tmp_path), "r", save_every=10) as ckpt:
        paths = []
        for step in (10, 20, 30):
            train_step(model, opt)
            paths.append(ckpt.save_latest({"model": model, "optimizer": opt}, step=step))
            assert committed(ckpt) == {step}
        assert [Path(p).exists() for p in paths] == [False, False, True]  # type: ignore[arg-type]
        ckpt.save_checkpoint({"model": model}, step=40)
        ckpt.save_latest({"model": model}, step=50)
        ckpt.save_latest({"model": model}, step=60)
        assert committed(ckpt) == {40, 60}  # the numbered one stays; latest 30 and 50 are gone
        assert ckpt.load_latest()["step"] == 60  # type: ignore[index]


@pytest.mark.parametrize(
    ("max_to_keep", "expected"),
    [(3, {160, 180, 200}), (None, set(range(20, 201, 20))), (float("inf"), set(range(20, 201, 20)))],
)
def test_numbered_checkpoints_are_kept_to_max_to_keep(
    tmp_path: Path, model_opt: Any, max_to_keep: float | None, expected: set[int]
) -> None:
    model, opt = model_opt
    with Checkpointer(str(tmp_path), "r", save_every=7, checkpoint_every=20, max_to_keep=max_to_keep) as ckpt:
        for step in range(1, 201):
            train_step(model, opt)
            ckpt.maybe_save_checkpoints({"model": model, "optimizer": opt, "step": step}, step)
        assert committed(ckpt) == expected  # latest 196 went when 200 committed
        numbered = {
            int(k.removeprefix("step_")) for k in ckpt.list_available_checkpoints() if k.startswith("step_")
        }
        assert numbered == expected


@pytest.mark.parametrize("minimize", [True, False])
def test_the_best_checkpoint_is_kept_while_numbered_ones_rotate(
    tmp_path: Path, model_opt: Any, minimize: bool
) -> None:
    model, opt = model_opt
    sign = 1.0 if minimize else -1.0
    ckpt = Checkpointer(
        str(tmp_path), "r", save_every=10, checkpoint_every=20, max_to_keep=1, keep_best=True,
        metric_name="val/score", minimize_metric=minimize,
    )  # fmt: skip
    at_best = {}
    for step in range(1, 61):
        train_step(model, opt)
        saved = ckpt.maybe_save_checkpoints(
            {"model": model, "step": step}, step, {"val/score": sign * abs(step - 33) / 10}
        )
        assert ("best" in saved) == (step <= 33)
        if step == 33:
            at_best = weights(model)
    assert committed(ckpt) == {33, 60}
    assert tags_at(ckpt, 33) == {"best"} and tags_at(ckpt, 60) == {"numbered", "latest"}
    best = ckpt.load_best()
    assert best is not None and best["step"] == 33 and same(best["model"], at_best)
    assert ckpt.best_metric_value == 0.0
    ckpt.close()


def test_one_step_with_several_roles_is_one_file(tmp_path: Path, model_opt: Any) -> None:
    model, _ = model_opt
    with Checkpointer(str(tmp_path), "r") as ckpt:
        latest = ckpt.save_latest({"model": model}, step=10)
        assert ckpt.update_best_checkpoint({"model": model}, 0.5, step=10) is True
        assert tags_at(ckpt, 10) == {"latest", "best"}
        assert metrics_at(ckpt, 10) == {"val/loss": 0.5}  # merged into the entry of the step saved before
        assert ckpt.save_latest({"model": model}, step=20) is not None
        assert committed(ckpt) == {10, 20}  # step 10 is still the best
        assert ckpt.list_available_checkpoints()["best"] == latest
        ckpt.save_checkpoint({"model": model}, step=30)
        assert committed(ckpt) == {10, 30}  # the latest-only 20 went
        assert ckpt.update_best_checkpoint({"model": model}, 0.7, step=30) is False
        assert metrics_at(ckpt, 30) == {}
        assert ckpt.update_best_checkpoint({"model": model}, 0.2, step=30) is True
        assert tags_at(ckpt, 30) == {"numbered", "best"} and metrics_at(ckpt, 30) == {"val/loss": 0.2}
        assert committed(ckpt) == {30}  # the best moved to 30: the old best 10 went
    with Checkpointer(str(tmp_path), "r") as reopened:  # the best value was recorded, not lost
        assert reopened.best_metric_value == 0.2
        best = reopened.load_best()
        assert best is not None and best["step"] == 30 and best["metrics"] == {"val/loss": 0.2}
        assert reopened.update_best_checkpoint({"model": model}, 0.3, step=40) is False


def corrupt(path: str) -> None:
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def test_a_corrupted_file_raises_naming_it_and_load_latest_falls_back(tmp_path: Path, model_opt: Any) -> None:
    model, opt = model_opt
    with Checkpointer(str(tmp_path), "r", keep_best=True) as ckpt:
        state = {"model": model, "optimizer": opt}
        ckpt.save_checkpoint(state, step=20)
        at_20 = weights(model)
        train_step(model, opt)
        newest = ckpt.save_latest(state, step=30)
        assert newest is not None and ckpt.update_best_checkpoint(state, 0.1, step=30)
        corrupt(newest)
        for which in (30, "step_30", newest):
            with pytest.raises(CheckpointCorruptedError, match=newest):
                ckpt.load_checkpoint(which)
        with pytest.raises(CheckpointCorruptedError, match=newest):
            ckpt.load_best()  # the best is one file: no silent substitute
        latest = ckpt.load_latest()  # falls back to the newest checkpoint that verifies
        assert latest is not None and latest["step"] == 20 and same(latest["model"], at_20)
        events = [
            json.loads(line)
            for line in (Path(ckpt.checkpoint_dir) / "logs/events.jsonl").read_text().splitlines()
        ]
        assert any(e["event"] == "checkpoint_unreadable" and e["step"] == 30 for e in events)
        corrupt(ckpt.list_available_checkpoints()["step_20"])
        with pytest.raises(CheckpointNotFoundError, match="verifies"):
            ckpt.load_latest()


def test_prepare_fn_and_plain_values(tmp_path: Path, model_opt: Any) -> None:
    model, _ = model_opt

    def prepare(state: dict[str, Any]) -> dict[str, Any]:
        return {"params": state["model"].state_dict(), "lr": 0.1, "shape": (2, "x"), "step": state["step"]}

    with Checkpointer(str(tmp_path), "r", prepare_fn=prepare) as ckpt:
        assert ckpt.save_latest({"model": model, "step": 10}) is not None
        loaded = ckpt.load_latest()
        assert loaded is not None and set(loaded) == {"params", "lr", "shape", "step", "metrics"}
        assert same(loaded["params"], weights(model)) and loaded["shape"] == (2, "x") and loaded["step"] == 10


class Flaky:
    """A stateful object whose state cannot be read while ``broken`` (a sampler on a vanished disk)."""

    def __init__(self) -> None:
        self.broken = False

    def state_dict(self) -> dict[str, int]:
        if self.broken:
            raise OSError("sampler state unavailable")
        return {"position": 3}

    def load_state_dict(self, state: dict[str, int]) -> None:
        pass


def test_a_failed_save_warns_and_returns_none_or_raises(tmp_path: Path, model_opt: Any) -> None:
    model, _ = model_opt
    sampler = Flaky()
    with Checkpointer(str(tmp_path), "warn", save_every=5) as ckpt:
        assert ckpt.save_latest({"model": model, "sampler": sampler}, step=5) is not None
        sampler.broken = True
        with pytest.warns(UserWarning, match="sampler state unavailable"):
            assert ckpt.save_latest({"model": model, "sampler": sampler}, step=10) is None
        with pytest.warns(UserWarning, match="sampler state unavailable"):
            assert ckpt.maybe_save_checkpoints({"model": model, "sampler": sampler}, 15) == {}
        assert committed(ckpt) == {5}  # nothing lost
    with Checkpointer(str(tmp_path), "raise", on_error="raise") as ckpt, pytest.raises(CheckpointSaveError):
        ckpt.save_latest({"model": model, "sampler": sampler}, step=5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"registry_path": ""}, "registry_path must be a non-empty folder path"),
        ({"run_id": "../escape"}, "run_id"),
        ({"save_every": 0}, r"save_every must be an int >= 1 .* got 0"),
        ({"checkpoint_every": 2.5}, r"checkpoint_every must be an int >= 1 .* got 2.5"),
        ({"max_to_keep": 0}, r"max_to_keep must be an int >= 1, or None / float\('inf'\) .* got 0"),
        ({"max_to_keep": 2.5}, "max_to_keep"),
        ({"keep_best": "yes"}, "keep_best must be True or False, got 'yes'"),
        ({"minimize_metric": 1}, "minimize_metric must be True or False"),
        ({"metric_name": ""}, "metric_name must be a non-empty metric name"),
        ({"prepare_fn": 3}, "prepare_fn must be a function"),
        ({"on_error": "ignore"}, "on_error must be 'warn' or 'raise'"),
    ],
)
def test_bad_arguments_are_rejected_with_the_value_and_the_fix(
    tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    args: dict[str, Any] = {"registry_path": str(tmp_path), "run_id": "r", **kwargs}
    with pytest.raises(ConfigError, match=match):
        Checkpointer(**args)


def test_bad_train_states_and_lookups(tmp_path: Path, model_opt: Any) -> None:
    model, _ = model_opt
    with Checkpointer(str(tmp_path), "r") as ckpt:
        with pytest.raises(ValueError, match="pass step=<int>"):
            ckpt.save_latest({"model": model})
        with pytest.raises(TypeError, match=r"train_state\['extra'\]\['obj'\] is a object"):
            ckpt.save_latest({"model": model, "extra": {"obj": object()}}, step=1)
        with pytest.raises(InvalidNameError, match="train_state key path"):
            ckpt.save_latest({"a/b": model}, step=1)
        assert ckpt.load_latest() is None and ckpt.load_best() is None
        ckpt.save_latest({"model": model}, step=10)
        with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint at step 11 .* steps: \[10\]"):
            ckpt.load_checkpoint(11)
        with pytest.raises(
            CheckpointNotFoundError, match="no checkpoint named 'best'; available: latest, step_10"
        ):
            ckpt.load_checkpoint("best")
        with pytest.raises(CheckpointNotFoundError, match="not inside the checkpoint root"):
            ckpt.load_checkpoint(str(tmp_path / "elsewhere.pt"))
        with pytest.raises(
            TypeError, match=r"expected a step \(int\), a name or a step file.s path, got 1\.5"
        ):
            ckpt.load_checkpoint(1.5)  # type: ignore[arg-type]


def test_isolated_from_the_global_system_and_one_writer_per_run(tmp_path: Path, model_opt: Any) -> None:
    model, _ = model_opt
    with Checkpointer(str(tmp_path), "r") as ckpt:
        ckpt.save_latest({"model": model}, step=1)
        assert system_api._SYSTEM is None and get_ledger().list("model") == []
        with pytest.raises(RootLockedError):
            Checkpointer(str(tmp_path), "r")


def test_a_changed_architecture_opens_a_new_experiment(tmp_path: Path) -> None:
    small, big = mlp((8, 16, 4)), mlp((8, 32, 4))
    with Checkpointer(str(tmp_path), "r", save_every=10, checkpoint_every=10) as ckpt:
        ckpt.maybe_save_checkpoints({"model": small}, 10)
        ckpt.maybe_save_checkpoints({"model": big}, 20)
        manager = CheckpointManager(ckpt.checkpoint_dir, mode="r")
        assert len(manager.experiments()) == 2 and committed(ckpt) == {10, 20}
        assert ckpt.load_latest()["model"]["0.weight"].shape == (32, 8)  # type: ignore[index]
        assert ckpt.load_checkpoint(10)["model"]["0.weight"].shape == (16, 8)
