"""The default resume (verify="split"): every block of the step file but those holding only optimizer
state is checked before resume returns, the model copied out of each piece as it is hashed; the
optimizer's moments are checked on a helper thread, and its step() and state_dict() wait for them.

The step files here are four 64 MiB blocks: the pickled structure, then the AdamW moments (144 MB,
blocks 1-3), then two Linear(3000, 3000) layers (72 MB, blocks 3-4), so block 2 holds nothing but
moments (blocks are counted from 0 in the code, from 1 in messages)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from weightslab.components import AutomaticCheckpointSystem
from weightslab.errors import CheckpointCorruptedError, UnverifiedStateError
from weightslab.registry.ledger import Ledger
from weightslab.storage.local import LocalStorage
from weightslab.store import split_check
from weightslab.store.manager import CheckpointManager
from weightslab.util.digests import BLOCK_BYTES


def _model(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(*[torch.nn.Linear(3000, 3000, bias=False) for _ in range(2)])


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    model(torch.randn(4, 3000)).square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _system(
    root: Path, seed: int
) -> tuple[AutomaticCheckpointSystem, torch.nn.Module, torch.optim.Optimizer]:
    ledger = Ledger()
    model = _model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    system = AutomaticCheckpointSystem(
        root_log_dir=root, checkpoint_frequency=1, ledger=ledger, async_save=False, save_last=False
    )
    return system, model, opt


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A root with checkpoints at steps 1 and 2 of one run, and its experiment hash."""
    root = tmp_path_factory.mktemp("split") / "root"
    system, model, opt = _system(root, seed=0)
    for step in (1, 2):
        _step(model, opt)
        system.checkpoint_on_step(step)
    system.close()
    assert system.exp_hash is not None
    yield root, system.exp_hash


def _copy(saved: tuple[Path, str], tmp_path: Path) -> tuple[Path, str, Path]:
    root, h = saved
    mine = tmp_path / "root"
    shutil.copytree(root, mine)
    entry = CheckpointManager(mine, mode="r").manifest(h).entry(2)
    assert entry is not None
    return mine, h, mine / "checkpoints" / h / entry.file


def _flip(path: Path, block: int) -> None:
    """Flip one bit in the middle of 0-based ``block``."""
    start = block * BLOCK_BYTES
    at = start + (min(start + BLOCK_BYTES, path.stat().st_size) - start) // 2
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 1]))


def _saved(root: Path, h: str, step: int) -> dict[str, Any]:
    return CheckpointManager(root, mode="r").load(h, step)


def _holds(model: torch.nn.Module, data: dict[str, Any]) -> bool:
    saved = data["models"]["model"]
    return all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_the_plan_defers_only_blocks_of_optimizer_moments(saved: tuple[Path, str], tmp_path: Path) -> None:
    root, h, path = _copy(saved, tmp_path)
    entry = CheckpointManager(root, mode="r").manifest(h).entry(2)
    assert entry is not None and entry.blocks is not None and len(entry.blocks.xxh3_128_hi64) == 4
    data = torch.load(path, mmap=True, weights_only=True)
    check = split_check.plan(LocalStorage(durable=False), path, entry, data, threads=2, defer_optimizers=True)
    assert check is not None
    assert check.eager_blocks == [0, 2, 3] and check.deferred_blocks == [1]
    for t in data["models"]["model"].values():  # every model tensor lies in eager blocks
        assert check.offset(t) is not None
    moments = [
        s for st in data["optimizers"]["optimizer"]["state"].values() for s in st.values() if s.numel() > 1
    ]
    assert any(check.offset(t) is None for t in moments)  # some of them in the deferred block
    whole = split_check.plan(
        LocalStorage(durable=False), path, entry, data, threads=2, defer_optimizers=False
    )
    assert whole is not None and whole.eager_blocks == [0, 1, 2, 3] and whole.deferred_blocks == []


def test_resume_restores_exactly_and_its_first_step_waits_for_the_moments(
    saved: tuple[Path, str], tmp_path: Path
) -> None:
    root, h, _ = _copy(saved, tmp_path)
    second, model, opt = _system(root, seed=7)
    assert second.resume() == 3
    data = _saved(root, h, 2)
    assert _holds(model, data)
    state = opt.state_dict()  # waits for the deferred blocks, which pass
    for pid, saved_state in data["optimizers"]["optimizer"]["state"].items():
        assert all(torch.equal(state["state"][pid][k], v) for k, v in saved_state.items())
    _step(model, opt)
    second.wait_verified()
    assert not opt._optimizer_step_pre_hooks  # the gates are gone once the check passed
    second.checkpoint_on_step(3)
    second.close()
    assert not [
        e for e in CheckpointManager(root, mode="r").events() if e["event"] == "checkpoint_unreadable"
    ]


