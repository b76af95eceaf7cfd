"""Concurrency: many threads on one system, and other processes next to a training process.

``tests/test_system.py`` covers threads calling ``checkpoint_on_step`` with a state change, and
``tests/test_manager.py`` a second ``CheckpointManager`` writer. Here: threads mixing steps, every event
trigger, hyperparameter changes and flushes on one system, with every committed checkpoint checked for
consistency afterwards; and, while a training process saves and deletes in a loop, a second process
that tries to write the same root, ``weightslab ls --json``, ``process_all_checkpoints`` in another
process and a ``CheckpointManager(root, mode="r")`` in this one; and the narrow window where a reader
checks a file that retention deletes under it, made certain at the storage boundary.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from weightslab.components import AutomaticCheckpointSystem, CheckpointManager, ExperimentHashGenerator
from weightslab.errors import CheckpointCorruptedError, CheckpointNotFoundError, WeightslabError
from weightslab.registry.ledger import Ledger
from weightslab.storage.local import LocalStorage
from weightslab.system.config import CheckpointConfig

from .conftest import mlp

REPO = Path(__file__).resolve().parent.parent


def test_threads_mixing_steps_triggers_and_config_changes_keep_every_checkpoint_consistent(
    tmp_path: Path,
) -> None:
    ledger = Ledger()
    system = AutomaticCheckpointSystem(
        CheckpointConfig(root_log_dir=tmp_path / "root", checkpoint_frequency=3), ledger=ledger
    )
    model = mlp()
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    ledger.register_hyperparams("config", {"lr": 0.1, "batch_size": 16})
    steps = itertools.count()
    steps_lock = threading.Lock()
    errors: list[BaseException] = []
    stop = threading.Event()

    def next_step() -> int:
        with steps_lock:
            return next(steps)

    def guarded(body: Any) -> Any:
        def run() -> None:
            try:
                body()
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        return run

    def trainer() -> None:
        for _ in range(100):
            step = next_step()
            system.checkpoint_on_step(step, metrics={"loss": 1.0 / (step + 1)})

    def events() -> None:
        for i in range(30):
            if i % 3 == 0:
                system.checkpoint_on_model_change()
            else:
                system.checkpoint_on_state_change(f"probe{i % 3}")

    def config_changes() -> None:
        for i in range(20):
            ledger.set_hyperparam("lr", 0.1 if i % 2 else 0.05)  # back and forth between two experiments
            system.checkpoint_on_config_change()

    def flusher() -> None:
        while not stop.is_set():
            system.flush()
            time.sleep(0.001)

    workers = [
        threading.Thread(target=guarded(body)) for body in (trainer, trainer, trainer, events, config_changes)
    ]
    flush_thread = threading.Thread(target=guarded(flusher))
    flush_thread.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    stop.set()
    flush_thread.join(timeout=60)
    assert not errors, errors
    system.flush()

    manager = system.manager
    assert manager.verify().healthy
    hasher = ExperimentHashGenerator()
    hashes = manager.experiments()
    assert len(hashes) == 2  # the two configurations, returned to again and again
    saved = {(e["exp_hash"], e["step"]) for e in manager.events() if e["event"] == "checkpoint_saved"}
    committed = set()
    for h in hashes:
        manifest = manager.manifest(h)
        for entry in manifest.checkpoints:
            committed.add((h, entry.step))
            data = manager.load(h, entry.step)
            assert (data["exp_hash"], data["step"]) == (h, entry.step)
            assert data["trigger"] == entry.trigger
            # what the file holds is what its experiment is named after
            identity = hasher.identity({"model": model}, data["hyperparams"])
            assert identity.exp_hash == h, (h, entry.step, data["hyperparams"])
    assert committed == saved  # every journalled save is committed, and nothing else is
    system.close()


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    import weightslab as wl
    from weightslab.components import get_checkpoint_system, checkpoint_on_step

    root, stop, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    system = get_checkpoint_system(root_log_dir=root, checkpoint_frequency=1, keep_last=3)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Tanh(), torch.nn.Linear(256, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    config = {"lr": 1e-3}
    wl.register_model("model", model)
    wl.register_optimizer("optimizer", optimizer)
    wl.register_hyperparams("config", config)
    deadline = time.monotonic() + 120
    step = 0
    while not stop.exists() and time.monotonic() < deadline:
        loss = model(torch.randn(32, 256)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 20:
            config["lr"] = 5e-4  # a second experiment, branching from the first
        checkpoint_on_step(step, metrics={"loss": float(loss)})
        if step == 25:
            ready.touch()
        step += 1
    system.close()
    """
)

