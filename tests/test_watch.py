"""Live hyperparameter files: real files in tmp_path, a real watchdog observer, real threads."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from watchdog.utils import BaseThread

from weightslab.components import AutomaticCheckpointSystem, CheckpointManager
from weightslab.registry.ledger import Ledger, LedgerEvent
from weightslab.registry.watch import (
    HyperparamsWatcher,
    Rejection,
    apply_lr_changes,
    parse_edit,
    render_yaml,
    write_back,
)
from weightslab.system.config import CheckpointConfig

# Only a guard against a hang: edits arrive in about 0.1 s (see the live-config guide); a loaded
# machine is slower, and the tests wait for the event itself, not for a time window.
SHOW_WITHIN = 60.0
CONFIG = "# training settings\nlr: 0.1  # the learning rate\nbatch_size: 32\noptimizer:\n  momentum: 0.9\n"


def wait_for(predicate: Callable[[], bool], timeout: float = SHOW_WITHIN, what: str = "condition") -> float:
    """Poll ``predicate`` until it holds; returns the seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what} did not hold within {timeout}s")
        time.sleep(0.005)
    return time.monotonic() - start


def load_config(ledger: Ledger, path: Path, **options: bool) -> dict[str, Any]:
    """``register_hyperparams`` of a YAML file: the dict the training code reads."""
    config: Any = ledger.register_hyperparams("config", path, **options)  # typed as the path it is given
    return config


def watch_threads() -> list[threading.Thread]:
    return [
        t for t in threading.enumerate() if isinstance(t, BaseThread) or t.name.startswith("weightslab-watch")
    ]


