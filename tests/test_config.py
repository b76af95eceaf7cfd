"""CheckpointConfig checks itself at construction: one test per rule."""

from __future__ import annotations

import pytest

from weightslab.errors import ConfigError
from weightslab.system.config import CheckpointConfig


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"checkpoint_frequency": 0}, "checkpoint_frequency must be >= 1, got 0"),
        ({"checkpoint_frequency": -5}, "checkpoint_frequency must be >= 1, got -5"),
        ({"checkpoint_frequency": 2.5}, "checkpoint_frequency must be an int"),
        ({"checkpoint_frequency": True}, "checkpoint_frequency must be an int"),
        ({"keep_last": 0}, "keep_last must be >= 1"),
        ({"keep_best": -1}, "keep_best must be >= 0"),
        ({"keep_every": 0}, "keep_every must be >= 1"),
        ({"mode": "lowest"}, "mode must be 'min' or 'max', got 'lowest'"),
        ({"on_error": "ignore"}, "on_error must be 'warn' or 'raise'"),
        ({"keep_best": 2}, "keep_best=2 needs monitor=<metric name>"),
        ({"monitor": ""}, "monitor must be a non-empty metric name"),
        ({"root_log_dir": ""}, "root_log_dir must be a non-empty path"),
        ({"root_log_dir": "a\x00b"}, "NUL byte"),
        ({"exclude_hyperparams": "lr"}, "exclude_hyperparams must be a list"),
        ({"exclude_hyperparams": ["lr", 3]}, "non-string or empty keys"),
        ({"async_save": "yes"}, "async_save must be True or False"),
    ],
)
def test_invalid_options_fail_at_construction(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        CheckpointConfig(**options)  # type: ignore[arg-type]


def test_config_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        CheckpointConfig(checkpoint_frequency=0)


def test_unknown_option_suggests_the_right_name() -> None:
    with pytest.raises(
        ConfigError, match="unknown checkpoint option 'checkpoint_freq'; did you mean 'checkpoint_frequency'"
    ):
        CheckpointConfig.from_kwargs(checkpoint_freq=10)


def test_positional_arguments_are_refused() -> None:
    with pytest.raises(TypeError):
        CheckpointConfig("runs")  # type: ignore[misc]


def test_valid_config_and_retention_record() -> None:
    cfg = CheckpointConfig(
        root_log_dir="runs", keep_best=2, monitor="val/loss", mode="max", exclude_hyperparams=["a"]
    )
    assert cfg.exclude_hyperparams == ("a",)
    assert cfg.retention() == {
        "keep_last": None,
        "keep_best": 2,
        "monitor": "val/loss",
        "mode": "max",
        "keep_every": None,
    }
