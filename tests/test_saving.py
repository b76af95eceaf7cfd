"""Saving without stalling: consistent snapshots, identical files in both modes, the fast write path."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash

from weightslab.components import AutomaticCheckpointSystem
from weightslab.format.stepfile import save_state
from weightslab.registry.ledger import Ledger
from weightslab.storage.local import HashingWriter, LocalStorage
from weightslab.system.snapshot import SnapshotBuffers

from .conftest import mlp, train_step


def build(ledger: Ledger, seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = mlp((32, 64, 64, 8), seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_hyperparams("config", {"lr": 1e-2})
    return model, opt


def test_snapshot_is_consistent_while_training_mutates_in_place(tmp_path: Path) -> None:
    ledger = Ledger()
    system = AutomaticCheckpointSystem(root_log_dir=tmp_path / "r", checkpoint_frequency=5, ledger=ledger)
    model, opt = build(ledger)
    for _ in range(3):
        train_step(model, opt, 32)
    expected_model = {k: v.clone() for k, v in model.state_dict().items()}
    expected_exp_avg = opt.state[model[0].weight]["exp_avg"].clone()
    system.checkpoint_on_step(5)
    # the call returned: training now rewrites every tensor in place while the write may be in flight
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-3.0).add_(7.0)
    opt.state[model[0].weight]["exp_avg"].fill_(123.0)
    train_step(model, opt, 32)
    system.flush()
    saved = system.manager.load(system.exp_hash, 5)
    for k, v in expected_model.items():
        assert torch.equal(saved["models"]["model"][k], v), k
    assert torch.equal(saved["optimizers"]["optimizer"]["state"][0]["exp_avg"], expected_exp_avg)
    system.close()


def test_buffers_are_reused_while_shapes_stay_the_same() -> None:
    bufs = SnapshotBuffers()
    t = torch.randn(64, 64)
    first = bufs.stage({"w": t})[0]["w"]
    t.add_(1.0)
    second = bufs.stage({"w": t})[0]["w"]
    assert first.data_ptr() == second.data_ptr() and torch.equal(second, t)
    third = bufs.stage({"w": torch.randn(32, 64)})[0]["w"]  # pruned: a new buffer
    assert third.shape == (32, 64) and torch.equal(second, t)  # the earlier snapshot is untouched
    assert bufs.stage({})[0] == {} and bufs.kept_bytes == 0  # unused buffers are released


def run_and_hash(tmp_path: Path, async_save: bool) -> dict[str, str]:
    torch.manual_seed(0)
    ledger = Ledger()
    system = AutomaticCheckpointSystem(
        root_log_dir=tmp_path / f"r{async_save}",
        checkpoint_frequency=4,
        async_save=async_save,
        ledger=ledger,
        clock=lambda: 1_700_000_000.0,
    )
    model, opt = build(ledger)
    cfg = ledger.get("hyperparams", "config")
    for step in range(13):
        train_step(model, opt, 32)
        if step == 6:
            cfg["lr"] = 5e-3
        system.checkpoint_on_step(step, metrics={"loss": 0.5})
    system.close()
    files = sorted((tmp_path / f"r{async_save}" / "checkpoints").rglob("*_step_*.pt"))
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_sync_and_async_modes_write_identical_files(tmp_path: Path) -> None:
    sync, async_ = run_and_hash(tmp_path, False), run_and_hash(tmp_path, True)
    assert len(sync) == 4  # steps 4, 8, 12 and the config change at 6
    assert sync == async_


def test_files_without_torch_crc_still_load_with_plain_torch_load(tmp_path: Path) -> None:
    state = {"format": "x", "w": torch.randn(100, 100), "nested": {"b": torch.arange(10)}, "n": 3}
    path = tmp_path / "a.pt"
    written = LocalStorage().write_atomic(path, lambda w: save_state(state, w))  # type: ignore[arg-type]
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["nested"]["b"], state["nested"]["b"])
    assert written.xxh3_128 == xxhash.xxh3_128(path.read_bytes()).hexdigest()  # hashed while writing
    mapped = torch.load(path, weights_only=True, mmap=True)
    assert torch.equal(mapped["w"], state["w"])


def test_hashing_writer_counts_and_hashes_every_byte() -> None:
    raw = io.BytesIO()
    writer = HashingWriter(raw)  # type: ignore[arg-type]
    for chunk in (b"abc", bytearray(b"defg"), memoryview(b"hij")):
        writer.write(chunk)
    assert writer.bytes == 10 and raw.getvalue() == b"abcdefghij"
    assert writer.hexdigest() == xxhash.xxh3_128(b"abcdefghij").hexdigest()


def test_at_most_one_save_in_flight(tmp_path: Path) -> None:
    ledger = Ledger()
    system = AutomaticCheckpointSystem(root_log_dir=tmp_path / "r", checkpoint_frequency=1, ledger=ledger)
    build(ledger)
    ledger.register_model("big", torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(6)]))
    in_flight = []
    original = system.manager.save
    lock = threading.Lock()
    active = [0]

    def counting_save(*args: Any, **kwargs: Any) -> Any:
        with lock:
            active[0] += 1
            in_flight.append(active[0])
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    system.manager.save = counting_save  # type: ignore[method-assign]
    for step in range(1, 8):
        system.checkpoint_on_step(step)
    system.flush()
    assert max(in_flight) == 1 and len(in_flight) == 7
    system.close()


def test_close_reports_a_background_failure(tmp_path: Path) -> None:
    import shutil

    ledger = Ledger()
    system = AutomaticCheckpointSystem(
        root_log_dir=tmp_path / "r", checkpoint_frequency=1, ledger=ledger, on_error="raise"
    )
    build(ledger)
    system.checkpoint_on_step(0)
    shutil.rmtree(system.manager.experiment(system.exp_hash).model_dir)
    system.checkpoint_on_step(1)
    with pytest.raises(Exception, match="a checkpoint save failed: FileNotFoundError"):
        system.close()
    assert system.closed


def test_the_torch_save_fallback_writes_a_file_that_loads_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without torch's private zip writer (a future torch moved it), plain torch.save is used."""
    import weightslab.format.stepfile as stepfile
    from weightslab.store.manager import CheckpointManager

    monkeypatch.setattr(stepfile, "FAST_PATH", False)  # our own switch; torch is left as it is
    called = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda *a, **k: (called.append(1), real_save(*a, **k))[1])
    state = {"format": "weightslab.checkpoint/1", "exp_hash": "0" * 16, "step": 3, "w": torch.arange(6.0)}
    with CheckpointManager(tmp_path / "root") as mgr:
        mgr.create_experiment(
            exp_hash="0" * 16,
            architecture_hash="a",
            hyperparams_hash="b",
            parent=None,
            retention={},
            hyperparams={},
            models={},
        )
        entry = mgr.save("0" * 16, 3, state, trigger="step")
        assert called, "the fallback path was not taken"
        path = mgr.verify_entry("0" * 16, entry)
        assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(6.0))
        assert torch.equal(mgr.load("0" * 16, 3)["w"], torch.arange(6.0))
        assert mgr.verify().healthy
