"""Bad input: every case gets a clear error naming the value and the fix, and loses nothing saved.

Each case runs against a root that already holds committed checkpoints; after the error the root
still verifies and the same checkpoints are there.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from weightslab.components import AutomaticCheckpointSystem, CheckpointManager, get_checkpoint_system
from weightslab.errors import (
    AmbiguousExperimentError,
    ArchitectureMismatchError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    CheckpointSaveError,
    ConfigError,
    HyperparamsError,
    InvalidNameError,
    RootError,
    StepOrderError,
    SystemConfigurationError,
    UnknownExperimentError,
    UntrustedLoadError,
)
from weightslab.registry.ledger import Ledger
from weightslab.store.manager import load_step_file
from weightslab.system.config import CheckpointConfig

from .conftest import mlp


@dataclass
class Ctx:
    tmp: Path
    root: Path
    ledger: Ledger
    system: AutomaticCheckpointSystem
    model: torch.nn.Module

    @property
    def exp_hash(self) -> str:
        assert self.system.exp_hash is not None
        return self.system.exp_hash


@pytest.fixture
def ctx(tmp_path: Path) -> Any:
    ledger = Ledger()
    model = mlp()
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", torch.optim.AdamW(model.parameters()))
    ledger.register_hyperparams("config", {"lr": 0.1})
    root = tmp_path / "root"
    system = AutomaticCheckpointSystem(
        CheckpointConfig(root_log_dir=root, checkpoint_frequency=10), ledger=ledger
    )
    for step in range(21):
        system.checkpoint_on_step(step, metrics={"val": 1.0 / (step + 1)})
    system.flush()
    c = Ctx(tmp_path, root, ledger, system, model)
    yield c
    if not system.closed:
        system.close()


MARKER = "weightslab_pwned"


class Evil:
    """Unpickling this runs code: it must never be unpickled without trust=True."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {MARKER}",))


def resumed_system(c: Ctx) -> AutomaticCheckpointSystem:
    c.system.close()
    system = AutomaticCheckpointSystem(root_log_dir=c.root, checkpoint_frequency=10, ledger=c.ledger)
    c.system = system
    system.resume()
    return system


def write_evil_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps(Evil()))


def evil_architecture(c: Ctx) -> None:
    write_evil_pickle(c.system.manager.experiment(c.exp_hash).architecture_pickle)
    c.system.manager.load_architecture(c.exp_hash)


def evil_step_file(c: Ctx) -> None:
    path = c.tmp / "evil.pt"
    torch.save({"format": "weightslab.checkpoint/1", "payload": Evil()}, path)
    load_step_file(path)


def foreign_step_file(c: Ctx) -> None:
    path = c.tmp / "lightning.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 3}, path)
    load_step_file(path)


def traversal_in_manifest(c: Ctx) -> None:
    reader = CheckpointManager(c.root, mode="r")
    manifest_path = reader.experiment(c.exp_hash).manifest
    raw = json.loads(manifest_path.read_text())
    raw["checkpoints"][0]["file"] = "../../../../etc/passwd"
    other = c.tmp / "copy"
    other_exp = other / "checkpoints" / c.exp_hash
    other_exp.mkdir(parents=True)
    (other_exp / "manifest.json").write_text(json.dumps(raw))
    CheckpointManager(other, mode="r").load(c.exp_hash, raw["checkpoints"][0]["step"])


def yaml_file(c: Ctx, text: str) -> None:
    path = c.tmp / "bad.yaml"
    path.write_text(text)
    c.ledger.register_hyperparams("file", str(path))


def grown_model_resume(c: Ctx) -> None:
    c.system.close()
    ledger = Ledger()
    ledger.register_model("model", mlp((8, 32, 4)))
    c.system = AutomaticCheckpointSystem(root_log_dir=c.root, checkpoint_frequency=10, ledger=ledger)
    c.system.resume()


def signals_off_main_thread(c: Ctx) -> None:
    errors: list[BaseException] = []

    def build() -> None:
        try:
            AutomaticCheckpointSystem(root_log_dir=c.tmp / "other", handle_signals=True, ledger=Ledger())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=build)
    t.start()
    t.join()
    raise errors[0]


def unloadable_state(c: Ctx) -> None:
    class Sampler:
        def state_dict(self) -> dict[str, Any]:
            return {"rng": threading.Lock()}

        def load_state_dict(self, sd: dict[str, Any]) -> None: ...

    other = AutomaticCheckpointSystem(
        root_log_dir=c.tmp / "raise", checkpoint_frequency=10, on_error="raise", ledger=c.ledger
    )
    try:
        c.ledger.register_stateful("sampler", Sampler())
        other.checkpoint_on_step(10)
    finally:
        c.ledger.unregister("stateful", "sampler")
        other.close()


