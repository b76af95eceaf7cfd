"""weightslab.cli.console from Python: tables, checkpoints, lineage, logging and progress on real roots."""

from __future__ import annotations

import io
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from rich.console import Console
from rich.logging import RichHandler

from weightslab.cli import console as wl_console
from weightslab.inspect.overview import lineage, parse_architecture_text
from weightslab.inspect.verify import verify_root
from weightslab.policy.retention import RetentionPolicy
from weightslab.registry.ledger import Ledger
from weightslab.store.manager import CheckpointManager, architecture_text
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig

from .test_cli import LineageRoot, build_lineage_root, squash


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> LineageRoot:
    return build_lineage_root(tmp_path_factory.mktemp("console") / "root")


def capture(width: int = 100) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width, color_system=None), buf


def test_print_summary_marks_the_active_experiment(root: LineageRoot) -> None:
    con, buf = capture()
    wl_console.print_summary(CheckpointManager(root.path, mode="r"), active=root.b, console=con)
    lines = buf.getvalue().splitlines()
    assert lines[0] == f"{root.path}: 3 experiments, 13 checkpoints, " + lines[0].rsplit(", ", 1)[1]
    marked = [line for line in lines[:-1] if line.startswith("* ")]
    assert len(marked) == 1 and marked[0].startswith(f"* {root.b}  {root.a[:7]}@20 config_change")
    assert lines[-1] == f"* active: {root.b}"
    assert max(map(len, lines)) <= 100

    con, buf = capture()
    wl_console.print_summary(root.path, monitor="train/loss", mode="max", console=con)
    text = buf.getvalue()
    assert "train/loss" in text and f"* {root.c}" in text  # a path works; active from the journal


def test_print_checkpoints_explains_what_retention_keeps(root: LineageRoot) -> None:
    con, buf = capture()
    manager = CheckpointManager(root.path, mode="r")
    wl_console.print_checkpoints(
        manager,
        root.c[:5],
        retention=RetentionPolicy(keep_last=2, keep_every=20),
        protected=[45],
        console=con,
    )
    text = squash(buf.getvalue())
    assert f"checkpoints of {root.c}: 7, retention: keep_last=2, keep_every=20" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line[:1].isdigit()}
    assert rows["60"].endswith("last, every, newest") and rows["55"].endswith(" last")
    assert rows["45"].endswith(" protected") and rows["40"].endswith(" every")
    assert rows["30"].endswith("not kept: gc removes it") and rows["35"].endswith("not kept: gc removes it")

    con, buf = capture()
    wl_console.print_checkpoints(root.path, root.a, retention={"keep_last": 1}, console=con)
    rows = {line.split()[0]: line for line in squash(buf.getvalue()).splitlines() if line[:1].isdigit()}
    assert rows["20"].endswith("last, newest, branch")  # b branched from a at step 20

    con, buf = capture()
    wl_console.print_checkpoints(root.path, console=con)  # default: the active experiment
    assert f"checkpoints of {root.c}: 7, retention: keep_last=3, keep_best=1 by val/loss (min)" in squash(
        buf.getvalue()
    )


def test_print_tree_and_show(root: LineageRoot) -> None:
    con, buf = capture()
    wl_console.print_tree(root.path, console=con)
    assert buf.getvalue().splitlines()[1:] == [
        f"└── {root.a}  (3 checkpoints, latest step 20)",
        f"    └── config_change at step 20 -> {root.b}  (3 checkpoints, latest step 30)",
        f"        └── model_change at step 30 -> {root.c}  (7 checkpoints, latest step 60)  * active",
    ]
    con, buf = capture()
    wl_console.show(root.path, console=con)
    text = buf.getvalue()
    assert text.index("3 experiments") < text.index("└──") and f"* active: {root.c}" in text
    con, buf = capture()
    wl_console.show(root.path, root.b[:6], console=con)
    text = squash(buf.getvalue())
    assert f"experiment {root.b}" in text and "architecture" in text and "lr: 0.05" in text


def test_tree_shows_a_return_to_an_earlier_experiment(tmp_path: Path) -> None:
    ledger = Ledger()
    config = {"lr": 0.1}
    ledger.register_hyperparams("config", config)
    ledger.register_model("model", torch.nn.Linear(3, 2))
    system = AutomaticCheckpointSystem(
        CheckpointConfig(root_log_dir=tmp_path, checkpoint_frequency=2, async_save=False, durable=False),
        ledger=ledger,
    )
    for step in range(5):
        system.checkpoint_on_step(step)
    first = system.exp_hash
    config["lr"] = 0.01
    system.checkpoint_on_config_change(5)
    second = system.exp_hash
    config["lr"] = 0.1  # undo the change: back to the first experiment
    system.checkpoint_on_config_change(6)
    assert system.exp_hash == first
    system.close()

    (node,) = lineage(CheckpointManager(tmp_path, mode="r"))
    assert node.info.exp_hash == first and [r.to_dict() for r in node.returns] == [
        {"previous": second, "step": 6, "reason": "config_change"}
    ]
    con, buf = capture()
    wl_console.print_tree(tmp_path, console=con)
    lines = buf.getvalue().splitlines()
    assert lines[2] == f"    ├── returned here from {second[:8]} at step 6 (config_change)"
    assert lines[3].startswith(f"    └── config_change at step 5 -> {second}")


