"""The fast I/O paths: libxxhash digests, the hash beside the write, early writeback, the resume
whose checksum runs while the state is restored (a mismatch then falls back or says what is live),
and the resume that returns before its checksum ends (verify="background": gated steps and saves)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
import xxhash

from weightslab.components import AutomaticCheckpointSystem
from weightslab.errors import (
    CheckpointCorruptedError,
    CheckpointNotFoundError,
    ConfigError,
    UnverifiedStateError,
)
from weightslab.format.stepfile import save_state
from weightslab.registry.ledger import Ledger
from weightslab.storage import writeback
from weightslab.storage.base import PARALLEL_HASH_MIN, HashingWriter
from weightslab.storage.local import LocalStorage
from weightslab.store.manager import CheckpointManager
from weightslab.util import digests

from .conftest import mlp, train_step


def test_libxxhash_digests_are_the_xxhash_modules() -> None:
    data = os.urandom(3 << 20) + b"tail"
    stream = digests.Xxh3Stream()
    for start, end in ((0, 1), (1, 65_537), (65_537, 65_537), (65_537, len(data))):
        stream.update(memoryview(data)[start:end])
    assert stream.hexdigest() == xxhash.xxh3_128(data).hexdigest()
    assert digests.digest(data) == xxhash.xxh3_128(data).hexdigest()
    assert digests.digest(b"") == xxhash.xxh3_128(b"").hexdigest()
    floats = torch.randn(1000)
    assert digests.digest(memoryview(floats.numpy())) == xxhash.xxh3_128(floats.numpy().tobytes()).hexdigest()
    parts = [memoryview(data)[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
    assert digests.digests_parallel(parts, 2) == [xxhash.xxh3_128(p).hexdigest() for p in parts]


def test_large_writes_are_hashed_beside_the_write_and_every_byte_counts() -> None:
    raw = io.BytesIO()
    writer = HashingWriter(raw)  # type: ignore[arg-type]
    big = torch.randn(PARALLEL_HASH_MIN // 2 + 3)  # over the threshold in bytes: the threaded path
    pieces = [b"head", memoryview(big.numpy()), bytearray(b"mid"), memoryview(big.numpy()).cast("B")[5:]]
    for piece in pieces:
        writer.write(piece)
    writer.close()
    expected = b"".join(bytes(memoryview(p).cast("B")) for p in pieces)
    assert raw.getvalue() == expected and writer.bytes == len(expected)
    assert writer.hexdigest() == xxhash.xxh3_128(expected).hexdigest()


class FailingRaw:
    """A raw stream whose disk fills up after ``room`` bytes."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.kept = bytearray()

    def write(self, data: memoryview) -> int:
        if len(self.kept) + data.nbytes > self.room:
            raise OSError(28, "No space left on device")
        self.kept += data
        return data.nbytes

    def flush(self) -> None:
        pass


