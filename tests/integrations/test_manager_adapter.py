"""``weightslab.integrations.manager``: the checkpoint-manager API, its usage examples and its rules.

The first tests are the usage examples of that API, run as written, with two adaptations: the
checkpoint ids they hard-code (``"checkpoint_epoch_0001_step_000100_20231201_143022"``) are replaced
by the ids ``save_checkpoint`` returned, and ``train_epoch()`` is a real epoch of a tiny regression.
Every manager works in ``tmp_path`` (``checkpoint_dir="checkpoints"`` is relative to the cwd).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

import weightslab.components
from weightslab.errors import CheckpointNotFoundError, ConfigError, ProtectedCheckpointError
from weightslab.inspect import open_root
from weightslab.integrations.manager import CheckpointConfig, CheckpointManager, CheckpointMetadata


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in tmp_path: ``checkpoint_dir`` is relative to the working directory."""
    monkeypatch.chdir(tmp_path)


def regression() -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(10, 1)
    x = torch.randn(64, 10)
    y = x @ torch.linspace(-1, 1, 10).unsqueeze(1) + 0.1 * torch.randn(64, 1)
    return model, torch.optim.Adam(model.parameters(), lr=0.05), x, y


# -- the usage examples -----------------------------------------------------------------------------
def test_basic_setup_and_its_save_interval() -> None:
    config = CheckpointConfig(
        checkpoint_dir="checkpoints",
        save_interval=5,  # Save every 5 epochs
        max_checkpoints=10,
        save_best_only=False,
        monitor_metric="val_loss",
        monitor_mode="min",
    )
    checkpoint_manager = CheckpointManager(config, experiment_name="my_experiment")
    model = nn.Linear(10, 1)
    optimizer = torch.optim.Adam(model.parameters())
    # epoch 1 is off the every-5-epochs grid of this config: not saved
    assert (
        checkpoint_manager.save_checkpoint(model, optimizer, epoch=1, step=100, metrics={"val_loss": 0.5})
        is None
    )
    saved = checkpoint_manager.save_checkpoint(model, optimizer, epoch=5, step=500, metrics={"val_loss": 0.4})
    assert saved is not None and saved.endswith("@500")
    assert Path("checkpoints/my_experiment/checkpoints").is_dir()
    assert [m.checkpoint_id for m in checkpoint_manager.list_checkpoints()] == [saved]
    checkpoint_manager.close()