def test_a_damaged_moment_block_stops_step_state_dict_and_saves_and_resume_falls_back(
    saved: tuple[Path, str], tmp_path: Path
) -> None:
    root, h, path = _copy(saved, tmp_path)
    _flip(path, 1)
    second, model, opt = _system(root, seed=7)
    assert second.resume() == 3  # the model's blocks passed: restored, and verified
    assert _holds(model, torch.load(path, mmap=True, weights_only=True))
    with pytest.raises(UnverifiedStateError, match=f"{h}_step_000002.pt") as exc:
        _step(model, opt)
    assert "block 2 of 4" in str(exc.value)
    with pytest.raises(UnverifiedStateError):
        opt.state_dict()
    with pytest.raises(UnverifiedStateError):
        second.checkpoint_on_step(3)
    (event,) = [e for e in second.manager.events() if e["event"] == "checkpoint_unreadable"]
    assert event["step"] == 2 and event["deferred"] is True
    assert second.resume() == 2  # the journalled file is checked first: step 1
    assert _holds(model, _saved(root, h, 1))
    _step(model, opt)
    second.close()


@pytest.mark.parametrize("block", [0, 2, 3])
def test_a_damaged_eager_block_falls_back_before_resume_returns(
    saved: tuple[Path, str], tmp_path: Path, block: int
) -> None:
    root, h, path = _copy(saved, tmp_path)
    _flip(path, block)
    second, model, opt = _system(root, seed=7)
    assert second.resume() == 2
    assert _holds(model, _saved(root, h, 1))  # what the fused copy wrote of step 2 was replaced
    (event,) = [e for e in second.manager.events() if e["event"] == "checkpoint_unreadable"]
    assert event["step"] == 2 and f"block {block + 1} of 4" in event["error"]
    _step(model, opt)
    second.close()


def test_verify_now_checks_the_moments_before_it_returns(saved: tuple[Path, str], tmp_path: Path) -> None:
    root, h, path = _copy(saved, tmp_path)
    _flip(path, 1)
    second, model, opt = _system(root, seed=7)
    assert second.resume(verify="now") == 2
    assert _holds(model, _saved(root, h, 1))
    second.close()


