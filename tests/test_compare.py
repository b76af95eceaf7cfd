"""``weightslab compare``: checkpoints side by side, on roots written by real training loops.

Distances are checked exactly where the arithmetic is exact: weights set to multiples of 1/4 and a
perturbation of (3, 4, 12) have an L2 distance of exactly 13 in float32 and float64 alike.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import train_step
from weightslab.cli.main import main
from weightslab.errors import CheckpointCorruptedError, ConfigError, UnknownExperimentError
from weightslab.inspect import open_root
from weightslab.inspect.compare import compare_checkpoints
from weightslab.inspect.distance import weight_distance
from weightslab.registry.ledger import Ledger
from weightslab.system.automatic import AutomaticCheckpointSystem

MakeSystem = Callable[..., AutomaticCheckpointSystem]
_ENV = {k: v for k, v in os.environ.items() if k not in {"COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR"}}


def wl(*args: object) -> subprocess.CompletedProcess[str]:
    """``python -m weightslab.cli ARGS`` with pipes, as a script would run it."""
    return subprocess.run(
        [sys.executable, "-m", "weightslab.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_ENV,
        check=False,
    )


def run_json(capsys: pytest.CaptureFixture[str], *args: object) -> Any:
    """Run the command in this process and parse its ``--json`` output (exit status 0 required)."""
    code = main([*map(str, args), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def lr_root(make_system: MakeSystem, ledger: Ledger, tmp_path: Path) -> tuple[Path, str, str]:
    """Steps 1-20 of SGD; after step 12's update lr goes 0.1 -> 0.01 (config and optimizer): two experiments."""
    system = make_system(checkpoint_frequency=5, async_save=False, durable=False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    config = {"lr": 0.1, "batch_size": 16}
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_hyperparams("config", config)
    for step in range(1, 21):
        loss = train_step(model, opt)
        if step == 12:
            config["lr"] = 0.01
            for group in opt.param_groups:
                group["lr"] = 0.01
        system.checkpoint_on_step(
            step, metrics={"train/loss": loss, **({"val/acc": 0.5} if step > 12 else {})}
        )
    system.close()
    manager = open_root(tmp_path / "root")
    first, second = manager.experiments()
    return tmp_path / "root", first, second


def test_lr_change_shows_both_lr_values(
    lr_root: tuple[Path, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    root, first, second = lr_root
    data = run_json(capsys, "compare", root, f"{first[:6]}@10", f"{second[:6]}@20")
    assert [c["label"] for c in data["checkpoints"]] == [f"{first[:8]}@10", f"{second[:8]}@20"]
    (pair,) = data["pairs"]
    assert {(c["key"], c["old"], c["new"]) for c in pair["hyperparams"]} == {
        ("config.lr", 0.1, 0.01),
        ("optimizers.optimizer.param_groups.0.lr", 0.1, 0.01),
    }
    assert pair["architecture"] == []
    assert pair["weights"]["compared"] == 4 and not pair["weights"]["identical"]
    assert pair["weights"]["l2"] > 0 and 0 < pair["weights"]["cosine"] < 1
    # every metric of each, None where a checkpoint did not report it
    assert list(data["metrics"]) == ["train/loss", "val/acc"]
    assert data["metrics"]["val/acc"] == [None, 0.5]

    result = wl("compare", root, f"{first[:6]}@10", f"{second[:6]}@20")  # as a script runs it, to a pipe
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and "\x1b[" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 100, result.stdout
    lr_row = next(line for line in result.stdout.splitlines() if line.startswith("config.lr"))
    assert lr_row.split() == ["config.lr", "0.1", "0.01"]
    assert "architecture: no changes" in result.stdout


def test_identical_checkpoints_have_distance_zero(
    make_system: MakeSystem, ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    system = make_system(checkpoint_frequency=10, async_save=False, durable=False)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 4))
    opt = torch.optim.Adam(model.parameters())
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    for step in range(1, 11):
        train_step(model, opt)
        system.checkpoint_on_step(step)
    system.save(11, {"note": 1.0}, trigger="manual")  # nothing trained in between
    system.close()
    h = open_root(tmp_path / "root").experiments()[0]
    data = run_json(capsys, "compare", tmp_path / "root", f"{h}@10", "@11", "@10")
    for pair in data["pairs"]:
        w = pair["weights"]
        assert (w["l2"], w["max_abs"], w["relative"], w["identical"]) == (0.0, 0.0, 0.0, True)
        assert w["cosine"] == pytest.approx(1.0, abs=1e-12)
        assert {t["l2"] for t in w["tensors"]} == {0.0}
        assert w["not_floating"] == ["model.1.num_batches_tracked"]  # an int64 buffer: compared, not measured
        assert (w["not_floating_changed"], w["non_finite"]) == ([], [])
        assert {t["finite"] for t in w["tensors"]} == {True}
        assert pair["hyperparams"] == [] and pair["architecture"] == []
    assert data["metrics"] == {"note": [None, 1.0, None]}


def test_exact_l2_for_a_known_perturbation(make_system: MakeSystem, ledger: Ledger, tmp_path: Path) -> None:
    system = make_system(async_save=False, durable=False)
    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.fill_(0.25)
        model.bias.zero_()
    ledger.register_model("model", model)
    system.save(1, {"val/loss": 1.0})
    with torch.no_grad():
        model.weight[0, :3] += torch.tensor([3.0, 4.0, 12.0])  # exact in float32: 3.25, 4.25, 12.25
    system.save(2, {"val/loss": 0.5})
    system.close()
    manager = open_root(tmp_path / "root")
    comparison = compare_checkpoints(manager, ["@1", "@2"])
    w = comparison.pairs[0].weights
    by_name = {t.name: t for t in w.tensors}
    assert by_name["weight"].l2 == 13.0 and by_name["weight"].max_abs == 12.0
    assert by_name["bias"].l2 == 0.0 and by_name["bias"].relative is None  # ||a|| = 0: undefined
    assert by_name["bias"].cosine is None
    assert w.l2 == 13.0 and w.max_abs == 12.0
    norm_a = 0.25 * math.sqrt(12)
    assert w.relative == pytest.approx(13.0 / norm_a, rel=1e-12)
    dot = 12 * 0.0625 + 0.25 * (3 + 4 + 12)
    norm_b_sq = 3.25**2 + 4.25**2 + 12.25**2 + 9 * 0.0625
    assert w.cosine == pytest.approx(dot / math.sqrt(0.75 * norm_b_sq), rel=1e-12)
    assert comparison.metrics == {"val/loss": [1.0, 0.5]}


def test_layers_that_changed_are_listed_not_measured(
    make_system: MakeSystem, ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    system = make_system(checkpoint_frequency=5, async_save=False, durable=False)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    for step in range(1, 11):
        train_step(model, opt)
        if step == 7:  # surgery: layer 2 widened, a new layer appended
            model[2] = torch.nn.Linear(16, 12)
            model.append(torch.nn.Linear(12, 4))
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            ledger.register_optimizer("optimizer", opt)
        system.checkpoint_on_step(step)
    system.close()
    first, second = open_root(tmp_path / "root").experiments()
    data = run_json(capsys, "compare", tmp_path / "root", f"{first}@5", f"{second}@10")
    (pair,) = data["pairs"]
    assert {(c["layer"], c["change"]) for c in pair["architecture"]} == {("2", "reshaped"), ("3", "added")}
    w = pair["weights"]
    assert w["shape_differs"] == {"model.2.weight": "4x16 -> 12x16", "model.2.bias": "4 -> 12"}
    assert w["only_in_b"] == ["model.3.weight", "model.3.bias"] and w["only_in_a"] == []
    assert [t["name"] for t in w["tensors"]] == ["0.weight", "0.bias"]  # only layer 0 is measurable


def test_bad_names_and_corrupt_files_are_errors(
    lr_root: tuple[Path, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    root, first, second = lr_root
    manager = open_root(root)
    with pytest.raises(UnknownExperimentError, match="no experiment"):
        compare_checkpoints(manager, ["ffff@5", f"{first}@5"])
    with pytest.raises(ConfigError, match="step number"):
        compare_checkpoints(manager, [f"{first}@five", f"{first}@5"])
    with pytest.raises(ConfigError, match="at least two"):
        compare_checkpoints(manager, [f"{first}@5"])
    assert main(["compare", str(root), f"{first}@7", f"{first}@5"]) == 2
    assert "has no checkpoint at step 7" in capsys.readouterr().err
    assert main(["compare", str(root), f"{first}@5"]) == 2
    assert "at least two" in capsys.readouterr().err
    # a flipped byte: the checksum refuses the file before anything is unpickled
    path = root / "checkpoints" / first / "model" / f"{first}_step_000010.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointCorruptedError):
        compare_checkpoints(manager, [f"{first}@10", f"{second}@20"])
    assert main(["compare", str(root), f"{first}@10", f"{second}@20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("weightslab: error:") and f"{first}_step_000010.pt" in err


def test_weight_distance_of_state_dicts() -> None:
    a = {"m": {"w": torch.tensor([1.0, 2.0, 2.0]), "steps": torch.tensor(3)}}
    b = {"m": {"w": torch.tensor([1.0, 2.0, 2.0]) * -1, "steps": torch.tensor(4)}}
    w = weight_distance(a, b)
    assert (w.l2, w.relative, w.cosine, w.max_abs) == (6.0, 2.0, -1.0, 4.0)
    assert w.not_floating == ["m.steps"] and w.not_floating_changed == ["m.steps"] and not w.identical
    assert w.non_finite == []


def test_a_nan_weight_is_never_identical(
    make_system: MakeSystem, ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    system = make_system(async_save=False, durable=False)
    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.fill_(0.25)
        model.bias.zero_()
    ledger.register_model("model", model)
    system.save(1)
    with torch.no_grad():
        model.weight[1, 2] = float("nan")  # a diverged run: one NaN, every other value unchanged
    system.save(2)
    system.close()
    manager = open_root(tmp_path / "root")
    comparison = compare_checkpoints(manager, ["@1", "@2", "@2"])
    for pair in comparison.pairs:
        w = pair.weights
        assert not w.identical and w.non_finite == ["model.weight"]
        assert math.isnan(w.max_abs) and math.isnan(w.l2)
        assert w.relative is not None and math.isnan(w.relative)
        assert w.cosine is not None and math.isnan(w.cosine)  # not clamped to 1.0
        by_name = {t.name: t for t in w.tensors}
        assert math.isnan(by_name["weight"].max_abs) and math.isnan(by_name["weight"].l2)
        assert not by_name["weight"].finite
        bias = by_name["bias"]
        assert (bias.l2, bias.max_abs, bias.finite) == (0.0, 0.0, True)
    # strict JSON has no NaN: the numbers read null, the flag and the list say why
    data = run_json(capsys, "compare", tmp_path / "root", "@1", "@2")
    w_json = data["pairs"][0]["weights"]
    assert (w_json["max_abs"], w_json["l2"], w_json["identical"]) == (None, None, False)
    assert w_json["non_finite"] == ["model.weight"]
    assert [t["finite"] for t in w_json["tensors"]] == [False, True]
    assert main(["compare", str(tmp_path / "root"), "@1", "@2"]) == 0
    out = capsys.readouterr().out
    assert "max |diff| nan" in out and "(identical)" not in out


def test_a_changed_integer_buffer_is_not_identical(
    make_system: MakeSystem, ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    system = make_system(async_save=False, durable=False)
    norm = torch.nn.BatchNorm1d(3)
    ledger.register_model("model", torch.nn.Sequential(torch.nn.Linear(4, 3), norm))
    system.save(1)
    assert norm.num_batches_tracked is not None
    norm.num_batches_tracked.add_(1)  # only the counter moves, no weight
    system.save(2)
    system.close()
    manager = open_root(tmp_path / "root")
    w = compare_checkpoints(manager, ["@1", "@2"]).pairs[0].weights
    assert (w.l2, w.max_abs, w.non_finite) == (0.0, 0.0, [])
    assert w.not_floating == w.not_floating_changed == ["model.1.num_batches_tracked"]
    assert not w.identical
    data = run_json(capsys, "compare", tmp_path / "root", "@1", "@2")
    w_json = data["pairs"][0]["weights"]
    assert (w_json["identical"], w_json["not_floating_changed"]) == (False, ["model.1.num_batches_tracked"])
    same = compare_checkpoints(manager, ["@2", "@2"]).pairs[0].weights
    assert same.identical and same.not_floating_changed == []


def test_infinities_are_carried_through() -> None:
    a = {"m": {"w": torch.tensor([1.0, 2.0]), "v": torch.tensor([3.0])}}
    b = {"m": {"w": torch.tensor([1.0, float("inf")]), "v": torch.tensor([3.0])}}
    w = weight_distance(a, b)
    assert (w.l2, w.max_abs, w.non_finite, w.identical) == (math.inf, math.inf, ["m.w"], False)
    assert [t.finite for t in w.tensors] == [False, True]
    both = weight_distance(b, b)  # inf - inf is NaN: not a value anyone can call unchanged
    assert math.isnan(both.max_abs) and not both.identical
