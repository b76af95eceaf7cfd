"""analyze_optimizer_checkpoint on files written by real torch optimizers, in the three layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from weightslab.analysis import analyze_optimizer_checkpoint
from weightslab.errors import CheckpointFormatError, CheckpointNotFoundError
from weightslab.format.layout import CHECKPOINT_FORMAT

from .analysis_runs import Snapshot, train


@pytest.fixture(scope="module")
def adamw() -> Snapshot:
    return train("adamw", [12], seed=2, peak_lr=3e-3)[12]


@pytest.fixture(scope="module")
def sgd() -> Snapshot:
    return train("sgd", [25], seed=4, peak_lr=0.2)[25]


def _step_file(snap: Snapshot, **extra: object) -> dict[str, object]:
    return {
        "format": CHECKPOINT_FORMAT, "exp_hash": "0123456789abcdef", "step": snap.step, "created": 0.0,
        "trigger": "step", "metrics": {}, "models": {"model": snap.model_state},
        "optimizers": {"optimizer": snap.optimizer_state}, "schedulers": {"scheduler": snap.scheduler_state},
        "extra": {}, "rng": {}, "hyperparams": {}, **extra,
    }  # fmt: skip


def test_plain_adamw_state_dict(tmp_path: Path, adamw: Snapshot) -> None:
    path = tmp_path / "optim.pt"
    torch.save(adamw.optimizer_state, path)
    a = analyze_optimizer_checkpoint(path)

    assert a.layout == "state_dict" and a.optimizer_type == "adamw" and a.scheduler is None
    assert a.file_bytes == path.stat().st_size
    assert [g.lr for g in a.param_groups] == adamw.lrs
    assert a.learning_rate.lr == adamw.lrs[0] and a.learning_rate.group_lrs == tuple(adamw.lrs)
    assert a.learning_rate.initial_lr == 3e-3  # LambdaLR records it in every group
    assert a.learning_rate.lr_ratio == pytest.approx(adamw.lrs[0] / 3e-3)
    decay, no_decay = a.param_groups
    assert (decay.weight_decay, no_decay.weight_decay) == (0.1, 0.0)
    assert decay.betas == (0.9, 0.95) and decay.eps == 1e-8 and decay.momentum is None
    assert (decay.num_parameters, no_decay.num_parameters) == (2, 2)
    assert (decay.num_elements, no_decay.num_elements) == (8 * 16 + 16 * 4, 16 + 4)
    assert decay.options["amsgrad"] is False and decay.options["decoupled_weight_decay"] is True
    assert a.state_step == adamw.optimizer_step == 12
    assert a.num_parameters == a.num_params_with_state == 4
    assert a.state_elements == 2 * 212  # exp_avg and exp_avg_sq for each of the 212 parameters

    exp_avg = a.component("exp_avg")
    exp_avg_sq = a.component("exp_avg_sq")
    assert exp_avg is not None and exp_avg_sq is not None and a.component("step") is None
    assert exp_avg.num_tensors == 4 and exp_avg.dtypes == ("float32",)
    assert exp_avg.stats.numel == 212
    assert exp_avg.stats.norm == pytest.approx(adamw.state_norm("exp_avg"), rel=1e-9)
    assert exp_avg.stats.mean == pytest.approx(adamw.state_mean("exp_avg"), rel=1e-9, abs=1e-15)
    assert exp_avg_sq.stats.norm == pytest.approx(adamw.state_norm("exp_avg_sq"), rel=1e-9)
    assert exp_avg_sq.stats.min is not None and exp_avg_sq.stats.min >= 0.0


def test_wrapper_with_scheduler(tmp_path: Path, adamw: Snapshot) -> None:
    path = tmp_path / "optim.pt"
    torch.save({"optimizer": adamw.optimizer_state, "lr_scheduler": adamw.scheduler_state, "step": 12}, path)
    a = analyze_optimizer_checkpoint(path)

    assert a.layout == "wrapper" and set(a.top_level_keys) == {"optimizer", "lr_scheduler", "step"}
    assert a.scheduler is not None
    assert a.scheduler.last_epoch == 12 and a.scheduler.step_count == 13
    assert a.scheduler.last_lr == tuple(adamw.lrs) and a.scheduler.base_lrs == (3e-3, 3e-3)
    assert a.learning_rate.scheduler_last_lr == tuple(adamw.lrs)
    assert a.learning_rate.scheduler_last_epoch == 12
    assert "last_epoch" in a.scheduler.keys


def test_sgd_with_momentum(tmp_path: Path, sgd: Snapshot) -> None:
    path = tmp_path / "optim.pt"
    torch.save(sgd.optimizer_state, path)
    a = analyze_optimizer_checkpoint(path)

    assert a.optimizer_type == "sgd" and a.state_step is None
    (group,) = a.param_groups
    assert group.lr == sgd.lrs[0] == pytest.approx(0.2 * 0.5**2)  # StepLR halves every 10 steps
    assert group.momentum == 0.9 and group.weight_decay == 1e-4 and group.betas is None
    assert group.options["nesterov"] is False
    assert group.initial_lr == 0.2
    buf = a.component("momentum_buffer")
    assert buf is not None and buf.num_tensors == 4
    assert buf.stats.norm == pytest.approx(sgd.state_norm("momentum_buffer"), rel=1e-9)


def test_weightslab_step_file(tmp_path: Path, adamw: Snapshot, sgd: Snapshot) -> None:
    path = tmp_path / "0123456789abcdef_step_000012.pt"
    torch.save(_step_file(adamw), path)
    a = analyze_optimizer_checkpoint(path)
    assert a.layout == "weightslab" and a.optimizer_name == "optimizer"
    assert a.learning_rate.lr == adamw.lrs[0]
    assert a.scheduler is not None and a.scheduler.last_epoch == 12

    two = _step_file(adamw)
    two["optimizers"] = {"adam": adamw.optimizer_state, "sgd": sgd.optimizer_state}
    two["schedulers"] = {"sgd": sgd.scheduler_state}
    torch.save(two, path)
    picked = analyze_optimizer_checkpoint(path, optimizer_name="sgd")
    assert picked.optimizer_name == "sgd" and picked.optimizer_type == "sgd"
    assert picked.scheduler is not None and picked.scheduler.last_epoch == 25
    assert analyze_optimizer_checkpoint(path).optimizer_name == "adam"
    with pytest.raises(CheckpointFormatError, match=r"no optimizer named 'lion'.*'adam', 'sgd'"):
        analyze_optimizer_checkpoint(path, optimizer_name="lion")


def test_optimizer_before_its_first_step_has_no_state(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    path = tmp_path / "optim.pt"
    torch.save(optimizer.state_dict(), path)
    a = analyze_optimizer_checkpoint(path)
    assert a.optimizer_type == "adamw" and a.components == () and a.state_step is None
    assert a.param_groups[0].num_elements is None and a.param_groups[0].num_parameters == 2
    assert a.learning_rate.lr == 1e-4 and a.learning_rate.initial_lr is None


def test_state_keyed_by_parameter_names(tmp_path: Path, adamw: Snapshot) -> None:
    # FSDP's full optimizer state dicts key the state and the groups' params by parameter name.
    names = ["0.weight", "2.weight", "0.bias", "2.bias"]
    sd = adamw.optimizer_state
    renamed = {
        "state": {names[i]: s for i, s in sd["state"].items()},
        "param_groups": [dict(g, params=[names[p] for p in g["params"]]) for g in sd["param_groups"]],
    }
    path = tmp_path / "optim.pt"
    torch.save(renamed, path)
    a = analyze_optimizer_checkpoint(path)
    assert [g.num_elements for g in a.param_groups] == [192, 20]
    assert a.component("exp_avg") is not None


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        analyze_optimizer_checkpoint(tmp_path / "nope.pt")


def test_file_without_optimizer_state_names_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, path)
    with pytest.raises(
        CheckpointFormatError, match=r"top-level keys are 'model', 'epoch'.*'state' and 'param_groups'"
    ):
        analyze_optimizer_checkpoint(path)


def test_step_file_of_another_format_version(tmp_path: Path, adamw: Snapshot) -> None:
    path = tmp_path / "step.pt"
    torch.save(_step_file(adamw, format="weightslab.checkpoint/9"), path)
    with pytest.raises(CheckpointFormatError, match=r"format 'weightslab.checkpoint/9'.*upgrade weightslab"):
        analyze_optimizer_checkpoint(path)


def test_damaged_and_legacy_files_are_format_errors(tmp_path: Path, adamw: Snapshot) -> None:
    good = tmp_path / "good.pt"
    torch.save(adamw.optimizer_state, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointFormatError, match="truncated or damaged"):
        analyze_optimizer_checkpoint(truncated)
    legacy = tmp_path / "legacy.pt"
    torch.save(adamw.optimizer_state, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointFormatError, match="not a zip-format torch file"):
        analyze_optimizer_checkpoint(legacy)


class Executable:
    """An object whose unpickling would run code: weights_only loading must refuse it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def test_files_that_need_code_execution_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state": {}, "param_groups": [], "payload": Executable()}, path)
    with pytest.raises(CheckpointFormatError, match=r"cannot be opened safely.*never executes code"):
        analyze_optimizer_checkpoint(path)
    assert "this must never run" not in capsys.readouterr().out


def test_state_larger_than_one_chunk_is_streamed_exactly(tmp_path: Path) -> None:
    # 64 MiB of state, four 32 MiB float64 chunks: the streamed statistics are exact.
    big = torch.nn.Parameter(torch.zeros(4096, 4096))
    optimizer = torch.optim.SGD([big], lr=0.5, momentum=0.9)
    optimizer.state[big]["momentum_buffer"] = torch.full((4096, 4096), 0.5)
    path = tmp_path / "optim.pt"
    torch.save(optimizer.state_dict(), path)
    a = analyze_optimizer_checkpoint(path)
    buf = a.component("momentum_buffer")
    assert buf is not None and buf.stats.numel == 4096 * 4096
    assert buf.stats.mean == 0.5 and buf.stats.std == 0.0
    assert buf.stats.norm == pytest.approx(0.5 * 4096)
