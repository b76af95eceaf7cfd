"""CheckpointCallback / AsyncCheckpointCallback with CheckpointParameters, driven by a small real loop.

The documented examples run here; where they build a trainer this package does not have
(``DreamTrainerConfig``, ``CallbackCollection``, ``Callback[BaseTrainer]``), ``TinyTrainer`` below
stands in: a real model, optimizer, scheduler and stateful sampler, calling the callback's hooks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from weightslab.errors import (
    CheckpointCorruptedError,
    CheckpointNotFoundError,
    ConfigError,
    SystemConfigurationError,
)
from weightslab.integrations.callbacks import (
    AsyncCheckpointCallback,
    CheckpointCallback,
    CheckpointParameters,
    as_trainer_checkpoint,
    find_checkpoints,
)
from weightslab.store.manager import CheckpointManager

from ..conftest import mlp

# a trainer's list of callbacks; TinyTrainer calls the hooks itself
CallbackCollection = list


class Sampler:
    """A stateful data order (what a resumable DataLoader keeps): the epoch and position in it."""

    def __init__(self) -> None:
        self.epoch, self.index = 0, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = state["epoch"], state["index"]


class TinyTrainer:
    """The smallest trainer that calls the hooks: ``configure()``, ``setup()``, ``fit()``."""

    def __init__(
        self,
        callback: CheckpointCallback,
        *,
        epochs: int = 6,
        steps_per_epoch: int = 4,
        val_target: float = 0.6,
    ) -> None:
        self.callback, self.epochs, self.steps_per_epoch = callback, epochs, steps_per_epoch
        self.val_target = val_target
        self.validations: dict[int, dict[str, float]] = {}  # step -> validation result
        self.other_callbacks: list[Any] = []

    def configure(self) -> None:
        self.model = mlp(seed=0)
        self.auxiliary = mlp((8, 4), seed=1)
        params = [*self.model.parameters(), *self.auxiliary.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=1e-2)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=2, gamma=0.5)
        self.train_loader, self.val_loader = Sampler(), Sampler()
        self.val_batch = torch.randn(64, 8, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():  # training drives outputs to 0; validation wants 0.6 of their first value
            # by default, so the validation loss is not monotone: the best checkpoint is not the last
            t = self.val_target
            self.targets = (t * self.model(self.val_batch), t * self.auxiliary(self.val_batch))

    def setup(self) -> None:
        self.start = self.callback.on_train_start(
            models={"model": self.model, "auxiliary": self.auxiliary},
            optimizers={"optimizer": self.optimizer},
            schedulers={"scheduler": self.scheduler},
            dataloaders={"train": self.train_loader, "val": self.val_loader},
        )

    def validation_step(self) -> dict[str, Any]:
        with torch.no_grad():
            loss = (self.model(self.val_batch) - self.targets[0]).pow(2).mean() + (
                self.auxiliary(self.val_batch) - self.targets[1]
            ).pow(2).mean()
        return {"val_loss": loss, "val_accuracy": torch.exp(-loss), "val_f1": torch.exp(-2 * loss)}

    def fit(self, max_epochs: int | None = None) -> None:
        step = self.start
        for epoch in range(step // self.steps_per_epoch, max_epochs or self.epochs):
            while step < (epoch + 1) * self.steps_per_epoch:
                x = torch.randn(16, 8)
                loss = self.model(x).pow(2).mean() + self.auxiliary(x).pow(2).mean()
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                self.train_loader.epoch, self.train_loader.index = epoch, step % self.steps_per_epoch + 1
                self.callback.on_train_step_end(step, {"loss": loss.item()})
                step += 1
            self.scheduler.step()  # before the epoch's checkpoint, so that a resume sees it done
            result = self.validation_step()
            self.validations[step - 1] = {k: float(v) for k, v in result.items()}
            for cb in self.other_callbacks:
                cb.post_validation_epoch(result)
            self.callback.post_validation_epoch(result)
            self.callback.on_epoch_end(epoch)
        self.callback.on_train_end()

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["models"]["model"])
        self.auxiliary.load_state_dict(checkpoint["models"]["auxiliary"])
        self.optimizer.load_state_dict(checkpoint["optimizers"]["optimizer"])
        self.scheduler.load_state_dict(checkpoint["schedulers"]["scheduler"])
        self.train_loader.load_state_dict(checkpoint["dataloaders"]["train"])


def run(callback: CheckpointCallback, **kwargs: Any) -> TinyTrainer:
    trainer = TinyTrainer(callback, **kwargs)
    trainer.configure()
    trainer.setup()
    trainer.fit()
    return trainer


def committed(root: Path) -> set[int]:
    manager = CheckpointManager(root, mode="r")
    return {e.step for h in manager.experiments() for e in manager.checkpoints(h)}


def top(values: dict[int, float], k: int, *, maximize: bool) -> set[int]:
    """The k best steps as weightslab ranks them (ties: the later step)."""
    sign = -1.0 if maximize else 1.0
    return set(sorted(values, key=lambda s: (sign * values[s], -s))[:k])


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_basic_checkpointing_keeps_the_best_three_and_the_last(tmp_path: Path) -> None:
    checkpoint_config = CheckpointParameters(
        root_dir=tmp_path / "checkpoints",  # the example's "./checkpoints", inside the test's folder
        monitor="val_loss",  # Metric to monitor
        mode="min",  # Save when metric is minimized
        keep_top_k=3,  # Keep best 3 checkpoints
        save_last=True,  # Always save last checkpoint
    )
    callback = CheckpointCallback(checkpoint_config)
    callbacks = CallbackCollection([callback])  # a trainer's callback list; TinyTrainer calls the hooks
    trainer = run(callbacks[0])
    losses = {s: v["val_loss"] for s, v in trainer.validations.items()}
    assert sorted(losses) == [3, 7, 11, 15, 19, 23]
    assert committed(tmp_path / "checkpoints") == top(losses, 3, maximize=False) | {23}
    config = callback.system.config  # type: ignore[union-attr]
    assert (config.keep_best, config.keep_last, config.monitor, config.save_last) == (
        3,
        None,
        "val_loss",
        True,
    )


def test_advanced_configuration_and_resume_from_the_best(tmp_path: Path) -> None:
    checkpoint_config = CheckpointParameters(
        root_dir="/mnt/checkpoints",
        monitor="val_accuracy",
        mode="max",  # Save when metric is maximized
        keep_top_k=5,
        save_last=True,
        save_every_n_epochs=5,  # Save every 5 epochs
        save_every_n_steps=1000,  # Save every 1000 steps
        resume_mode="best",  # Resume from best checkpoint
    )
    config = checkpoint_config.to_config(async_save=False)
    assert (config.checkpoint_frequency, config.every_n_epochs, config.keep_best, config.mode) == (
        1000,
        5,
        5,
        "max",
    )
    params = dataclasses.replace(checkpoint_config, root_dir=tmp_path / "ckpt")  # /mnt is not ours to write
    first = run(CheckpointCallback(params), epochs=10, steps_per_epoch=110)
    accuracy = {s: v["val_accuracy"] for s, v in first.validations.items()}
    best5 = top(accuracy, 5, maximize=True)
    # the step-1000 checkpoint has no val_accuracy, so keep_top_k does not keep it once it is not the newest
    assert committed(tmp_path / "ckpt") == best5 | {1099}
    best = max(accuracy, key=lambda s: (accuracy[s], s))
    saved = CheckpointCallback(params).load(best)

    second_cb = CheckpointCallback(params)
    second = TinyTrainer(second_cb, epochs=10, steps_per_epoch=110)
    second.configure()
    second.setup()
    assert second.start == best + 1 == second_cb.global_step
    assert second_cb.current_epoch == best // 110  # saved at the validation, before the epoch ended
    assert same_weights(second.model.state_dict(), saved["models"]["model"])
    second_cb.on_train_end()


class CustomCheckpointCallback(CheckpointCallback):
    def should_save(self) -> bool:
        """Custom logic for when to save."""
        # Save only if validation loss improved by 1%
        if self._current_metric is None:
            return False

        if not hasattr(self, "best_metric"):
            self.best_metric = float("inf")

        improvement = (self.best_metric - self._current_metric) / self.best_metric
        if improvement > 0.01:
            self.best_metric = self._current_metric
            return True

        return False


class FirstValueCheckpointCallback(CustomCheckpointCallback):
    """The same rule, measured from the first validation (``inf`` makes every improvement NaN)."""

    def should_save(self) -> bool:
        if self._current_metric is not None and not hasattr(self, "best_metric"):
            self.best_metric = self._current_metric
            return True
        return super().should_save()


def validation_saves(root: Path) -> set[int]:
    manager = CheckpointManager(root, mode="r")
    return {
        e.step for h in manager.experiments() for e in manager.checkpoints(h) if e.trigger == "validation"
    }


def test_custom_checkpoint_logic(tmp_path: Path) -> None:
    params = CheckpointParameters(root_dir=tmp_path / "as-written", monitor="val_loss", save_last=False)
    as_written = CustomCheckpointCallback(params)
    run(as_written)
    # (inf - x) / inf is NaN, and NaN > 0.01 is False: the rule as written never saves
    assert math.isnan((float("inf") - 1.0) / float("inf"))
    assert not hasattr(as_written, "best_metric") or as_written.best_metric == float("inf")
    assert validation_saves(tmp_path / "as-written") == set()

    params = dataclasses.replace(params, root_dir=tmp_path / "from-first")
    trainer = run(FirstValueCheckpointCallback(params), epochs=16, val_target=0.0)  # a falling loss
    expected, best = set(), math.inf
    for step, v in sorted(trainer.validations.items()):
        if best == math.inf or (best - v["val_loss"]) / best > 0.01:
            expected.add(step)
            best = v["val_loss"]
    assert validation_saves(tmp_path / "from-first") == expected
    assert 2 <= len(expected) < len(trainer.validations)  # some improvements were under 1%


def test_checkpoint_structure(tmp_path: Path) -> None:
    callback = CheckpointCallback(CheckpointParameters(root_dir=tmp_path, monitor="val_loss"))
    trainer = run(callback)
    checkpoint = callback.load("latest")
    assert set(checkpoint) == {"trainer", "models", "optimizers", "schedulers", "dataloaders", "metadata"}
    assert checkpoint["trainer"] == {
        "global_step": 24,
        "current_epoch": 5,  # saved at epoch 5's validation, before on_epoch_end(5)
        "callbacks": {"checkpoint": {"current_metric": trainer.validations[23]["val_loss"]}},
    }
    assert set(checkpoint["models"]) == {"model", "auxiliary"}
    assert same_weights(checkpoint["models"]["auxiliary"], trainer.auxiliary.state_dict())
    assert set(checkpoint["optimizers"]) == {"optimizer"} and set(checkpoint["schedulers"]) == {"scheduler"}
    assert checkpoint["schedulers"]["scheduler"] == trainer.scheduler.state_dict()
    assert checkpoint["dataloaders"] == {"train": {"epoch": 5, "index": 4}, "val": {"epoch": 0, "index": 0}}
    assert checkpoint["metadata"]["step"] == 23 and checkpoint["metadata"]["trigger"] == "validation"


def test_automatic_resume_continues_exactly(tmp_path: Path) -> None:
    whole = run(CheckpointCallback(CheckpointParameters(root_dir=tmp_path / "whole")), epochs=4)

    checkpoint_config = CheckpointParameters(
        root_dir=tmp_path / "checkpoints",
        resume_mode="latest",  # Resume from most recent
    )
    # Training will automatically resume if checkpoints exist
    interrupted = TinyTrainer(CheckpointCallback(checkpoint_config), epochs=4)
    interrupted.configure()
    interrupted.setup()
    interrupted.fit(max_epochs=2)  # stops after two of the four epochs

    trainer = TinyTrainer(CheckpointCallback(checkpoint_config), epochs=4)  # MyTrainer(config)
    trainer.configure()
    trainer.setup()
    assert trainer.start == 8
    trainer.fit()  # Resumes from checkpoint
    assert same_weights(trainer.model.state_dict(), whole.model.state_dict())
    assert trainer.optimizer.param_groups[0]["lr"] == whole.optimizer.param_groups[0]["lr"]
    assert trainer.train_loader.state_dict() == whole.train_loader.state_dict()


@pytest.mark.parametrize("resume_mode", ["latest", "best", None])
def test_resume_modes(tmp_path: Path, resume_mode: str | None) -> None:
    first = run(CheckpointCallback(CheckpointParameters(root_dir=tmp_path, monitor="val_loss", keep_top_k=2)))
    losses = {s: v["val_loss"] for s, v in first.validations.items()}
    best = min(losses, key=lambda s: (losses[s], -s))
    assert best != 23  # so that "best" and "latest" differ
    target = {"latest": 23, "best": best, None: None}[resume_mode]
    params = CheckpointParameters(root_dir=tmp_path, monitor="val_loss", resume_mode=resume_mode)  # type: ignore[arg-type]
    callback = CheckpointCallback(params)
    trainer = TinyTrainer(callback)
    trainer.configure()
    fresh = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.setup()
    if target is None:
        assert trainer.start == 0 and same_weights(trainer.model.state_dict(), fresh)
    else:
        assert trainer.start == target + 1
        assert same_weights(trainer.model.state_dict(), callback.load(target)["models"]["model"])
    callback.on_train_end()


def test_manual_loading_inspection_and_debugging(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trainer = run(CheckpointCallback(CheckpointParameters(root_dir=tmp_path / "experiment")))
    # Load specific checkpoint (the step files are named <hash>_step_<step>.pt; find_checkpoints lists them)
    checkpoint_path = find_checkpoints(tmp_path / "experiment", mode="latest")[0].path
    state_dict = torch.load(checkpoint_path)
    trainer.load_state_dict(as_trainer_checkpoint(state_dict))  # the file holds weightslab's step dict
    assert same_weights(trainer.model.state_dict(), state_dict["models"]["model"])

    # Load and inspect checkpoint
    state_dict = as_trainer_checkpoint(torch.load(checkpoint_path, map_location="cpu"))
    assert (state_dict["trainer"]["global_step"], state_dict["trainer"]["current_epoch"]) == (24, 5)
    assert set(state_dict["models"].keys()) == {"model", "auxiliary"}

    # Enable verbose logging (weightslab logs under "weightslab")
    logging.getLogger("weightslab").setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="weightslab")
    ckpt = torch.load(checkpoint_path, map_location="cpu")
    assert {"models", "optimizers", "schedulers", "extra", "step", "metrics"} <= set(ckpt.keys())
    assert len(ckpt["models"]["model"]) == len(trainer.model.state_dict())
    logging.getLogger("weightslab").setLevel(logging.NOTSET)


def test_monitoring_a_custom_metric(tmp_path: Path) -> None:
    for name in ("loss", "val_loss", "val_perplexity", "accuracy", "val_f1", "val_bleu"):
        assert CheckpointParameters(monitor=name).monitor == name
    params = CheckpointParameters(root_dir=tmp_path, monitor="val_custom_score", mode="max", keep_top_k=2)
    callback = CheckpointCallback(params)
    trainer = TinyTrainer(callback)

    def validation_step() -> dict[str, Any]:
        with torch.no_grad():
            outputs = trainer.model(trainer.val_batch)
            loss = outputs.pow(2).mean()
            custom_score = torch.cos(loss * 10)  # not monotone in the loss
        return {"val_loss": loss, "val_custom_score": custom_score}

    trainer.validation_step = validation_step  # type: ignore[method-assign]
    trainer.configure()
    trainer.setup()
    trainer.fit()
    scores = {s: v["val_custom_score"] for s, v in trainer.validations.items()}
    assert committed(tmp_path) == top(scores, 2, maximize=True) | {23}
    ranked = find_checkpoints(tmp_path, mode="best")  # the monitor is read from the run's manifests
    assert [c.step for c in ranked if c.metric is not None][:2] == sorted(
        top(scores, 2, maximize=True), key=lambda s: -scores[s]
    )


def test_asynchronous_checkpointing_saves_the_same_state(tmp_path: Path) -> None:
    checkpoint_config = CheckpointParameters(root_dir=tmp_path / "sync", monitor="val_loss", keep_top_k=2)
    sync = run(CheckpointCallback(checkpoint_config))
    # Same configuration, but saves happen in background
    callback = AsyncCheckpointCallback(dataclasses.replace(checkpoint_config, root_dir=tmp_path / "async"))
    trainer = TinyTrainer(callback)
    trainer.configure()
    trainer.setup()
    assert callback.system is not None and callback.system.config.async_save is True
    trainer.fit()  # Training continues while checkpoint saves
    assert committed(tmp_path / "async") == committed(tmp_path / "sync")
    for step in committed(tmp_path / "sync"):
        a = CheckpointCallback(checkpoint_config).load(step)
        b = callback.load(step)
        assert same_weights(a["models"]["model"], b["models"]["model"])
        assert a["trainer"] == b["trainer"]
    assert same_weights(sync.model.state_dict(), trainer.model.state_dict())


def test_best_practice_configurations() -> None:
    # For generative models
    checkpoint_config = CheckpointParameters(monitor="val_perplexity", mode="min")
    assert checkpoint_config.to_config(async_save=False).monitor == "val_perplexity"
    # For classification
    checkpoint_config = CheckpointParameters(monitor="val_accuracy", mode="max")
    assert checkpoint_config.to_config(async_save=False).mode == "max"
    # For multi-task
    checkpoint_config = CheckpointParameters(
        monitor="val_combined_score",  # Custom metric
        mode="max",
    )
    assert checkpoint_config.monitor == "val_combined_score"
    # Storage management
    checkpoint_config = CheckpointParameters(
        root_dir="/fast_ssd/checkpoints",  # Fast storage
        keep_top_k=3,  # Limit storage usage
        save_last=True,  # Keep recent for resume
    )
    config = checkpoint_config.to_config(async_save=True)
    assert (str(config.root_log_dir), config.keep_last, config.keep_best) == ("/fast_ssd/checkpoints", 3, 0)
    # Balance between safety and performance
    checkpoint_config = CheckpointParameters(
        save_every_n_steps=500,  # Frequent for unstable training
        save_every_n_epochs=1,  # Standard epoch checkpoints
        keep_top_k=5,  # Keep enough for analysis
    )
    config = checkpoint_config.to_config(async_save=False)
    assert (config.checkpoint_frequency, config.every_n_epochs, config.keep_last) == (500, 1, 5)


def test_find_checkpoints(tmp_path: Path) -> None:
    trainer = run(
        CheckpointCallback(CheckpointParameters(root_dir=tmp_path / "experiment", monitor="val_loss"))
    )
    losses = {s: v["val_loss"] for s, v in trainer.validations.items()}
    # List all checkpoints
    checkpoints = find_checkpoints(
        checkpoint_dir=tmp_path / "experiment",
        mode="best",  # or "latest"
    )
    lines = [f"Step: {ckpt.step}, Metric: {ckpt.metric}" for ckpt in checkpoints]
    assert lines == [f"Step: {s}, Metric: {losses[s]}" for s in sorted(losses, key=lambda s: losses[s])]
    latest = find_checkpoints(tmp_path / "experiment", mode="latest")
    assert [c.step for c in latest] == sorted(losses, reverse=True) and Path(latest[0].path).is_file()
    run(CheckpointCallback(CheckpointParameters(root_dir=tmp_path / "plain")), epochs=1)
    with pytest.raises(ConfigError, match="needs monitor"):
        find_checkpoints(tmp_path / "plain", mode="best")


class MetricCheckpointCallback:  # the example's base, Callback[BaseTrainer], belongs to another trainer
    """Save checkpoint when multiple metrics improve."""

    def __init__(self, checkpoint_callback: CheckpointCallback):
        self.checkpoint_callback = checkpoint_callback
        self.best_accuracy = 0
        self.best_f1 = 0

    def post_validation_epoch(self, result: dict[str, Any]) -> None:
        accuracy = result.get("val_accuracy", 0)
        f1 = result.get("val_f1", 0)

        # Save if both metrics improve
        if accuracy > self.best_accuracy and f1 > self.best_f1:
            self.best_accuracy = accuracy
            self.best_f1 = f1

            # Trigger checkpoint save
            self.checkpoint_callback._current_metric = accuracy
            self.checkpoint_callback.save()


class OnlyOnRequest(CheckpointCallback):
    def should_save(self) -> bool:
        return False


def test_integration_with_other_callbacks(tmp_path: Path) -> None:
    checkpoint_callback = OnlyOnRequest(
        CheckpointParameters(root_dir=tmp_path, monitor="val_accuracy", mode="max")
    )
    trainer = TinyTrainer(checkpoint_callback)
    trainer.other_callbacks = [MetricCheckpointCallback(checkpoint_callback)]
    trainer.configure()
    trainer.setup()
    trainer.fit()
    expected, best_acc, best_f1 = {}, 0.0, 0.0
    for step, v in sorted(trainer.validations.items()):
        if v["val_accuracy"] > best_acc and v["val_f1"] > best_f1:
            best_acc, best_f1 = v["val_accuracy"], v["val_f1"]
            expected[step] = v["val_accuracy"]
    manager = CheckpointManager(tmp_path, mode="r")
    (exp_hash,) = manager.experiments()
    manual = {
        e.step: e.metric("val_accuracy") for e in manager.checkpoints(exp_hash) if e.trigger == "manual"
    }
    assert manual == pytest.approx(expected) and expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"root_dir": ""}, "root_dir must be a non-empty folder path"),
        ({"monitor": ""}, "monitor must be a metric name"),
        ({"mode": "lowest"}, "mode must be 'min' or 'max', got 'lowest'"),
        ({"keep_top_k": 0}, r"keep_top_k must be an int >= 1 \(checkpoints to keep\) or None, got 0"),
        ({"save_every_n_epochs": 1.5}, "save_every_n_epochs must be an int >= 1"),
        ({"save_every_n_steps": True}, "save_every_n_steps must be an int >= 1"),
        ({"save_last": "yes"}, "save_last must be True or False"),
        ({"resume_mode": "last"}, "resume_mode must be 'latest', 'best' or None, got 'last'"),
        ({"resume_mode": "best"}, r"resume_mode='best' needs monitor=<metric name>"),
        ({"on_error": "ignore"}, "on_error must be 'warn' or 'raise'"),
    ],
)
def test_bad_parameters_are_rejected(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CheckpointParameters(**kwargs)


def test_hooks_out_of_order_and_bad_objects(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="expects CheckpointParameters"):
        CheckpointCallback({"root_dir": tmp_path})  # type: ignore[arg-type]
    callback = CheckpointCallback(CheckpointParameters(root_dir=tmp_path))
    with pytest.raises(SystemConfigurationError, match="on_train_start"):
        callback.save()
    with pytest.raises(TypeError, match="callback 'logger' has no state_dict"):
        callback.on_train_start(models=mlp(), callbacks={"logger": object()})
    assert callback.on_train_start(models=mlp()) == 0
    with pytest.raises(SystemConfigurationError, match="already called"):
        callback.on_train_start(models=mlp())
    with pytest.raises(ValueError, match="after a training step"):
        callback.save()
    callback.on_train_end()
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint yet"):
        callback.load()


def test_a_corrupt_newest_checkpoint(tmp_path: Path) -> None:
    params = CheckpointParameters(root_dir=tmp_path, monitor="val_loss")
    run(CheckpointCallback(params))
    newest = find_checkpoints(tmp_path, mode="latest")[0]
    data = bytearray(Path(newest.path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(newest.path).write_bytes(bytes(data))
    callback = CheckpointCallback(params)
    with pytest.raises(CheckpointCorruptedError, match=newest.path):
        callback.load(newest.step)
    assert callback.load("latest")["metadata"]["step"] == 19  # skipped, as resume skips it
    trainer = TinyTrainer(callback)
    trainer.configure()
    trainer.setup()
    assert trainer.start == 20
    callback.on_train_end()


@pytest.mark.parametrize("callback_class", [CheckpointCallback, AsyncCheckpointCallback])
def test_a_validation_at_a_step_already_saved_ranks_that_checkpoint(
    tmp_path: Path, callback_class: type[CheckpointCallback]
) -> None:
    params = CheckpointParameters(root_dir=tmp_path, monitor="val_loss", save_every_n_steps=3, keep_top_k=4)
    with pytest.warns(UserWarning, match="monitor='val_loss'"):  # step 3's save comes before any validation
        trainer = run(callback_class(params))
    # validations at steps 3, 7, ..., 23; the step schedule saved steps 3 and 15 before their validation
    vals = {step: result["val_loss"] for step, result in trainer.validations.items()}
    manager = CheckpointManager(tmp_path, mode="r")
    entries = {e.step: e for h in manager.experiments() for e in manager.checkpoints(h)}
    for step in (3, 15):
        assert entries[step].trigger == "step" and entries[step].metric("val_loss") == vals[step]
    expected = top(vals, 4, maximize=False) | {23}  # 23: the newest
    assert set(entries) == expected == {3, 15, 19, 23}  # 7 and 11 rank below both late-validated steps
    best = min(vals, key=lambda s: vals[s])
    assert best == 3 and CheckpointCallback(params).load("best")["metadata"]["step"] == best
    ranked = [info.step for info in find_checkpoints(tmp_path, mode="best")]
    assert ranked == sorted(expected, key=lambda s: vals[s])