OTHER_PROCESS = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from weightslab.analysis import process_all_checkpoints
    from weightslab.components import get_checkpoint_system
    from weightslab.errors import RootLockedError

    root = Path(sys.argv[1])
    try:  # a second writer
        get_checkpoint_system(root_log_dir=root, checkpoint_frequency=1)
        refused = None
    except RootLockedError as exc:
        refused = str(exc)
    results = process_all_checkpoints(root, max_workers=2)  # a reader: the whole run, analysed
    print(json.dumps({
        "refused": refused,
        "analysed": {b: {"step": a.step, "errors": list(a.errors)} for b, a in results.items()},
    }))
    """
)


def run_python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=180, check=False
    )


def test_a_training_process_keeps_other_writers_out_and_lets_readers_read(tmp_path: Path) -> None:
    root, stop, ready = tmp_path / "root", tmp_path / "stop", tmp_path / "ready"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(stop), str(ready)], cwd=REPO, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert writer.poll() is None, writer.stderr.read() if writer.stderr else ""
            assert time.monotonic() < deadline, "the writer never got going"
            time.sleep(0.02)

        results: dict[str, Any] = {}

        def in_thread(name: str, *args: str) -> threading.Thread:
            t = threading.Thread(target=lambda: results.__setitem__(name, run_python(*args)))
            t.start()
            return t

        threads = [
            in_thread("other", "-c", OTHER_PROCESS, str(root)),
            in_thread("ls", "-m", "weightslab.cli", "ls", str(root), "--json"),
        ]
        # meanwhile, this process reads: what a reader sees committed always loads and verifies
        reads = raced = 0
        while any(t.is_alive() for t in threads) or reads < 20:
            reader = CheckpointManager(root, mode="r")
            for h in reader.experiments():
                try:
                    entry = reader.entry(h, "latest")
                    data = reader.load_entry(h, entry)
                    assert (data["exp_hash"], data["step"]) == (h, entry.step)
                    reads += 1
                except CheckpointNotFoundError:
                    continue  # an experiment whose first checkpoint is not committed yet
                except CheckpointCorruptedError:
                    # legitimate only if retention deleted it between reading the manifest and the file
                    assert entry.step not in CheckpointManager(root, mode="r").manifest(h).steps()
                    raced += 1
            for problem in reader.verify().problems:
                assert problem.kind in ("orphaned", "missing"), problem  # in-flight files, or just deleted
                if problem.kind == "missing":
                    now = CheckpointManager(root, mode="r").manifest(problem.exp_hash)
                    assert problem.step not in now.steps(), problem
            time.sleep(0.02)  # leave the CPUs to the writer and the other readers
        for t in threads:
            t.join(timeout=180)
        assert reads >= 20
    finally:
        stop.touch()
        status = writer.wait(timeout=120)
    assert status == 0, writer.stderr.read() if writer.stderr else ""

    other = results["other"]
    assert other.returncode == 0, other.stderr
    report = json.loads(other.stdout.splitlines()[-1])
    refused = report["refused"]
    assert refused and f"already open for writing by pid {writer.pid}" in refused and "mode='r'" in refused

    ls = results["ls"]
    assert ls.returncode == 0, ls.stderr
    listing = json.loads(ls.stdout)
    assert listing["experiments"] and all(len(e["exp_hash"]) == 16 for e in listing["experiments"])

    analysed = report["analysed"]
    assert analysed
    final = CheckpointManager(root, mode="r")
    still = {(h[:8], e.step) for h in final.experiments() for e in final.checkpoints(h)}
    for branch, record in analysed.items():
        if record["errors"]:  # only a checkpoint that retention deleted meanwhile may fail
            assert not any("Corrupted" in err for err in record["errors"]), (branch, record)
            assert (branch.split("-")[0], record["step"]) not in still, (branch, record)
    assert final.verify().healthy


class DeletedBetweenLooks(LocalStorage):
    """The writer's retention delete lands between a reader's size check and its checksum of a file."""

    def size(self, path: Path) -> int:
        size = super().size(path)
        path.unlink()
        return size


def test_a_reader_racing_a_retention_delete_gets_a_clear_answer(tmp_path: Path) -> None:
    """The narrow window the reader above can hit by chance, made certain at the storage boundary."""
    ledger = Ledger()
    system = AutomaticCheckpointSystem(
        CheckpointConfig(root_log_dir=tmp_path / "root", checkpoint_frequency=10), ledger=ledger
    )
    ledger.register_model("model", mlp())
    for step in range(31):
        system.checkpoint_on_step(step)
    h = system.exp_hash
    assert h is not None
    system.close()
    reader = CheckpointManager(tmp_path / "root", mode="r", storage=DeletedBetweenLooks(durable=False))
    path = reader.experiment(h).step_file(30)
    with pytest.raises(WeightslabError) as exc:
        reader.load(h, 30)
    assert str(path) in str(exc.value)
    report = reader.verify()  # 30 went above; 10 and 20 vanish the same way now: reported, never raised
    assert [(p.kind, p.step) for p in report.problems] == [("missing", 10), ("missing", 20), ("missing", 30)]
