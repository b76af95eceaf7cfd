"""Preemption: with ``handle_signals=True``, SIGTERM and SIGINT checkpoint at the next step boundary.

The signal handler only sets a flag; the next ``checkpoint_on_step(step)`` saves ``step`` with
``trigger="preempted"``, flushes, journals ``preempted``, closes and raises ``SystemExit(128 + signum)``
(143 for SIGTERM, 130 for SIGINT). A second signal before that exits the process at once.

The subprocess tests run the crash suite's worker (``tests/crash_worker.py``) with ``--handle-signals``
and a pause before one step (a slow data loader), and signal it during the pause.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from weightslab.components import AutomaticCheckpointSystem, CheckpointManager, get_checkpoint_system
from weightslab.registry.ledger import Ledger
from weightslab.system.config import CheckpointConfig

from .conftest import mlp, train_step
from .crash_worker import TOTAL_STEPS
from .test_crash import finish, read_events, read_progress, spawn, tensors_equal

PAUSE_STEP = 182  # after the worker's hash change (103), not a multiple of its checkpoint frequency (5)
PAUSE_S = 1.5
SIGNALS = {signal.SIGTERM: 143, signal.SIGINT: 130}


def paused_at(progress: Path) -> float | None:
    """The time in the worker's ``pausing <step> <time>`` line, once it is there."""
    if progress.is_file():
        for line in progress.read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["pausing"] and len(parts) == 3:
                return float(parts[2])
    return None


def signal_when_paused(
    victims: dict[signal.Signals, tuple[Any, Path]], timeout: float = 180.0
) -> dict[Any, float]:
    """Send each worker its signal as soon as it pauses (all watched at once); returns when each paused."""
    paused: dict[Any, float] = {}
    deadline = time.monotonic() + timeout
    while len(paused) < len(victims):
        assert time.monotonic() < deadline, "a worker never paused"
        for sig, (proc, progress) in victims.items():
            if sig in paused:
                continue
            at = paused_at(progress)
            if at is not None:
                proc.send_signal(sig)
                paused[sig] = at
            else:
                assert proc.poll() is None, f"the worker exited early with status {proc.returncode}"
        time.sleep(0.01)
    return paused


@pytest.fixture(scope="module")
def preempted(tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Any]:
    """An uninterrupted reference run and one run per signal, signalled while paused, all at once."""
    base = tmp_path_factory.mktemp("preemption")
    ref = spawn(base, "reference", base / "reference-root")
    victims = {
        sig: spawn(
            base,
            f"victim-{sig.name}",
            base / f"root-{sig.name}",
            "--handle-signals",
            "--pause-at",
            f"{PAUSE_STEP}:{PAUSE_S}",
        )
        for sig in SIGNALS
    }
    out: dict[Any, Any] = {"base": base}
    paused = signal_when_paused({sig: (proc, progress) for sig, (proc, progress, _) in victims.items()})
    for sig, (proc, progress, _) in victims.items():
        out[sig] = {"paused_at": paused[sig]}
        out[sig].update(
            status=finish(proc),
            exited_at=time.time(),
            progress=read_progress(progress),
            root=base / f"root-{sig.name}",
            stderr=(base / f"victim-{sig.name}.stderr").read_text()[-2000:],
        )
    assert finish(ref[0]) == 0, (base / "reference.stderr").read_text()[-2000:]
    out["reference"] = {"steps": read_progress(ref[1]).steps, "final": torch.load(ref[2], weights_only=True)}
    return out


@pytest.mark.parametrize("sig", list(SIGNALS), ids=[s.name for s in SIGNALS])
def test_a_signal_checkpoints_at_the_next_step_boundary_and_exits_with_the_conventional_status(
    preempted: dict[Any, Any], sig: signal.Signals
) -> None:
    run = preempted[sig]
    assert run["status"] == SIGNALS[sig], run["stderr"]
    # the handler only set a flag: the process lived on to the end of the pause and the step after it
    assert run["exited_at"] - run["paused_at"] >= PAUSE_S
    assert sorted(run["progress"].steps) == list(range(PAUSE_STEP))
    root = run["root"]
    events = read_events(root / "logs" / "events.jsonl")
    (event,) = [e for e in events if e["event"] == "preempted"]
    assert (event["signal"], event["step"]) == (sig.name, PAUSE_STEP)
    saved = [e for e in events if e["event"] == "checkpoint_saved" and e["step"] == PAUSE_STEP]
    assert [e["trigger"] for e in saved] == ["preempted"]
    assert events.index(saved[0]) < events.index(event)  # flushed before "preempted" was journalled
    assert [e["event"] for e in events[-2:]] == ["preempted", "system_closed"]
    reader = CheckpointManager(root, mode="r")
    entry = reader.entry(event["exp_hash"], "latest")
    assert (entry.step, entry.trigger) == (PAUSE_STEP, "preempted") and reader.verify().healthy