def test_saving_and_loading_a_checkpoint(capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint_manager = CheckpointManager(CheckpointConfig(), experiment_name="my_experiment")
    # Create model and optimizer
    model = nn.Linear(10, 1)
    optimizer = torch.optim.Adam(model.parameters())

    # Save checkpoint
    checkpoint_id = checkpoint_manager.save_checkpoint(
        model=model,
        optimizer=optimizer,
        epoch=1,
        step=100,
        metrics={"val_loss": 0.5, "accuracy": 0.85},
        tags=["demo", "experiment"],
        description="First successful training run",
    )
    print(f"Checkpoint saved: {checkpoint_id}")
    assert capsys.readouterr().out == f"Checkpoint saved: {checkpoint_id}\n"
    exp_hash = open_root("checkpoints/my_experiment").experiments()[0]
    assert checkpoint_id == f"{exp_hash}@100"

    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    # Load checkpoint (the id save_checkpoint returned, not a hard-coded one)
    checkpoint_data = checkpoint_manager.load_checkpoint(
        checkpoint_id=checkpoint_id,
        model=model,
        optimizer=optimizer,
    )
    if checkpoint_data:
        print(f"Loaded checkpoint from epoch {checkpoint_data['epoch']}")
    assert capsys.readouterr().out == "Loaded checkpoint from epoch 1\n"
    assert checkpoint_data is not None
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert checkpoint_data["step"] == 100
    assert checkpoint_data["metrics"] == {"val_loss": 0.5, "accuracy": 0.85, "epoch": 1.0}
    assert checkpoint_data["tags"] == ["demo", "experiment"]
    assert checkpoint_data["description"] == "First successful training run"
    meta = checkpoint_data["metadata"]
    assert isinstance(meta, CheckpointMetadata)
    assert (meta.model_name, meta.experiment_name, meta.is_best, meta.is_latest) == (
        "Linear",
        "my_experiment",
        True,
        True,
    )
    entry = open_root("checkpoints/my_experiment").entry(exp_hash, 100)
    assert (meta.file_size, meta.checksum) == (entry.bytes, entry.xxh3_128)
    checkpoint_manager.close()


def test_best_only_checkpointing() -> None:
    model, optimizer, x, y = regression()
    losses: list[float] = []

    def train_epoch() -> float:
        """Four noisy mini-batches of training, then the loss on a fixed validation batch."""
        for i in range(4):
            batch = slice(i * 16, (i + 1) * 16)
            loss = nn.functional.mse_loss(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            losses.append(float(nn.functional.mse_loss(model(x[:16] * 1.5), y[:16])))
        return losses[-1]

    config = CheckpointConfig(save_best_only=True, monitor_metric="val_loss", monitor_mode="min")

    checkpoint_manager = CheckpointManager(config, "best_only_experiment")

    # Only saves when val_loss improves
    for epoch in range(100):
        val_loss = train_epoch()
        checkpoint_manager.save_checkpoint(
            model=model, optimizer=optimizer, epoch=epoch, metrics={"val_loss": val_loss}
        )

    improved = [e for e, loss in enumerate(losses) if all(loss < earlier for earlier in losses[:e])]
    assert 3 < len(improved) < 100  # the loss both improves and gets worse along the way
    kept = checkpoint_manager.list_checkpoints()
    # max_checkpoints=10 (the default) keeps the newest ten improvements
    assert [m.epoch for m in kept] == improved[-10:]
    assert kept[-1].is_best and kept[-1].metrics["val_loss"] == pytest.approx(min(losses), rel=1e-6)
    checkpoint_manager.close()


def test_checkpoint_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint_manager = CheckpointManager(CheckpointConfig(), experiment_name="my_experiment")
    model, optimizer, x, y = regression()
    ids = []
    for epoch, val_loss in ((1, 0.5), (2, 0.4), (3, 0.45)):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ids.append(
            checkpoint_manager.save_checkpoint(
                model, optimizer, epoch=epoch, step=100 * epoch, metrics={"val_loss": val_loss}
            )
        )
    # Compare multiple checkpoints (the ids save_checkpoint returned)
    comparison = checkpoint_manager.compare_checkpoints(ids)

    print("Metrics comparison:")
    for metric, values in comparison["metrics_comparison"].items():
        print(f"{metric}: {values}")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Metrics comparison:"
    assert out[1] == f"val_loss: {{'{ids[0]}': 0.5, '{ids[1]}': 0.4, '{ids[2]}': 0.45}}"
    assert out[2] == f"epoch: {{'{ids[0]}': 1.0, '{ids[1]}': 2.0, '{ids[2]}': 3.0}}"
    assert comparison["baseline"] == ids[0]
    assert set(comparison["weight_distance"]) == set(ids[1:])
    assert all(d["l2"] > 0 and not d["identical"] for d in comparison["weight_distance"].values())
    assert comparison["hyperparameter_changes"] == {ids[1]: [], ids[2]: []}
    checkpoint_manager.close()


def test_checkpoint_validation() -> None:
    checkpoint_manager = CheckpointManager(CheckpointConfig(backup_checkpoints=False), experiment_name="v")
    model = nn.Linear(10, 1)
    checkpoint_id = checkpoint_manager.save_checkpoint(model, epoch=0, metrics={"val_loss": 1.0})
    assert checkpoint_id is not None
    # Validate checkpoint integrity
    is_valid = checkpoint_manager.validate_checkpoint(checkpoint_id)
    assert is_valid is True
    assert checkpoint_manager.validate_checkpoint("checkpoint_id") is False  # not an id at all
    assert checkpoint_manager.validate_checkpoint(checkpoint_id.replace("@0", "@7")) is False
    (path,) = Path("checkpoints/v/checkpoints").rglob("*_step_000000.pt")
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0x01
    path.write_bytes(bytes(raw))
    assert checkpoint_manager.validate_checkpoint(checkpoint_id) is False
    checkpoint_manager.close()


def test_checkpoint_statistics() -> None:
    checkpoint_manager = CheckpointManager(CheckpointConfig(), experiment_name="stats")
    model = nn.Linear(10, 1)
    ids = [
        checkpoint_manager.save_checkpoint(model, epoch=e, metrics={"val_loss": v})
        for e, v in ((0, 0.9), (1, 0.3), (2, 0.6))
    ]
    summary = checkpoint_manager.get_checkpoint_summary()
    print(f"Total checkpoints: {summary['total_checkpoints']}")
    print(f"Total size: {summary['total_size_mb']:.2f} MB")
    print(f"Best checkpoint: {summary['best_checkpoint']}")
    print(f"Latest checkpoint: {summary['latest_checkpoint']}")
    root = open_root("checkpoints/stats")
    (h,) = root.experiments()
    assert summary["total_checkpoints"] == 3
    assert summary["total_size_mb"] == sum(e.bytes for e in root.checkpoints(h)) / (1024 * 1024)
    assert (summary["best_checkpoint"], summary["latest_checkpoint"]) == (ids[1], ids[2])
    assert summary["best_metric_value"] == 0.3 and summary["experiments"] == 1
    checkpoint_manager.close()


# -- behaviour -------------------------------------------------------------------------------------
def test_options_that_are_refused_say_why() -> None:
    with pytest.raises(ConfigError, match="compression=True is not supported yet"):
        CheckpointConfig(compression=True)
    with pytest.raises(ConfigError, match="save_metadata=False is not supported"):
        CheckpointConfig(save_metadata=False)
    with pytest.raises(ConfigError, match="save_interval must be a whole number >= 1, got 0"):
        CheckpointConfig(save_interval=0)
    with pytest.raises(ConfigError, match="save_best_only=True needs monitor_metric"):
        CheckpointConfig(save_best_only=True, monitor_metric=None)
    manager = CheckpointManager(CheckpointConfig(save_best_only=True), experiment_name="b")
    with pytest.raises(ConfigError, match=r"save_best_only needs metrics\['val_loss'\]"):
        manager.save_checkpoint(nn.Linear(2, 1), epoch=0, metrics={"loss": 1.0})
    # not weightslab.components.CheckpointManager: that name is the store behind every root
    assert weightslab.components.CheckpointManager is not CheckpointManager
    manager.close()


def test_save_interval_and_steps() -> None:
    manager = CheckpointManager(
        CheckpointConfig(save_interval=5, backup_checkpoints=False), experiment_name="i"
    )
    model = nn.Linear(3, 1)
    returned = [
        manager.save_checkpoint(model, epoch=e, metrics={"val_loss": 1.0 / (e + 1)}) for e in range(12)
    ]
    assert [r for r in returned if r is not None] == [
        f"{manager.list_checkpoints()[0].exp_hash}@{s}" for s in (0, 5, 10)
    ]
    # without epoch and step: one past the newest step
    auto = manager.save_checkpoint(model, metrics={"val_loss": 0.01})
    assert auto is not None and auto.endswith("@11")
    assert [m.epoch for m in manager.list_checkpoints()] == [0, 5, 10, None]
    manager.close()


def test_max_checkpoints_keeps_the_newest_and_the_best() -> None:
    manager = CheckpointManager(CheckpointConfig(max_checkpoints=3), experiment_name="r")
    model = nn.Linear(3, 1)
    for epoch, loss in enumerate([0.9, 0.1, 0.8, 0.7, 0.6, 0.5]):
        manager.save_checkpoint(model, epoch=epoch, metrics={"val_loss": loss})
    assert [m.epoch for m in manager.list_checkpoints()] == [1, 3, 4, 5]
    # the backup root holds the best and the newest
    backup = open_root("checkpoints/r-backups")
    (h,) = backup.experiments()
    assert [e.step for e in backup.checkpoints(h)] == [1, 5]
    assert backup.verify().healthy
    manager.close()


def test_delete_refuses_what_retention_protects() -> None:
    manager = CheckpointManager(CheckpointConfig(backup_checkpoints=False), experiment_name="d")
    model = nn.Linear(3, 1)
    first, middle, last = (
        manager.save_checkpoint(model, epoch=e, metrics={"val_loss": v})
        for e, v in ((0, 0.1), (1, 0.5), (2, 0.4))
    )
    assert first and middle and last
    with pytest.raises(
        ProtectedCheckpointError, match="it is the newest checkpoint of its experiment"
    ) as refused:
        manager.delete_checkpoint(last)
    assert isinstance(refused.value, ConfigError)  # code that caught ConfigError still catches it
    with pytest.raises(ProtectedCheckpointError, match=r"it is the best by val_loss \(min\)"):
        manager.delete_checkpoint(first)
    manager.delete_checkpoint(middle)
    assert [m.checkpoint_id for m in manager.list_checkpoints()] == [first, last]
    assert sorted(p.name for p in Path("checkpoints/d/checkpoints").rglob("*_step_*.pt")) == [
        f"{first.split('@')[0]}_step_000000.pt",
        f"{first.split('@')[0]}_step_000002.pt",
    ]
    with pytest.raises(CheckpointNotFoundError):
        manager.load_checkpoint(middle)
    manager.close()


def test_lr_change_comparison_shows_both_values() -> None:
    manager = CheckpointManager(CheckpointConfig(backup_checkpoints=False), experiment_name="lr")
    model, optimizer, _, _ = regression()
    before = manager.save_checkpoint(
        model, optimizer, epoch=0, metrics={"val_loss": 1.0}, config={"lr": 0.05}
    )
    for group in optimizer.param_groups:
        group["lr"] = 0.005
    after = manager.save_checkpoint(
        model, optimizer, epoch=1, metrics={"val_loss": 0.9}, config={"lr": 0.005}
    )
    assert before and after and before.split("@")[0] != after.split("@")[0]  # a config change: new experiment
    comparison = manager.compare_checkpoints([before, after])
    assert {(c["key"], c["old"], c["new"]) for c in comparison["hyperparameter_changes"][after]} == {
        ("config.lr", 0.05, 0.005),
        ("optimizers.optimizer.param_groups.0.lr", 0.05, 0.005),
    }
    assert comparison["weight_distance"][after]["identical"] is True  # nothing trained in between
    assert manager.load_checkpoint(after)["config"] == {"lr": 0.005}  # type: ignore[index]
    manager.close()


def test_save_optimizer_false_and_loading_in_a_new_process_layout(caplog: pytest.LogCaptureFixture) -> None:
    config = CheckpointConfig(save_optimizer=False, backup_checkpoints=False)
    manager = CheckpointManager(config, experiment_name="o")
    model, optimizer, _, _ = regression()
    checkpoint_id = manager.save_checkpoint(model, optimizer, epoch=0, metrics={"val_loss": 1.0})
    manager.close()
    again = CheckpointManager(config, experiment_name="o")  # reopened: what was saved is there
    fresh = nn.Linear(10, 1)
    with caplog.at_level(logging.WARNING, logger="weightslab"):
        data = again.load_checkpoint(model=fresh, optimizer=torch.optim.Adam(fresh.parameters()))
    assert (
        data is not None and data["checkpoint_id"] == checkpoint_id and data["optimizer_state_dict"] is None
    )
    assert "holds no optimizer state" in caplog.text
    assert torch.equal(fresh.weight, model.weight)
    with CheckpointManager(CheckpointConfig(), experiment_name="empty") as empty:
        assert empty.load_checkpoint() is None
    again.close()


def test_export_and_backup_of_one_checkpoint() -> None:
    manager = CheckpointManager(CheckpointConfig(max_checkpoints=2), experiment_name="e")
    model = nn.Linear(4, 2)
    keep = manager.save_checkpoint(model, epoch=0, metrics={"val_loss": 0.9})
    assert keep is not None
    result = manager.export_checkpoint(keep, "exported")
    assert sorted(p.name for p in result.files) == ["checkpoint.json", "config.yaml", "model.safetensors"]
    exported = load_file("exported/model.safetensors")
    assert all(torch.equal(exported[k], v) for k, v in model.state_dict().items())

    manager.backup_checkpoint(keep)  # tagged "backup": automatic backups keep it
    for epoch, loss in ((1, 0.5), (2, 0.4), (3, 0.3)):
        with torch.no_grad():
            model.weight.add_(0.1)
        manager.save_checkpoint(model, epoch=epoch, metrics={"val_loss": loss})
    backup = open_root("checkpoints/e-backups")
    (h,) = backup.experiments()
    assert [(e.step, e.tags) for e in backup.checkpoints(h)] == [(0, ("backup",)), (3, ())]
    assert backup.verify().healthy
    # the source's retention removed epoch 0; the backup still restores it
    assert [m.epoch for m in manager.list_checkpoints()] == [2, 3]
    restored = CheckpointManager(CheckpointConfig(backup_checkpoints=False), experiment_name="e-backups")
    zero = nn.Linear(4, 2)
    data = restored.load_checkpoint(keep, model=zero)
    assert data is not None and data["epoch"] == 0
    assert torch.equal(zero.weight, exported["weight"])
    manager.close()
    restored.close()