def edit_in_place(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def edit_rename_over(path: Path, text: str) -> None:
    """What most editors and ``yaml`` tools do: write a temporary file, rename it over the original."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def edit_backup_then_write(path: Path, text: str) -> None:
    """What vim does by default: move the original away, write a new file, drop the backup."""
    backup = path.with_name(path.name + "~")
    os.replace(path, backup)
    path.write_text(text, encoding="utf-8")
    backup.unlink()


class Recorder:
    """Collects ledger events and hyperparameter-change callbacks (called on the watcher's thread)."""

    def __init__(self, ledger: Ledger) -> None:
        self.events: list[LedgerEvent] = []
        self.changes: list[tuple[str, tuple[str, ...], dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.removers = [
            ledger.add_listener(self._event),
            ledger.on_hyperparams_change(self._change),
        ]

    def _event(self, event: LedgerEvent) -> None:
        with self._lock:
            self.events.append(event)

    def _change(self, name: str, keys: tuple[str, ...], values: Any) -> None:
        with self._lock:
            self.changes.append((name, keys, yaml.safe_load(yaml.safe_dump(dict(values)))))

    def rejected(self) -> list[LedgerEvent]:
        with self._lock:
            return [e for e in self.events if e.action == "rejected"]


@pytest.fixture(autouse=True)
def no_watch_threads_left() -> Iterator[None]:
    yield
    assert watch_threads() == [], "a watcher thread survived the test"


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    own = Ledger()
    yield own
    own.stop_watchers()
    own.clear()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


@pytest.fixture
def system_on(tmp_path: Path) -> Iterator[Callable[[Ledger], AutomaticCheckpointSystem]]:
    systems: list[AutomaticCheckpointSystem] = []

    def make(ledger: Ledger) -> AutomaticCheckpointSystem:
        config = CheckpointConfig(
            root_log_dir=tmp_path / "runs", checkpoint_frequency=5, async_save=False, durable=False
        )
        system = AutomaticCheckpointSystem(config, ledger=ledger)
        systems.append(system)
        return system

    yield make
    for system in systems:
        system.close()


# -- edits reach the registered mapping ----------------------------------------------------------------
@pytest.mark.parametrize("edit", [edit_in_place, edit_rename_over, edit_backup_then_write])
def test_edit_is_applied_in_place(
    ledger: Ledger, config_file: Path, edit: Callable[[Path, str], None]
) -> None:
    config = load_config(ledger, config_file, watch=True)
    recorder = Recorder(ledger)
    assert config["lr"] == 0.1

    edit(config_file, CONFIG.replace("lr: 0.1", "lr: 0.05"))

    wait_for(lambda: config["lr"] == 0.05, what="the edited lr")
    assert ledger.get("hyperparams", "config") is config  # the same dict, updated in place
    assert config == {"lr": 0.05, "batch_size": 32, "optimizer": {"momentum": 0.9}}
    wait_for(lambda: len(recorder.changes) == 1, what="the change callback")
    assert recorder.changes == [
        ("config", ("lr",), {"lr": 0.05, "batch_size": 32, "optimizer": {"momentum": 0.9}})
    ]
    assert [e.keys for e in recorder.events if e.action == "update"] == [("lr",)]
    assert ledger.watcher("config").applied == 1


def test_nested_and_removed_keys_are_reported(ledger: Ledger, config_file: Path) -> None:
    config = load_config(ledger, config_file, watch=True)
    recorder = Recorder(ledger)

    edit_in_place(config_file, "lr: 0.1\noptimizer:\n  momentum: 0.8\n  nesterov: true\n")

    wait_for(lambda: bool(recorder.changes), what="the change callback")
    assert recorder.changes[0][1] == ("batch_size", "optimizer.momentum", "optimizer.nesterov")
    assert config == {"lr": 0.1, "optimizer": {"momentum": 0.8, "nesterov": True}}


def test_two_quick_edits_end_with_the_second(ledger: Ledger, config_file: Path) -> None:
    config = load_config(ledger, config_file, watch=True)
    recorder = Recorder(ledger)

    edit_in_place(config_file, CONFIG.replace("lr: 0.1", "lr: 0.2"))
    edit_rename_over(config_file, CONFIG.replace("lr: 0.1", "lr: 0.3"))

    # the values are applied before the listeners hear of it: wait for the event, not the value
    wait_for(
        lambda: config["lr"] == 0.3 and bool(recorder.changes) and recorder.changes[-1][2]["lr"] == 0.3,
        what="the second edit",
    )
    assert recorder.rejected() == []


def test_an_edit_right_after_an_applied_one_is_applied_too(ledger: Ledger, config_file: Path) -> None:
    config = load_config(ledger, config_file, watch=True)
    recorder = Recorder(ledger)

    edit_in_place(config_file, CONFIG.replace("lr: 0.1", "lr: 0.2"))
    wait_for(lambda: len(recorder.changes) == 1, what="the callback of the first edit")
    edit_in_place(config_file, CONFIG.replace("lr: 0.1", "lr: 0.3"))
    wait_for(lambda: len(recorder.changes) == 2, what="the callback of the second edit")
    assert config["lr"] == 0.3

    assert [values["lr"] for _, _, values in recorder.changes] == [0.2, 0.3]


def test_file_that_disappears_and_comes_back(ledger: Ledger, config_file: Path) -> None:
    config = load_config(ledger, config_file, watch=True)
    config_file.unlink()
    time.sleep(0.3)  # the watcher sees the deletion; the values stay
    assert config["lr"] == 0.1

    edit_in_place(config_file, CONFIG.replace("lr: 0.1", "lr: 0.4"))
    wait_for(lambda: config["lr"] == 0.4, what="the recreated file")


def test_touching_the_file_changes_nothing(ledger: Ledger, config_file: Path) -> None:
    ledger.register_hyperparams("config", config_file, watch=True)
    recorder = Recorder(ledger)
    version = ledger.version

    os.utime(config_file)
    edit_in_place(config_file, CONFIG)  # same bytes
    edit_in_place(config_file, CONFIG + "# a new comment\n")  # same values

    time.sleep(0.8)  # longer than a burst and its settling: nothing may arrive
    assert recorder.events == []
    assert ledger.version == version


# -- invalid edits -------------------------------------------------------------------------------------
INVALID = {
    "syntax": ("lr: 0.1\nbatch_size: [32\n", 3, "YAML syntax error"),
    "not_a_mapping": ("- lr\n- 0.1\n", 1, "holds a list"),
    "empty": ("", None, "empty"),
    "type_change": (CONFIG.replace("lr: 0.1", "lr: 1e-3"), 2, "lr was float (0.1), the edit makes it str"),
    "nested_type_change": (
        CONFIG.replace("momentum: 0.9", "momentum: {a: 1}"),
        5,
        "optimizer.momentum was float",
    ),
    "date": (CONFIG.replace("batch_size: 32", "batch_size: 2024-01-01"), 3, "cannot be serialised"),
    "python_tag": ("lr: !!python/name:os.system\n", 1, "Python tags are never loaded"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_edit_changes_nothing_and_the_next_valid_one_is_applied(
    ledger: Ledger,
    config_file: Path,
    system_on: Callable[[Ledger], AutomaticCheckpointSystem],
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    caplog.set_level(logging.INFO, logger="weightslab")
    text, line, reason = INVALID[case]
    system = system_on(ledger)
    config = load_config(ledger, config_file, watch=True, check_types=True)
    recorder = Recorder(ledger)
    before = json.dumps(config, sort_keys=True)

    edit_in_place(config_file, text)

    wait_for(lambda: bool(recorder.rejected()), what="the rejection")
    event = recorder.rejected()[0]
    assert json.dumps(config, sort_keys=True) == before
    assert recorder.changes == []
    assert event.name == "config" and event.source == str(config_file)
    assert reason in event.detail
    if line is not None:
        assert event.detail.startswith(f"line {line}: ")
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(config_file) in warning and event.detail in warning
    journal = [json.loads(x) for x in (system.root / "logs" / "events.jsonl").read_text().splitlines()]
    rejected = [e for e in journal if e.get("event") == "hyperparams_edit_rejected"]
    assert len(rejected) == 1, journal
    assert rejected[0]["source"] == str(config_file) and rejected[0]["reason"] == event.detail

    edit_rename_over(config_file, CONFIG.replace("lr: 0.1", "lr: 0.02"))

    wait_for(lambda: config["lr"] == 0.02, what="the valid edit after the invalid one")
    assert len(recorder.rejected()) == 1
    assert ledger.watcher("config").rejected == 1


def test_without_type_checking_a_type_change_is_applied(ledger: Ledger, config_file: Path) -> None:
    config = load_config(ledger, config_file, watch=True)
    edit_in_place(config_file, CONFIG.replace("lr: 0.1", "lr: 1e-3"))
    wait_for(lambda: config["lr"] == "1e-3", what="the string lr")  # YAML 1.1 reads 1e-3 as a string


def test_half_written_file_is_not_rejected_when_the_writer_finishes(
    ledger: Ledger, config_file: Path
) -> None:
    config = load_config(ledger, config_file, watch=True)
    recorder = Recorder(ledger)
    new = CONFIG.replace("lr: 0.1", "lr: 0.07") + "layers: [64, 64, 64]\n"
    cut = new.index("64, 64]")
    with open(config_file, "w", encoding="utf-8") as f:  # a slow writer, in place
        f.write(new[:cut])  # "layers: [" is not valid YAML on its own
        f.flush()
        time.sleep(0.15)
        f.write(new[cut:])

    wait_for(lambda: config.get("layers") == [64, 64, 64], what="the completed edit")
    assert config["lr"] == 0.07
    assert recorder.rejected() == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="close events come from inotify")
def test_a_write_in_place_is_read_when_the_writer_closes_the_file(ledger: Ledger, config_file: Path) -> None:
    config = load_config(ledger, config_file, watch=True)
    recorder = Recorder(ledger)
    with open(config_file, "w", encoding="utf-8") as f:
        f.write("lr: 0.08\n")  # valid on its own: it must not be applied without the rest
        f.flush()
        time.sleep(0.2)
        f.write(CONFIG.replace("lr: 0.1", "").split("\n", 2)[2])

    # the set changes in place before the listeners are called: wait for the callback itself
    wait_for(lambda: len(recorder.changes) > 0, what="the change callback of the completed edit")
    assert config["lr"] == 0.08
    assert [values for _, _, values in recorder.changes] == [
        {"lr": 0.08, "batch_size": 32, "optimizer": {"momentum": 0.9}}
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\nb: [1, 2\n", Rejection("YAML syntax error", 3)),
        ("a: 1\n\n- x\n", Rejection("YAML syntax error", 3)),
        ("42\n", Rejection("holds a int", 1)),
        ("# only a comment\n", Rejection("empty", None)),
        ("a: {b: [1, {c: 2023-05-01}]}\n", Rejection("a.b[1].c", 1)),
    ],
)
def test_parse_edit_says_where_and_why(text: str, expected: Rejection) -> None:
    result = parse_edit(text.encode())
    assert isinstance(result, Rejection)
    assert expected.reason in result.reason
    assert result.line == expected.line


def test_parse_edit_type_rules() -> None:
    current = {"lr": 0.1, "steps": 10, "name": "x", "opt": {"beta": 0.9}, "extra": None, "dims": (1, 2)}
    ok = "lr: 0.2\nsteps: 20\nname: y\nopt: {beta: 0.8}\nextra: 3\ndims: [3]\nnew_key: true\n"
    assert parse_edit(ok, current, check_types=True) == yaml.safe_load(ok)
    for bad in ("lr: 1\n", "steps: 1.0\n", "steps: true\n", "opt: 1\n", "dims: {a: 1}\n", "name: 3\n"):
        result = parse_edit(bad, current, check_types=True)
        assert isinstance(result, Rejection), bad
        assert result.line == 1
    assert parse_edit(b"\xff\xfe", current) == Rejection("not UTF-8 text (invalid start byte at byte 0)", 1)


# -- reactions -----------------------------------------------------------------------------------------
def _model_and_optimizer(ledger: Ledger, lr: float = 0.1) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    groups: list[dict[str, Any]] = [{"params": [model.weight]}, {"params": [model.bias], "lr": lr * 2}]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", optimizer)
    return model, optimizer


def test_lr_reaction_changes_the_optimizer(ledger: Ledger, config_file: Path) -> None:
    _, optimizer = _model_and_optimizer(ledger)
    config = load_config(ledger, config_file, watch=True)
    remove = apply_lr_changes(ledger=ledger)

    edit_rename_over(config_file, CONFIG.replace("lr: 0.1", "lr: 0.003"))

    wait_for(lambda: [g["lr"] for g in optimizer.param_groups] == [0.003, 0.003], what="the optimizer's lr")
    assert config["lr"] == 0.003

    remove()
    edit_in_place(config_file, CONFIG.replace("lr: 0.1", "lr: 0.5"))
    wait_for(lambda: config["lr"] == 0.5, what="the next edit")
    assert [g["lr"] for g in optimizer.param_groups] == [0.003, 0.003]


def test_lr_reaction_with_a_nested_key_and_set_hyperparam(
    ledger: Ledger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, optimizer = _model_and_optimizer(ledger)
    path = tmp_path / "hp.yaml"
    path.write_text("optimizer:\n  lr: 0.1\n", encoding="utf-8")
    ledger.register_hyperparams("hp", path, watch=True)
    other = torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), lr=0.5)
    apply_lr_changes("hp.optimizer.lr", "optimizer", name="hp", ledger=ledger)

    ledger.set_hyperparam("optimizer.lr", 1e-4)  # on the calling thread, through the same path

    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-4]
    assert other.param_groups[0]["lr"] == 0.5
    caplog.set_level(logging.WARNING, logger="weightslab")
    ledger.set_hyperparam("optimizer.lr", "fast")
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-4]
    assert "not a finite number" in caplog.text


def test_lr_reaction_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="non-empty dotted key"):
        apply_lr_changes("", ledger=Ledger())
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        apply_lr_changes("lr", optimizer=3, ledger=Ledger())  # type: ignore[arg-type]


# -- set_hyperparam writes the file back -----------------------------------------------------------------
def test_set_hyperparam_writes_the_file_back_and_is_not_applied_twice(
    ledger: Ledger, config_file: Path
) -> None:
    config = load_config(ledger, config_file, watch=True)
    recorder = Recorder(ledger)

    ledger.set_hyperparam("optimizer.momentum", 0.95)

    text = config_file.read_text(encoding="utf-8")
    assert yaml.safe_load(text) == config == {"lr": 0.1, "batch_size": 32, "optimizer": {"momentum": 0.95}}
    assert text == CONFIG.replace("momentum: 0.9", "momentum: 0.95")  # comments and layout kept
    assert [c[1] for c in recorder.changes] == [("optimizer.momentum",)]
    time.sleep(0.8)  # the watcher sees our own write; it must not apply or reject it
    assert len(recorder.events) == 1
    assert ledger.watcher("config").applied == 0

    edit_in_place(config_file, text.replace("lr: 0.1", "lr: 0.3"))  # still watching
    wait_for(lambda: config["lr"] == 0.3, what="an edit after the write-back")
    assert config["optimizer"]["momentum"] == 0.95


def test_set_hyperparam_on_an_unwatched_file_writes_it_back(ledger: Ledger, config_file: Path) -> None:
    config = load_config(ledger, config_file)
    ledger.set_hyperparam("warmup", [1, 2])  # a new key: the file is dumped again
    assert yaml.safe_load(config_file.read_text(encoding="utf-8")) == config
    assert config["warmup"] == [1, 2]


def test_write_back_keeps_comments_when_it_can(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a: 1  # one\nb:\n  c: 'x'  # quoted\n  d: [1, 2]\ne: |\n  text\n", encoding="utf-8")
    assert render_yaml({"a": 2, "b": {"c": "yes", "d": [1, 2]}, "e": "text\n"}, path).decode() == (
        "a: 2  # one\nb:\n  c: 'yes'  # quoted\n  d: [1, 2]\ne: |\n  text\n"
    )
    # a change the text cannot take in place: dumped again, still equal when read back
    values = {"a": 1, "b": {"c": "x", "d": [1, 2, 3]}, "e": "other", "f": float("inf")}
    assert write_back(path, values) is True
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == values
    assert write_back(path, values) is False  # nothing to write


# -- the full loop -------------------------------------------------------------------------------------------
def test_edit_mid_run_gives_two_linked_experiments(
    ledger: Ledger, config_file: Path, system_on: Callable[[Ledger], AutomaticCheckpointSystem]
) -> None:
    system = system_on(ledger)
    model, optimizer = _model_and_optimizer(ledger)
    config = load_config(ledger, config_file, watch=True)
    apply_lr_changes(ledger=ledger)
    x, y = torch.randn(16, 4), torch.randn(16, 2)

    for step in range(16):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        system.checkpoint_on_step(step, metrics={"train/loss": loss.item()})
        if step == 7:
            edit_rename_over(config_file, CONFIG.replace("lr: 0.1", "lr: 0.01"))
            wait_for(lambda: config["lr"] == 0.01, what="the edit mid-run")  # training goes on meanwhile
    active = system.exp_hash
    system.close()
    assert watch_threads() == []  # close() stopped the watcher

    reader = CheckpointManager(system.root, mode="r")
    parent_hash, child_hash = reader.experiments()
    parent, child = reader.manifest(parent_hash), reader.manifest(child_hash)
    assert child_hash == active
    assert parent.parent is None and child.parent is not None
    assert (child.parent.exp_hash, child.parent.step, child.parent.reason, child.parent.checkpoint) == (
        parent_hash,
        8,
        "config_change",
        5,
    )
    assert parent.steps() == [5]
    assert [(e.step, e.trigger) for e in child.checkpoints] == [
        (8, "config_change"),
        (10, "step"),
        (15, "step"),
    ]
    on_disk = json.loads((system.root / "checkpoints" / child_hash / "manifest.json").read_text())
    assert on_disk["parent"] == {
        "exp_hash": parent_hash,
        "step": 8,
        "reason": "config_change",
        "checkpoint": 5,
    }
    assert reader.read_config(child_hash)["config"]["lr"] == 0.01
    assert reader.read_config(parent_hash)["config"]["lr"] == 0.1
    state = reader.load(child_hash, 8)
    assert [g["lr"] for g in state["optimizers"]["optimizer"]["param_groups"]] == [0.01, 0.01]
    journal = [e["event"] for e in reader.events()]
    assert "hyperparams_updated" in journal and "change_detected" in journal


# -- lifecycle -----------------------------------------------------------------------------------------------
def test_stop_joins_every_thread_and_is_idempotent(ledger: Ledger, config_file: Path) -> None:
    ledger.register_hyperparams("config", config_file, watch=True)
    watcher = ledger.watcher("config")
    assert isinstance(watcher, HyperparamsWatcher) and watcher.running
    assert len(watch_threads()) >= 2  # the worker and the observer (with its emitter and reader)

    ledger.stop_watchers()
    watcher.stop()

    assert not watcher.running and ledger.watcher("config") is None
    assert watch_threads() == []


def test_reregistering_or_unregistering_stops_the_old_watcher(ledger: Ledger, config_file: Path) -> None:
    ledger.register_hyperparams("config", config_file, watch=True)
    old = ledger.watcher("config")
    ledger.register_hyperparams("config", config_file, watch=True)
    assert not old.running and ledger.watcher("config").running
    ledger.unregister("hyperparams", "config")
    assert ledger.watcher("config") is None
    assert watch_threads() == []


def test_closing_from_a_change_callback_does_not_deadlock(
    ledger: Ledger, config_file: Path, system_on: Callable[[Ledger], AutomaticCheckpointSystem]
) -> None:
    system = system_on(ledger)
    config = load_config(ledger, config_file, watch=True)
    ledger.on_hyperparams_change(lambda *_: system.close())

    edit_in_place(config_file, CONFIG.replace("lr: 0.1", "lr: 0.6"))

    wait_for(lambda: system.closed, what="close() from the callback")
    assert config["lr"] == 0.6
    wait_for(lambda: watch_threads() == [], what="the watcher threads to end")


def test_watchers_stop_at_interpreter_exit(tmp_path: Path, config_file: Path) -> None:
    script = textwrap.dedent(
        """
        import atexit, sys, threading
        from watchdog.utils import BaseThread

        def report():  # registered first, so it runs after weightslab's exit handlers
            alive = [t.name for t in threading.enumerate() if isinstance(t, BaseThread)
                     or t.name.startswith("weightslab-watch")]
            print("alive at exit:", alive)

        atexit.register(report)
        import weightslab as wl
        config = wl.register_hyperparams("config", sys.argv[1], watch=True)
        print("lr", config["lr"])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["lr 0.1", "alive at exit: []"]


def test_watcher_options_are_checked(ledger: Ledger, config_file: Path) -> None:
    with pytest.raises(ValueError, match="debounce must be between 0 and 1"):
        HyperparamsWatcher(ledger, "config", config_file, debounce=5)
    with pytest.raises(ValueError, match="watch=True needs the path of a YAML file"):
        ledger.register_hyperparams("config", {"lr": 0.1}, watch=True)