def test_a_failed_large_write_is_kept_and_raised_after_the_serialiser() -> None:
    raw = FailingRaw(room=PARALLEL_HASH_MIN)
    writer = HashingWriter(raw)  # type: ignore[arg-type]
    state = {"a": torch.randn(PARALLEL_HASH_MIN // 4), "b": torch.randn(PARALLEL_HASH_MIN // 4)}
    save_state(state, writer)  # type: ignore[arg-type]  # returns normally: the error is held
    with pytest.raises(OSError, match="No space left"):
        writer.raise_error()
    writer.close()
    assert writer.bytes > raw.room  # every byte passed was counted, the later ones dropped


def test_a_durable_write_with_early_writeback_is_whole_and_hashed(tmp_path: Path) -> None:
    state = {"w": torch.randn(3, 1 << 20)}  # 12 MB: several writeback windows of 1 MB
    path = tmp_path / "step.pt"
    storage = LocalStorage(durable=True, writeback_window=1 << 20)
    written = storage.write_atomic(path, lambda w: save_state(state, w))  # type: ignore[arg-type]
    assert written.xxh3_128 == xxhash.xxh3_128(path.read_bytes()).hexdigest()
    assert written.bytes == path.stat().st_size
    assert torch.equal(torch.load(path, weights_only=True)["w"], state["w"])
    assert storage.checksum(path) == (written.bytes, written.xxh3_128)
    assert not [p for p in tmp_path.iterdir() if p.name != "step.pt"]  # no temporary file left


def test_writeback_is_requested_on_a_real_file(tmp_path: Path) -> None:
    with open(tmp_path / "f", "wb") as f:
        wrapped = writeback.WritebackFile(f, window=1 << 16)  # type: ignore[arg-type]
        for _ in range(4):
            wrapped.write(os.urandom(1 << 16))
        wrapped.flush()
        assert writeback.start_writeback(f.fileno(), 0, 1 << 18) is writeback.AVAILABLE
    assert (tmp_path / "f").stat().st_size == 1 << 18


def test_a_file_hashed_by_the_xxhash_module_still_verifies(tmp_path: Path) -> None:
    """Files written before libxxhash was used (the same whole-file xxh3-128) check as before."""
    path = tmp_path / "old.pt"
    torch.save({"w": torch.randn(300, 300)}, path)
    data = path.read_bytes()
    assert LocalStorage(durable=False).checksum(path) == (len(data), xxhash.xxh3_128(data).hexdigest())


def _open(
    root: Path, seed: int = 0, *, optimizer: bool = True
) -> tuple[AutomaticCheckpointSystem, torch.nn.Module, torch.optim.Optimizer]:
    """A system on ``root`` with a fresh model, its AdamW (registered with ``optimizer``) and a config."""
    ledger = Ledger()
    system = AutomaticCheckpointSystem(root_log_dir=root, checkpoint_frequency=10, ledger=ledger)
    model = mlp(seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ledger.register_model("model", model)
    if optimizer:
        ledger.register_optimizer("optimizer", opt)
    ledger.register_hyperparams("config", {"lr": 1e-2})
    return system, model, opt


def _run(root: Path, steps: range, seed: int = 0) -> tuple[AutomaticCheckpointSystem, torch.nn.Module]:
    system, model, opt = _open(root, seed)
    for step in steps:
        train_step(model, opt)
        system.checkpoint_on_step(step)
    return system, model


def _damage_tensor(path: Path, tensor: torch.Tensor) -> None:
    """Flip one byte inside ``tensor``'s record: the file still parses, only its checksum tells."""
    data = bytearray(path.read_bytes())
    at = data.find(tensor.detach().numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0xFF
    path.write_bytes(bytes(data))


def test_bytes_restored_before_their_checksum_fails_are_replaced_by_the_fallback(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first, model = _run(root, range(21))
    h = first.exp_hash
    at_20 = {k: v.clone() for k, v in model.state_dict().items()}
    first.close()
    assert h is not None
    newest = root / "checkpoints" / h / "model" / f"{h}_step_000020.pt"
    saved = CheckpointManager(root, mode="r").load(h, 20)["models"]["model"]["0.weight"].clone()
    _damage_tensor(newest, saved)

    second, fresh = _run(root, range(0), seed=7)
    assert second.resume() == 11  # 20 parsed and restored, failed its checksum, 10 restored over it
    older = CheckpointManager(root, mode="r").load(h, 10)["models"]["model"]
    assert all(torch.equal(v, older[k]) for k, v in fresh.state_dict().items())
    assert not torch.equal(fresh.state_dict()["0.weight"], at_20["0.weight"])
    unreadable = [e for e in second.manager.events() if e["event"] == "checkpoint_unreadable"]
    assert [e["step"] for e in unreadable] == [20] and "corrupted" in unreadable[0]["error"]
    second.close()


def test_when_nothing_verifies_the_error_says_the_live_state_is_unverified(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first, _ = _run(root, range(11))
    h = first.exp_hash
    first.close()
    assert h is not None
    only = root / "checkpoints" / h / "model" / f"{h}_step_000010.pt"
    _damage_tensor(only, CheckpointManager(root, mode="r").load(h, 10)["models"]["model"]["0.weight"])

    second, _ = _run(root, range(0), seed=7)
    with pytest.raises(CheckpointNotFoundError, match="unverified state from model/") as exc:
        second.resume()
    assert "do not train on them" in str(exc.value)
    second.close()


def test_a_truncated_file_is_refused_by_its_size_before_it_is_parsed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first, _ = _run(root, range(21))
    h = first.exp_hash
    first.close()
    assert h is not None
    newest = root / "checkpoints" / h / "model" / f"{h}_step_000020.pt"
    newest.write_bytes(newest.read_bytes()[:-10])

    second, _ = _run(root, range(0), seed=7)
    assert second.resume() == 11
    (event,) = [e for e in second.manager.events() if e["event"] == "checkpoint_unreadable"]
    assert "size is" in event["error"]  # the size check, not a parse error of the cut file
    second.close()


def test_a_fallback_without_the_state_of_an_object_the_unverified_one_wrote_into_is_refused(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    ledger = Ledger()
    first = AutomaticCheckpointSystem(root_log_dir=root, checkpoint_frequency=10, ledger=ledger)
    model = mlp(seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    for step in range(11):
        train_step(model, opt)
        first.checkpoint_on_step(step)
    head = mlp((4, 6), seed=1)
    ledger.register_model("head", head)  # a new model: a new experiment, branched from step 10
    for step in range(11, 21):
        train_step(model, opt)
        first.checkpoint_on_step(step)
    h = first.exp_hash
    first.close()
    assert h is not None
    reader = CheckpointManager(root, mode="r")
    assert [e.step for e in reader.checkpoints(h)] == [11, 20]  # the change saved at 11, with the head
    for step in (11, 20):  # both checkpoints with the head are damaged: the parent's step 10 has none
        saved = reader.load(h, step)["models"]["head"]["0.weight"]
        _damage_tensor(root / "checkpoints" / h / "model" / f"{h}_step_{step:06d}.pt", saved)

    ledger2 = Ledger()
    second = AutomaticCheckpointSystem(root_log_dir=root, checkpoint_frequency=10, ledger=ledger2)
    model2 = mlp(seed=5)
    ledger2.register_model("model", model2)
    ledger2.register_optimizer("optimizer", torch.optim.AdamW(model2.parameters(), lr=1e-2))
    ledger2.register_model("head", mlp((4, 6), seed=9))
    with pytest.raises(CheckpointNotFoundError, match="holds no state for models 'head'") as exc:
        second.resume()
    assert "unverified state" in str(exc.value) and "do not train on them" in str(exc.value)
    second.close()


def test_an_explicit_step_is_verified_before_anything_is_restored(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first, _ = _run(root, range(21))
    h = first.exp_hash
    first.close()
    assert h is not None
    newest = root / "checkpoints" / h / "model" / f"{h}_step_000020.pt"
    _damage_tensor(newest, CheckpointManager(root, mode="r").load(h, 20)["models"]["model"]["0.weight"])

    second, model = _run(root, range(0), seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointCorruptedError):
        second.resume(20)
    # the error of resume(N) still means that nothing was touched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    second.close()


def _saved_run(root: Path, *, damaged: bool) -> str:
    """Checkpoints 10 and 20 of one run in ``root`` (20 with a flipped byte when ``damaged``); its hash."""
    first, _ = _run(root, range(21))
    h = first.exp_hash
    first.close()
    assert h is not None
    if damaged:
        saved = CheckpointManager(root, mode="r").load(h, 20)["models"]["model"]["0.weight"]
        _damage_tensor(root / "checkpoints" / h / "model" / f"{h}_step_000020.pt", saved)
    return h


def _holds(model: torch.nn.Module, root: Path, h: str, step: int) -> bool:
    saved = CheckpointManager(root, mode="r").load(h, step)["models"]["model"]
    return all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_a_background_resume_restores_at_once_and_steps_once_its_checksum_passed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    h = _saved_run(root, damaged=False)
    second, model, opt = _open(root, seed=7)
    assert second.resume(verify="background") == 21
    assert _holds(model, root, h, 20)
    train_step(model, opt)  # the first step waits for the checksum, which passed: it steps
    second.wait_verified()
    assert not opt._optimizer_step_pre_hooks  # the gate is gone once passed
    for step in range(21, 31):
        train_step(model, opt)
        second.checkpoint_on_step(step)
    second.close()
    assert [e.step for e in CheckpointManager(root, mode="r").checkpoints(h)] == [10, 20, 30]
    assert not [
        e for e in CheckpointManager(root, mode="r").events() if e["event"] == "checkpoint_unreadable"
    ]


def test_a_failed_background_checksum_stops_every_step_and_save_until_resume_falls_back(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    h = _saved_run(root, damaged=True)
    second, model, opt = _open(root, seed=7)
    assert second.resume(verify="background") == 21  # restored before its checksum ended
    restored = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnverifiedStateError, match=f"{h}_step_000020.pt") as exc:
        train_step(model, opt)
    assert "Call resume() again" in str(exc.value)
    assert all(torch.equal(restored[k], v) for k, v in model.state_dict().items())  # no update applied
    with pytest.raises(UnverifiedStateError):
        opt.step()  # and again, for as long as the state is unverified
    with pytest.raises(UnverifiedStateError):
        second.wait_verified()
    with pytest.raises(UnverifiedStateError):
        second.checkpoint_on_step(30)  # a due save refuses to write the unverified state
    assert [e.step for e in CheckpointManager(root, mode="r").checkpoints(h)] == [10, 20]
    (event,) = [e for e in second.manager.events() if e["event"] == "checkpoint_unreadable"]
    assert event["step"] == 20 and event["deferred"] is True and "corrupted" in event["error"]

    # resume again: the journalled file is verified before it is restored, so it falls back
    assert second.resume(verify="background") == 11
    assert _holds(model, root, h, 10)
    train_step(model, opt)
    second.close()


def test_a_restarted_process_never_restores_a_checkpoint_that_failed_unverified_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    h = _saved_run(root, damaged=True)
    second, model, opt = _open(root, seed=7)
    assert second.resume(verify="background") == 21
    second.close()  # the failed check is logged, and nothing (no "last" save) is written from it
    assert "failed its check" in caplog.text
    assert [e.step for e in CheckpointManager(root, mode="r").checkpoints(h)] == [10, 20]

    third, model, opt = _open(root, seed=8)  # a new run, as a restarted job would open it
    assert third.resume(verify="background") == 11  # 20 is journalled unreadable: verified first
    assert _holds(model, root, h, 10)
    train_step(model, opt)
    third.close()


def test_a_background_resume_without_an_optimizer_verifies_before_it_returns(tmp_path: Path) -> None:
    root = tmp_path / "root"
    h = _saved_run(root, damaged=True)
    second, model, _ = _open(root, seed=7, optimizer=False)  # nothing would wait: no step to gate
    assert second.resume(verify="background") == 11
    assert _holds(model, root, h, 10)
    second.close()


def test_resume_names_an_unknown_verify_mode(tmp_path: Path) -> None:
    system, _, _ = _open(tmp_path / "root")
    with pytest.raises(
        ConfigError, match=r"verify='later'.*verify='split' \(the default\), 'now' or 'background'"
    ):
        system.resume(verify="later")  # type: ignore[arg-type]
    system.close()


def test_a_failed_background_check_keeps_gating_until_a_restore_replaces_the_state(tmp_path: Path) -> None:
    root = tmp_path / "root"
    h = _saved_run(root, damaged=True)
    second, model, opt = _open(root, seed=7)
    assert second.resume(verify="background") == 21
    with pytest.raises(UnverifiedStateError):
        second.wait_verified()
    assert second.find_resume() is not None  # restores nothing: the gate stays
    with pytest.raises(CheckpointNotFoundError):
        second.resume(99)  # raises before restoring: the gate stays
    late = torch.optim.SGD(model.parameters(), lr=0.1)
    second.ledger.register_optimizer("late", late)  # registered after resume: gated too
    model(torch.randn(2, 8)).sum().backward()
    with pytest.raises(UnverifiedStateError):
        late.step()
    with pytest.raises(UnverifiedStateError):
        opt.step()
    assert [e.step for e in CheckpointManager(root, mode="r").checkpoints(h)] == [10, 20]
    assert second.resume() == 11
    late.step()
    second.close()


def test_a_best_resume_that_would_rewind_is_verified_before_it_returns(tmp_path: Path) -> None:
    root = tmp_path / "root"
    h = _saved_run(root, damaged=True)
    ledger = Ledger()
    system = AutomaticCheckpointSystem(root_log_dir=root, checkpoint_frequency=10, ledger=ledger)
    model = mlp(seed=3)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", torch.optim.AdamW(model.parameters(), lr=1e-2))
    ledger.register_hyperparams("config", {"lr": 1e-2})
    assert system.resume(10, verify="background") == 11  # an explicit step: verified first
    live = [e.step for e in CheckpointManager(root, mode="r").manifest(h).live()]
    assert live == [10]  # resume(10) rewound past 20, after verifying 10
    system.close()