def test_empty_root_and_an_unreadable_manifest(root: LineageRoot, tmp_path: Path) -> None:
    CheckpointManager(tmp_path / "empty", mode="w").close()
    con, buf = capture()
    wl_console.show(tmp_path / "empty", console=con)
    assert "0 experiments" in buf.getvalue() and "no experiments yet" in buf.getvalue()

    copy = tmp_path / "copy"
    shutil.copytree(root.path, copy)
    (copy / "checkpoints" / root.b / "manifest.json").write_text('{"format": "weightslab.manifest/1", "exp')
    con, buf = capture()
    wl_console.print_summary(copy, console=con)
    (row,) = [line for line in buf.getvalue().splitlines() if root.b in line]
    assert row.split() == [root.b, "manifest", "unreadable"]
    report = verify_root(CheckpointManager(copy, mode="r"))
    assert [(p.kind, p.exp_hash) for p in report.problems] == [("manifest", root.b)]
    assert report.problems[0].detail.startswith("not valid JSON")


def test_parse_architecture_text_reads_the_managers_table() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.LayerNorm(5))
    model[0].bias.requires_grad_(False)
    scalar = torch.nn.Module()
    scalar.register_parameter("temperature", torch.nn.Parameter(torch.tensor(1.0)))
    (mlp, temp) = parse_architecture_text(architecture_text({"mlp": model, "my model": scalar}))
    assert (mlp.name, mlp.class_name) == ("mlp", "torch.nn.modules.container.Sequential")
    assert [(p.name, p.shape, p.trainable) for p in mlp.parameters] == [
        ("0.weight", (5, 3), True),
        ("0.bias", (5,), False),
        ("1.weight", (5,), True),
        ("1.bias", (5,), True),
    ]
    assert (mlp.total, mlp.trainable) == (30, 25) and mlp.text.startswith("Sequential(")
    assert temp.name == "my model" and temp.parameters[0].shape == () and temp.total == 1


@pytest.fixture
def weightslab_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("weightslab")
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    wl_console.disable_rich_logging()
    logger.setLevel(level)
    assert logger.handlers == handlers


def test_rich_logging_is_opt_in_and_shows_saves(weightslab_logger: logging.Logger, tmp_path: Path) -> None:
    assert not any(isinstance(h, RichHandler) for h in weightslab_logger.handlers)
    con, buf = capture(width=200)
    wl_console.enable_rich_logging("INFO", console=con)
    wl_console.enable_rich_logging("INFO", console=con)  # replaces, never stacks
    assert sum(isinstance(h, RichHandler) for h in weightslab_logger.handlers) == 1

    ledger = Ledger()
    ledger.register_hyperparams("config", {"lr": 0.1})
    ledger.register_model("model", torch.nn.Linear(3, 2))
    system = AutomaticCheckpointSystem(
        CheckpointConfig(root_log_dir=tmp_path, checkpoint_frequency=2, async_save=False, durable=False),
        ledger=ledger,
    )
    system.checkpoint_on_step(1)
    system.checkpoint_on_step(2)
    system.close()
    saves = [line for line in buf.getvalue().splitlines() if "saved" in line]
    assert len(saves) == 1 and "INFO" in saves[0] and f"saved {system.exp_hash} step 2" in saves[0]

    wl_console.disable_rich_logging()
    assert not any(isinstance(h, RichHandler) for h in weightslab_logger.handlers)


def test_progress_is_drawn_only_on_a_terminal(root: LineageRoot) -> None:
    manager = CheckpointManager(root.path, mode="r")
    terminal = io.StringIO()
    with wl_console.RichTracker(Console(file=terminal, force_terminal=True, width=80)) as tracker:
        assert tracker.enabled
        report = verify_root(manager, tracker=tracker)
    assert "verifying" in terminal.getvalue() and "100%" in terminal.getvalue()
    assert report.healthy and report.checked == 13

    pipe = io.StringIO()
    with wl_console.RichTracker(Console(file=pipe)) as tracker:
        assert not tracker.enabled
        verify_root(manager, tracker=tracker)
    assert pipe.getvalue() == ""