CASES: list[tuple[str, Callable[[Ctx], object], type[BaseException], str]] = [
    (
        "model of wrong type",
        lambda c: c.ledger.register_model("m", object()),
        TypeError,
        "register_model expects a torch.nn.Module, got object",
    ),
    (
        "optimizer of wrong type",
        lambda c: c.ledger.register_optimizer("o", c.model),
        TypeError,
        "expects a torch.optim.Optimizer, got Sequential",
    ),
    (
        "scheduler without state_dict",
        lambda c: c.ledger.register_scheduler("s", 3),
        TypeError,
        r"expects an object with state_dict\(\) and load_state_dict\(\), got int",
    ),
    (
        "hyperparams of wrong type",
        lambda c: c.ledger.register_hyperparams("h", 3.5),
        TypeError,
        "expects a mapping, a dataclass instance or the path of a YAML file, got float",
    ),
    (
        "unserialisable hyperparameter",
        lambda c: c.ledger.register_hyperparams("h", {"act": torch.relu}),
        HyperparamsError,
        "h.act = .* cannot be serialised; use str, int, float",
    ),
    (
        "hyperparameter key of wrong type",
        lambda c: c.ledger.register_hyperparams("h", {1.5: 2}),
        HyperparamsError,
        "key 1.5 at h is a float; keys must be str or int",
    ),
    (
        "name with a slash",
        lambda c: c.ledger.register_model("a/b", mlp()),
        InvalidNameError,
        "invalid name 'a/b': model name contains a path separator",
    ),
    ("name with ..", lambda c: c.ledger.register_model("..", mlp()), InvalidNameError, r"contains '\.\.'"),
    (
        "name with NUL",
        lambda c: c.ledger.register_model("a\x00b", mlp()),
        InvalidNameError,
        "contains a NUL byte",
    ),
    ("empty name", lambda c: c.ledger.register_model("", mlp()), InvalidNameError, "model name is empty"),
    (
        "zero frequency",
        lambda c: CheckpointConfig(checkpoint_frequency=0),
        ConfigError,
        "checkpoint_frequency must be >= 1, got 0",
    ),
    (
        "negative frequency",
        lambda c: CheckpointConfig(checkpoint_frequency=-5),
        ConfigError,
        "checkpoint_frequency must be >= 1, got -5",
    ),
    (
        "keep_best without monitor",
        lambda c: CheckpointConfig(keep_best=3),
        ConfigError,
        "keep_best=3 needs monitor=<metric name>",
    ),
    (
        "unknown mode",
        lambda c: CheckpointConfig(mode="best"),
        ConfigError,
        "mode must be 'min' or 'max', got 'best'",
    ),
    (
        "unknown on_error",
        lambda c: CheckpointConfig(on_error="ignore"),
        ConfigError,
        "on_error must be 'warn' or 'raise', got 'ignore'",
    ),
    (
        "misspelt option",
        lambda c: CheckpointConfig.from_kwargs(keep_lst=2),
        ConfigError,
        "unknown checkpoint option 'keep_lst'; did you mean 'keep_last'",
    ),
    (
        "root that is a file",
        lambda c: (c.tmp / "f").write_text("x") and CheckpointManager(c.tmp / "f"),
        RootError,
        "is a file, not a folder",
    ),
    (
        "second configuration of the open system",
        lambda c: (
            get_checkpoint_system(root_log_dir=c.tmp / "g", checkpoint_frequency=5),
            get_checkpoint_system(checkpoint_frequency=6),
        ),
        SystemConfigurationError,
        r"checkpoint_frequency=6 \(open: 5\)",
    ),
    ("negative step", lambda c: c.system.checkpoint_on_step(-1), ValueError, "step must be >= 0, got -1"),
    (
        "step of wrong type",
        lambda c: c.system.checkpoint_on_step("10"),
        TypeError,
        "step must be an int, got '10'",
    ),
    (
        "step going backwards after resume",
        lambda c: resumed_system(c).checkpoint_on_step(5),
        StepOrderError,
        r"step 5 is not after step 20, which this run resumed from; start the loop at the step resume\(\) returned \(21\)",
    ),
    (
        "metric that is not a number",
        lambda c: c.system.checkpoint_on_step(30, metrics={"loss": "low"}),
        TypeError,
        "metric 'loss' = 'low' is not a number",
    ),
    (
        "metric tensor with many values",
        lambda c: c.system.checkpoint_on_step(30, metrics={"loss": torch.ones(3)}),
        ValueError,
        r"metric 'loss' is a tensor of shape \(3,\); pass a scalar",
    ),
    (
        "YAML with a Python tag",
        lambda c: yaml_file(c, "lr: !!python/object/apply:os.system ['touch weightslab_pwned']\n"),
        HyperparamsError,
        "not valid safe YAML at line 1.*Python tags",
    ),
    (
        "YAML that is not a mapping",
        lambda c: yaml_file(c, "- 1\n- 2\n"),
        HyperparamsError,
        "holds a list, expected a mapping",
    ),
    (
        "YAML with a syntax error",
        lambda c: yaml_file(c, "lr: [0.1\n"),
        HyperparamsError,
        "not valid safe YAML",
    ),
    (
        "architecture pickle without trust",
        evil_architecture,
        UntrustedLoadError,
        r"loading it can run code; call load_architecture\(\.\.\., trust=True\)",
    ),
    (
        "step file that would run code",
        evil_step_file,
        CheckpointFormatError,
        "cannot be read as a weightslab checkpoint",
    ),
    (
        "step file from another format",
        foreign_step_file,
        CheckpointFormatError,
        r"is not a weightslab\.checkpoint/1 step file \(format field: None\)",
    ),
    (
        "manifest path escaping the root",
        traversal_in_manifest,
        InvalidNameError,
        "must stay inside its experiment directory",
    ),
    (
        "unknown hash prefix",
        lambda c: c.system.manager.resolve_hash("zzzz"),
        UnknownExperimentError,
        "no experiment .* matches 'zzzz'",
    ),
    (
        "resume of a missing step",
        lambda c: c.system.resume(15),
        CheckpointNotFoundError,
        r"no checkpoint at step 15; committed steps: \[10, 20\]",
    ),
    (
        "resume best without monitor",
        lambda c: c.system.resume("best"),
        ConfigError,
        r"resume\('best'\) needs monitor=<metric name>",
    ),
    (
        "model that no longer matches",
        grown_model_resume,
        ArchitectureMismatchError,
        r"does not match checkpoint .*load_architecture\('[0-9a-f]{16}', trust=True\)",
    ),
    (
        "empty state change label",
        lambda c: c.system.checkpoint_on_state_change(""),
        ValueError,
        "state change label must be a non-empty string",
    ),
    (
        "ambiguous set_hyperparam",
        lambda c: (c.ledger.register_hyperparams("other", {"lr": 1}), c.ledger.set_hyperparam("lr", 2)),
        KeyError,
        "ambiguous: hyperparameter sets",
    ),
    (
        "state that weights_only cannot load",
        unloadable_state,
        CheckpointSaveError,
        "state at extra.sampler.rng is a lock",
    ),
    (
        "exclude_hyperparams as a string",
        lambda c: CheckpointConfig(exclude_hyperparams="lr"),
        ConfigError,
        "exclude_hyperparams must be a list of key names",
    ),
    (
        "handle_signals off the main thread",
        signals_off_main_thread,
        ConfigError,
        "handle_signals=True must be set from the main thread",
    ),
]


