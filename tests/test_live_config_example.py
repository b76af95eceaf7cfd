"""examples/live_config.py runs as CI runs it: from a fresh folder, in its own interpreter."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import yaml

from weightslab.components import CheckpointManager

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "live_config.py"


def test_live_config_example(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert elapsed < 30, f"the example took {elapsed:.1f}s"

    out = done.stdout
    assert "config file:  runs/live_config/train.yaml" in out
    assert "checkpoints:  runs/live_config/experiments" in out
    assert "edit rejected, nothing changed: line 3: YAML syntax error" in out
    assert "rejected the edit of" in done.stderr and "train.yaml, line 3" in done.stderr
    assert "journal: runs/live_config/experiments/logs/events.jsonl (3 hyperparams_updated, 1 " in out

    config_file = tmp_path / "runs" / "live_config" / "train.yaml"
    assert yaml.safe_load(config_file.read_text(encoding="utf-8")) == {
        "lr": 0.01,
        "batch_size": 64,
        "hidden": 32,
    }
    assert "# Hyperparameters of the live_config example" in config_file.read_text(encoding="utf-8")

    reader = CheckpointManager(tmp_path / "runs" / "live_config" / "experiments", mode="r")
    hashes = reader.experiments()
    assert [reader.read_config(h)["config"]["lr"] for h in hashes] == [0.1, 0.05, 0.02, 0.01]
    manifests = [reader.manifest(h) for h in hashes]
    assert manifests[0].parent is None
    for parent, child in itertools.pairwise(manifests):
        assert child.parent is not None
        assert child.parent.exp_hash == parent.exp_hash and child.parent.reason == "config_change"
        # the branch point is the child's first checkpoint; the parent's newest is recorded beside it
        assert child.parent.checkpoint == parent.latest().step  # type: ignore[union-attr]
        assert child.parent.step == child.checkpoints[0].step
        assert child.checkpoints[0].trigger == "config_change"
    assert reader.verify().healthy
