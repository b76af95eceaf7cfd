"""The read-only commands never import torch, and ``import weightslab`` costs nothing until used.

Each command runs as ``python -X importtime -m weightslab.cli ...`` in a subprocess on a real root (two
experiments, real step files); the import log on stderr lists every module the command loaded.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weightslab.format.manifest import ParentRef
from weightslab.store.manager import CheckpointManager

REPO = Path(__file__).resolve().parent.parent
A, B = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
TORCH_FREE = [
    ["--version"],
    ["--help"],
    ["ls", "{root}"],
    ["ls", "{root}", "--json"],
    ["tree", "{root}"],
    ["tree", "{root}", "--json"],
    ["verify", "{root}"],
    ["verify", "{root}", "aaaa", "--json"],
    ["gc", "{root}", "--dry-run"],
    ["gc", "{root}", "--json"],
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli_imports") / "root"
    model = torch.nn.Linear(3, 2)
    with CheckpointManager(path, durable=False) as mgr:
        mgr.create_experiment(
            exp_hash=A,
            architecture_hash="arch",
            hyperparams_hash="hp-a",
            parent=None,
            retention={"keep_last": 2},
            hyperparams={"lr": 0.1},
            models={"model": model},
        )
        for step in range(4):
            state = {"format": "weightslab.checkpoint/1", "exp_hash": A, "step": step}
            mgr.save(A, step, {**state, "models": {"model": model.state_dict()}}, trigger="step")
        mgr.create_experiment(
            exp_hash=B,
            architecture_hash="arch",
            hyperparams_hash="hp-b",
            parent=ParentRef(A, 4, "hyperparams changed", 3),
            retention={},
            hyperparams={"lr": 0.2},
            models={"model": model},
        )
    return path


def _imported(args: list[str]) -> tuple[int, str, set[str]]:
    """(exit status, stdout, the top-level packages imported) of one ``weightslab`` command."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "weightslab.cli", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    modules = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", proc.stderr, flags=re.MULTILINE))
    assert "weightslab.cli.main" in modules, proc.stderr[-2000:]  # the log is there to read
    return proc.returncode, proc.stdout, {m.split(".")[0] for m in modules}


@pytest.mark.parametrize("command", TORCH_FREE, ids=lambda c: " ".join(c).replace("{root}", "ROOT"))
def test_read_only_commands_do_not_import_torch(root: Path, command: list[str]) -> None:
    args = [a.format(root=root) for a in command]
    rc, out, packages = _imported(args)
    assert rc == 0, out
    assert "torch" not in packages
    assert "safetensors" not in packages
    if args[0] == "ls" and "--json" in args:
        listed = json.loads(out)
        assert [e["exp_hash"] for e in listed["experiments"]] == [A, B]
        assert listed["experiments"][0]["checkpoints"] == 4


def test_a_command_that_reads_tensors_still_imports_torch_when_it_needs_it(root: Path) -> None:
    rc, out, packages = _imported(["show", str(root), "aaaa", "--json"])
    assert rc == 0, out
    assert "torch" in packages  # the frozen flags come from the newest step file
    assert json.loads(out)["experiment"]["exp_hash"] == A


def test_import_weightslab_is_lazy_and_the_public_names_still_resolve() -> None:
    code = (
        "import sys, weightslab as wl\n"
        "lazy = 'torch' not in sys.modules\n"
        "from weightslab.components import checkpoint_on_step, CheckpointManager\n"
        "import weightslab.components as c\n"
        "print(lazy, wl.register_model is wl.registry.ledger.register_model, "
        "checkpoint_on_step is c.checkpoint_on_step, sorted(set(wl.__all__) - set(dir(wl))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "True", "True", "[]"]


def test_an_unknown_name_is_an_attribute_error() -> None:
    import weightslab
    import weightslab.components

    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        weightslab.no_such_name  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        weightslab.components.no_such_name  # noqa: B018