@pytest.mark.parametrize(("name", "action", "error", "pattern"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error_and_loses_nothing(
    ctx: Ctx,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    action: Callable[[Ctx], object],
    error: type[BaseException],
    pattern: str,
) -> None:
    monkeypatch.chdir(ctx.tmp)
    before = {
        h: [e.step for e in CheckpointManager(ctx.root, mode="r").checkpoints(h)]
        for h in CheckpointManager(ctx.root, mode="r").experiments()
    }
    with pytest.raises(error) as info:
        action(ctx)
    assert re.search(pattern, str(info.value)), f"{name}: {info.value}"
    assert not (ctx.tmp / MARKER).exists(), "code from an untrusted file ran"
    ctx.system.flush()
    reader = CheckpointManager(ctx.root, mode="r")
    after = {h: [e.step for e in reader.checkpoints(h)] for h in reader.experiments()}
    assert after == before
    assert reader.verify().healthy


def test_there_are_at_least_25_distinct_cases() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 25


def test_non_finite_metrics_are_recorded_as_null_and_ignored_by_keep_best(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger()
    ledger.register_model("model", mlp())
    system = AutomaticCheckpointSystem(
        root_log_dir=tmp_path / "r",
        checkpoint_frequency=10,
        keep_best=1,
        monitor="val",
        ledger=ledger,
        async_save=False,
    )
    system.checkpoint_on_step(10, metrics={"val": 0.5})
    with caplog.at_level("WARNING", logger="weightslab"):
        system.checkpoint_on_step(20, metrics={"val": float("nan")})
        system.checkpoint_on_step(30, metrics={"val": float("inf")})
    assert "metric 'val' is nan; recorded as null" in caplog.text
    entries = system.manager.checkpoints(system.exp_hash)
    assert [(e.step, e.metrics["val"]) for e in entries] == [(10, 0.5), (30, None)]  # 20 deleted; 10 is best
    system.close()


def test_ambiguous_hash_prefix(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "r")
    for h in ("abcd000000000000", "abcd111111111111"):
        mgr.create_experiment(
            exp_hash=h,
            architecture_hash="a" * 16,
            hyperparams_hash="b" * 16,
            parent=None,
            retention={},
            hyperparams={},
            models={},
        )
    with pytest.raises(AmbiguousExperimentError, match=r"hash prefix 'abcd' is ambiguous .*type more digits"):
        mgr.resolve_hash("abcd")
    mgr.close()