def test_a_preempted_run_resumes_in_a_new_process_exactly_like_the_uninterrupted_run(
    preempted: dict[Any, Any],
) -> None:
    base, reference = preempted["base"], preempted["reference"]
    proc, progress, final = spawn(base, "resumer", preempted[signal.SIGTERM]["root"])
    assert finish(proc) == 0, (base / "resumer.stderr").read_text()[-2000:]
    resumed = read_progress(progress)
    assert resumed.start == PAUSE_STEP + 1
    assert resumed.steps == {s: reference["steps"][s] for s in range(PAUSE_STEP + 1, TOTAL_STEPS)}
    assert tensors_equal(torch.load(final, weights_only=True), reference["final"])


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    pause_s, pause_step = 60.0, 42
    proc, progress, _ = spawn(
        tmp_path, "victim", root, "--handle-signals", "--pause-at", f"{pause_step}:{pause_s}"
    )
    signal_when_paused({signal.SIGTERM: (proc, progress)})
    signalled = time.monotonic()
    time.sleep(0.3)
    assert proc.poll() is None  # the first one only asked for a checkpoint at the next step
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == 143
    assert time.monotonic() - signalled < pause_s / 2  # it did not wait for the step boundary
    events = read_events(root / "logs" / "events.jsonl")
    assert not [e for e in events if e["event"] in ("preempted", "system_closed")]
    # what was committed before stays committed and loads
    reader = CheckpointManager(root, mode="r")
    assert reader.load()["step"] == 40  # the last checkpoint before the pause
    assert all(p.kind == "orphaned" for p in reader.verify().problems)


# -- in this process --------------------------------------------------------------------------------
class Sentinel:
    """A previous signal handler: records calls (and catches a signal the system failed to take)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, signum: int, frame: Any) -> None:
        self.calls.append(signum)


@pytest.fixture
def sentinels() -> Iterator[dict[signal.Signals, Sentinel]]:
    """Sentinel handlers for SIGTERM and SIGINT, the original handlers restored afterwards."""
    originals = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    installed = {sig: Sentinel() for sig in originals}
    for sig, sentinel in installed.items():
        signal.signal(sig, sentinel)
    yield installed
    for sig, original in originals.items():
        signal.signal(sig, original)


def deliver(sig: int) -> None:
    """Send ``sig`` to this process and let Python run its handler (between bytecodes of this thread)."""
    os.kill(os.getpid(), sig)
    time.sleep(0.05)


@pytest.mark.parametrize(
    "build",
    [
        lambda root, ledger: AutomaticCheckpointSystem(
            CheckpointConfig(root_log_dir=root, checkpoint_frequency=10, handle_signals=True), ledger=ledger
        ),
        lambda root, ledger: get_checkpoint_system(
            root_log_dir=root, checkpoint_frequency=10, handle_signals=True
        ),
    ],
    ids=["AutomaticCheckpointSystem", "get_checkpoint_system"],
)
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_the_handler_only_asks_and_close_restores_the_previous_handlers(
    tmp_path: Path,
    sentinels: dict[signal.Signals, Sentinel],
    build: Callable[[Path, Ledger], AutomaticCheckpointSystem],
    sig: signal.Signals,
    status: int,
) -> None:
    ledger = Ledger()
    system = build(tmp_path / "root", ledger)
    ledger = system.ledger  # the global ledger for get_checkpoint_system
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", optimizer)
    for sig_ in (signal.SIGTERM, signal.SIGINT):
        assert signal.getsignal(sig_) is not sentinels[sig_], "handle_signals=True did not install a handler"
    for step in range(7):
        train_step(model, optimizer)
        system.checkpoint_on_step(step)
    deliver(sig)
    assert not system.closed and sentinels[sig].calls == []  # nothing happened yet
    train_step(model, optimizer)
    with pytest.raises(SystemExit) as exc:
        system.checkpoint_on_step(7)
    assert exc.value.code == status
    assert system.closed
    assert signal.getsignal(signal.SIGTERM) is sentinels[signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) is sentinels[signal.SIGINT]
    reader = CheckpointManager(tmp_path / "root", mode="r")
    (h,) = reader.experiments()
    entry = reader.entry(h)
    assert (entry.step, entry.trigger) == (7, "preempted") and reader.verify().healthy
    assert torch.equal(reader.load(h)["models"]["model"]["0.weight"], model[0].weight)
    events = [
        json.loads(line) for line in (tmp_path / "root" / "logs" / "events.jsonl").read_text().splitlines()
    ]
    assert [(e["signal"], e["step"]) for e in events if e["event"] == "preempted"] == [(sig.name, 7)]
    assert events[-1]["event"] == "system_closed"


def test_without_handle_signals_no_handler_is_installed(
    tmp_path: Path, sentinels: dict[signal.Signals, Sentinel]
) -> None:
    system = AutomaticCheckpointSystem(CheckpointConfig(root_log_dir=tmp_path / "root"), ledger=Ledger())
    assert signal.getsignal(signal.SIGTERM) is sentinels[signal.SIGTERM]
    system.close()