def test_a_model_with_its_own_load_hook_is_loaded_by_load_state_dict_after_the_check(
    saved: tuple[Path, str], tmp_path: Path
) -> None:
    root, h, _ = _copy(saved, tmp_path)
    second, model, opt = _system(root, seed=7)
    seen: list[str] = []

    def hook(module: torch.nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        seen.extend(k for k in state_dict if k.startswith(prefix))

    model[0]._register_load_state_dict_pre_hook(hook, with_module=True)
    assert second.resume() == 3
    assert seen == ["0.weight"]
    assert _holds(model, _saved(root, h, 2))
    second.close()


class _Ema:
    """A registered stateful object holding a tensor (restored before the model is copied)."""

    def __init__(self, size: int) -> None:
        self.shadow = torch.zeros(size)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow = state["shadow"].clone()


def _no_optimizer_system(root: Path, seed: int) -> tuple[AutomaticCheckpointSystem, torch.nn.Module, _Ema]:
    ledger = Ledger()
    model = _model(seed)
    ema = _Ema(1_000_000)
    ledger.register_model("model", model)
    ledger.register_stateful("ema", ema)
    system = AutomaticCheckpointSystem(
        root_log_dir=root, checkpoint_frequency=1, ledger=ledger, async_save=False, save_last=False
    )
    return system, model, ema


def test_state_read_before_the_model_is_copied_is_checked_first(tmp_path: Path) -> None:
    # no optimizer: every block is eager. The EMA's tensor follows the model's in the file, in the
    # model's second block: that block is checked before the EMA is restored, and the model's bytes
    # in it are copied after.
    root = tmp_path / "root"
    system, model, ema = _no_optimizer_system(root, seed=0)
    ema.shadow.normal_()
    system.checkpoint_on_step(1)
    with torch.no_grad():
        model[1].weight.add_(1.0)
    ema.shadow.add_(1.0)
    system.checkpoint_on_step(2)
    system.close()
    h = system.exp_hash
    assert h is not None
    entry = CheckpointManager(root, mode="r").manifest(h).entry(2)
    assert entry is not None and entry.blocks is not None and len(entry.blocks.xxh3_128_hi64) == 2
    path = root / "checkpoints" / h / entry.file

    second, fresh, fresh_ema = _no_optimizer_system(root, seed=7)
    assert second.resume() == 3
    saved = _saved(root, h, 2)
    assert _holds(fresh, saved) and torch.equal(fresh_ema.shadow, saved["extra"]["ema"]["shadow"])
    second.close()

    _flip(path, 1)  # the block of the EMA and of the model's second layer
    third, again, again_ema = _no_optimizer_system(root, seed=7)
    assert third.resume() == 2
    at_1 = _saved(root, h, 1)
    assert _holds(again, at_1) and torch.equal(again_ema.shadow, at_1["extra"]["ema"]["shadow"])
    third.close()


def _scheduled_system(
    root: Path, seed: int
) -> tuple[AutomaticCheckpointSystem, Ledger, torch.nn.Module, torch.optim.Optimizer, Any]:
    """A system on ``root`` with a fresh model, its AdamW and a StepLR on it (and the ledger)."""
    ledger = Ledger()
    model = _model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_scheduler("sched", sched)
    system = AutomaticCheckpointSystem(
        root_log_dir=root, checkpoint_frequency=1, ledger=ledger, async_save=False, save_last=False
    )
    return system, ledger, model, opt, sched


def test_a_damaged_structure_block_restores_nothing_from_that_file(tmp_path: Path) -> None:
    # the parent's step 1 has no "head": the fallback is allowed (with a warning), since the damaged
    # file's check failed before anything was restored from it
    root = tmp_path / "root"
    first, ledger, model, opt, sched = _scheduled_system(root, seed=0)
    _step(model, opt)
    sched.step()
    first.checkpoint_on_step(1)
    parent = first.exp_hash
    ledger.register_model("head", torch.nn.Linear(4, 4))  # a new experiment, branched from step 1
    _step(model, opt)
    sched.step()
    first.checkpoint_on_step(2)
    child = first.exp_hash
    first.close()
    assert parent is not None and child is not None and child != parent
    entry = CheckpointManager(root, mode="r").manifest(child).entry(2)
    assert entry is not None and entry.blocks is not None
    _flip(root / "checkpoints" / child / entry.file, 0)

    second, ledger2, model2, _, sched2 = _scheduled_system(root, seed=7)
    ledger2.register_model("head", torch.nn.Linear(4, 4))
    with pytest.warns(UserWarning, match="holds no state for registered model 'head'"):
        assert second.resume() == 2
    at_1 = _saved(root, parent, 1)
    assert _holds(model2, at_1) and sched2.last_epoch == at_1["schedulers"]["sched"]["last_epoch"] == 1
    second.close()


def test_a_background_resume_of_a_file_with_blocks_checks_it_all_behind_the_gate(
    saved: tuple[Path, str], tmp_path: Path
) -> None:
    root, h, path = _copy(saved, tmp_path)
    _flip(path, 3)  # a model block: verify="background" restores it unchecked, and the gate stops it
    second, model, opt = _system(root, seed=7)
    assert second.resume(verify="background") == 3
    with pytest.raises(UnverifiedStateError, match="block 4 of 4"):
        _step(model, opt)
    assert second.resume() == 2
    assert _holds(model, _saved(root, h, 1))
    second.close()


def _plan_of(
    path: Path, root: Path, h: str, *, threads: int
) -> tuple[split_check.SplitCheck, dict[str, Any]]:
    entry = CheckpointManager(root, mode="r").manifest(h).entry(2)
    assert entry is not None
    storage = LocalStorage(durable=False)
    identity = storage.identity(path)
    data = torch.load(path, mmap=True, weights_only=True)
    check = split_check.plan(
        storage, path, entry, data, threads=threads, defer_optimizers=True, identity=identity
    )
    assert check is not None
    return check, data


def test_one_thread_hashes_and_copies_the_same_bytes(saved: tuple[Path, str], tmp_path: Path) -> None:
    root, h, path = _copy(saved, tmp_path)
    check, data = _plan_of(path, root, h, threads=1)
    sd = data["models"]["model"]
    into = {k: torch.empty_like(v) for k, v in sd.items()}
    check.eager([(sd[k], into[k]) for k in sd])
    assert all(torch.equal(into[k], sd[k]) for k in sd)
    check.rest()


def test_a_file_replaced_after_it_was_loaded_is_not_checked_in_its_place(
    saved: tuple[Path, str], tmp_path: Path
) -> None:
    root, h, path = _copy(saved, tmp_path)
    check, _ = _plan_of(path, root, h, threads=2)
    twin = path.with_name("twin")
    shutil.copyfile(path, twin)
    twin.replace(path)  # the same bytes under a new inode
    with pytest.raises(CheckpointCorruptedError, match="was replaced while it was read"):
        check.eager()


def test_a_model_with_batchnorm_resumes_exactly(tmp_path: Path) -> None:
    root = tmp_path / "root"

    def build(seed: int) -> torch.nn.Sequential:
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Linear(3000, 3000, bias=False), torch.nn.BatchNorm1d(3000), torch.nn.Linear(3000, 3000)
        )

    ledger = Ledger()
    model = build(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    system = AutomaticCheckpointSystem(
        root_log_dir=root, checkpoint_frequency=1, ledger=ledger, async_save=False, save_last=False
    )
    _step(model, opt)
    system.checkpoint_on_step(1)
    system.close()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    ledger2 = Ledger()
    fresh = build(5)
    ledger2.register_model("model", fresh)
    ledger2.register_optimizer("optimizer", torch.optim.AdamW(fresh.parameters(), lr=1e-3))
    second = AutomaticCheckpointSystem(root_log_dir=root, checkpoint_frequency=1, ledger=ledger2)
    assert second.resume() == 2
    assert all(torch.equal(v, saved[k]) for k, v in fresh.state_dict().items())
    assert int(fresh[1].num_batches_tracked) == 1
    second.close()
