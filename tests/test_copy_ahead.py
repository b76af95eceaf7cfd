"""Saves whose copy starts before the state is read: the same tensors as the last save, copied ahead.

A scheduled asynchronous save copies the previous save's source tensors into the kept staging arena
on the copier thread, then reads the state trees; the copy is taken only when the state holds
exactly those tensor objects in that layout. These tests train real models between saves and read
every checkpoint back.
"""

from __future__ import annotations

import gc
import multiprocessing
import threading
import types
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from weightslab.components import AutomaticCheckpointSystem
from weightslab.registry.ledger import Ledger
from weightslab.store.manager import CheckpointManager
from weightslab.system.snapshot import SnapshotBuffers


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)  # 4 x Linear(256, 256): 1 MiB of weights, over the copier's threshold
    return torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)])


def _open(
    root: Path, model: torch.nn.Module | None = None
) -> tuple[AutomaticCheckpointSystem, Ledger, torch.nn.Module, torch.optim.Optimizer]:
    """A system on ``root`` saving every step: ``model`` (default :func:`_model`) and its AdamW."""
    ledger = Ledger()
    model = _model() if model is None else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_hyperparams("config", {"lr": 1e-3})
    system = AutomaticCheckpointSystem(
        root_log_dir=root, checkpoint_frequency=1, keep_last=100, ledger=ledger
    )
    return system, ledger, model, opt


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    loss = model(torch.randn(8, 256)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def _done(system: AutomaticCheckpointSystem) -> str:
    """Flush and close ``system``; the hash of its active experiment."""
    system.flush()
    h = system.exp_hash
    assert h is not None
    system.close()
    return h


def _started(
    root: Path, steps: range = range(1, 4)
) -> tuple[AutomaticCheckpointSystem, Ledger, torch.nn.Module, torch.optim.Optimizer]:
    """A system on ``root`` that trained and saved at ``steps``."""
    system, ledger, model, opt = _open(root)
    for step in steps:
        _train(model, opt)
        system.checkpoint_on_step(step)
    return system, ledger, model, opt


def _live(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optim": {i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(opt.state.values())},
    }


def _saved(root: Path, h: str, step: int) -> dict[str, Any]:
    data = CheckpointManager(root, mode="r").load(h, step)
    return {"model": data["models"]["model"], "optim": data["optimizers"]["optimizer"]["state"]}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a["model"].keys() != b["model"].keys() or a["optim"].keys() != b["optim"].keys():
        return False
    return all(torch.equal(v, b["model"][k]) for k, v in a["model"].items()) and all(
        torch.equal(t, b["optim"][i][k]) for i, s in a["optim"].items() for k, t in s.items()
    )


def test_every_save_copied_ahead_holds_the_state_of_its_own_step(tmp_path: Path) -> None:
    system, _, model, opt = _open(tmp_path)
    expected: dict[int, dict[str, Any]] = {}
    for step in range(1, 9):
        _train(model, opt)
        system.checkpoint_on_step(step)
        expected[step] = _live(model, opt)
    system.flush()
    h = system.exp_hash
    assert h is not None
    # step 1 stages the first layout (the optimizer's state appears with it); from then on every
    # save is copied ahead
    assert system._buffers.copied_ahead >= 5
    system.close()
    for step, live in expected.items():
        assert _same(live, _saved(tmp_path, h, step)), f"step {step}"


def test_new_source_tensors_are_copied_anew(tmp_path: Path) -> None:
    system, _, model, opt = _started(tmp_path, range(3))
    system.flush()
    before = system._buffers.copied_ahead
    # load_state_dict gives the optimizer new state tensors, of the same shapes, with new values
    sd = opt.state_dict()
    for s in sd["state"].values():
        s["exp_avg"] = s["exp_avg"] + 1.0
    opt.load_state_dict(sd)
    with torch.no_grad():  # and a parameter keeps its object but gets another storage of its shape
        model[0].weight.data = torch.full((256, 256), 0.5)
    system.checkpoint_on_step(3)
    expected = _live(model, opt)
    system.flush()
    assert system._buffers.copied_ahead == before  # the copy made ahead was dropped
    h = system.exp_hash
    assert h is not None
    system.close()
    assert _same(expected, _saved(tmp_path, h, 3))


def test_a_parameter_given_another_shape_in_place_is_saved_with_it(tmp_path: Path) -> None:
    system, _, model, opt = _started(tmp_path, range(3))
    weight = model[3].weight
    weight.data = torch.arange(128 * 256, dtype=torch.float32).reshape(128, 256)  # same object
    model[3].bias.data = torch.zeros(128)
    system.checkpoint_on_step(3)
    h = _done(system)
    saved = CheckpointManager(tmp_path, mode="r").load(h, 3)["models"]["model"]
    assert saved["3.weight"].shape == (128, 256)
    assert torch.equal(saved["3.weight"], weight.detach())


def test_the_sources_of_the_last_copy_are_not_kept_alive(tmp_path: Path) -> None:
    system, ledger, model, opt = _started(tmp_path, range(3))
    system.flush()
    old_state = weakref.ref(next(iter(opt.state.values()))["exp_avg"])
    fresh = torch.optim.SGD(model.parameters(), lr=1e-3)
    ledger.register_optimizer("optimizer", fresh)  # replaces the AdamW
    del opt
    gc.collect()
    assert old_state() is None
    _train(model, fresh)
    system.checkpoint_on_step(3)
    expected = _live(model, fresh)
    h = _done(system)
    saved = CheckpointManager(tmp_path, mode="r").load(h, 3)["models"]["model"]
    assert all(torch.equal(v, saved[k]) for k, v in expected["model"].items())


def test_staged_parameters_are_saved_as_plain_tensors_without_grad(tmp_path: Path) -> None:
    system, _, model, opt = _started(tmp_path, range(3))
    h = _done(system)
    saved = CheckpointManager(tmp_path, mode="r").load(h, 2)["models"]["model"]
    assert all(type(t) is torch.Tensor and not t.requires_grad for t in saved.values())


def test_a_freeze_between_saves_is_in_the_next_checkpoint(tmp_path: Path) -> None:
    system, _, model, opt = _started(tmp_path, range(3))
    model[1].weight.requires_grad_(False)
    system.checkpoint_on_step(3)
    model[1].weight.requires_grad_(True)
    system.checkpoint_on_step(4)
    h = _done(system)
    manager = CheckpointManager(tmp_path, mode="r")
    assert manager.load(h, 3)["frozen"] == {"model": ["1.weight"]}
    assert manager.load(h, 4)["frozen"] == {"model": []}


def test_close_stops_the_copier_thread(tmp_path: Path) -> None:
    system, _, model, opt = _started(tmp_path, range(3))
    assert any(t.name.startswith("weightslab-stager") for t in threading.enumerate())
    system.close()
    assert not any(t.name.startswith("weightslab-stager") for t in threading.enumerate())


def test_saves_through_save_as_trainer_callbacks_make_them_are_copied_ahead_too(tmp_path: Path) -> None:
    system, _, model, opt = _open(tmp_path)
    expected: dict[int, dict[str, Any]] = {}
    for step in range(1, 6):
        _train(model, opt)
        system.save(step * 100)  # what the Lightning and HF Trainer adapters call
        expected[step * 100] = _live(model, opt)
    system.flush()
    assert system._buffers.copied_ahead >= 3
    h = system.exp_hash
    assert h is not None
    system.close()
    for step, live in expected.items():
        assert _same(live, _saved(tmp_path, h, step)), f"step {step}"


class _Progress:
    """A stateful object whose state_dict() writes its count into a tensor it returns, in place."""

    def __init__(self, fail: bool = False) -> None:
        self.seen = 0
        self.fail = fail
        self._t = torch.zeros(1 << 18)  # 1 MiB: staged with the rest, in the batch

    def state_dict(self) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("transient failure")
        self._t.fill_(self.seen)
        return {"seen": self._t}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.seen = int(sd["seen"][0])


def _seen(root: Path, h: str, steps: range) -> dict[int, float]:
    manager = CheckpointManager(root, mode="r")
    return {s: float(manager.load(h, s)["extra"]["progress"]["seen"][0]) for s in steps}


def test_a_tensor_a_state_dict_writes_in_place_is_copied_after_it_ran(tmp_path: Path) -> None:
    system, ledger, model, opt = _open(tmp_path)
    progress = _Progress()
    ledger.register_stateful("progress", progress)
    for step in range(1, 7):
        _train(model, opt)
        progress.seen = step * 10
        system.checkpoint_on_step(step)
    system.flush()
    # an object that runs its own state_dict() is registered: nothing is copied before the reads
    assert system._buffers.copied_ahead == 0
    h = system.exp_hash
    assert h is not None
    system.close()
    assert _seen(tmp_path, h, range(1, 7)) == {s: s * 10.0 for s in range(1, 7)}


def test_a_save_that_fails_to_read_the_state_leaves_no_copy_for_the_next(tmp_path: Path) -> None:
    system, ledger, model, opt = _open(tmp_path)
    flaky = _Progress()
    ledger.register_stateful("progress", flaky)
    for step in range(1, 4):
        _train(model, opt)
        system.checkpoint_on_step(step)
    flaky.fail = True
    _train(model, opt)
    with pytest.warns(UserWarning, match="transient failure"):
        system.checkpoint_on_step(4)  # reported (on_error="warn"); training goes on
        system.flush()
    flaky.fail = False
    _train(model, opt)
    system.checkpoint_on_step(5)
    expected = _live(model, opt)
    h = _done(system)
    assert _same(expected, _saved(tmp_path, h, 5))


class _Head(torch.nn.Module):
    """Saves only its head: a state_dict override that takes no keep_vars."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(256, 256)
        self.head = torch.nn.Linear(256, 1024)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {k: v for k, v in super().state_dict().items() if k.startswith("head.")}


def test_a_state_dict_override_without_keep_vars_saves_what_it_returns(tmp_path: Path) -> None:
    ledger = Ledger()
    model = _Head()
    ledger.register_model("model", model)
    ledger.register_hyperparams("config", {"lr": 1e-3})
    system = AutomaticCheckpointSystem(root_log_dir=tmp_path, checkpoint_frequency=1, ledger=ledger)
    for step in range(1, 4):
        with torch.no_grad():
            model.head.weight.add_(1.0)
        system.checkpoint_on_step(step)
    h = _done(system)
    saved = CheckpointManager(tmp_path, mode="r").load(h, 3)["models"]["model"]
    assert set(saved) == {"head.weight", "head.bias"}
    assert torch.equal(saved["head.weight"], model.head.weight.detach())


def test_a_module_state_dict_hook_that_writes_a_buffer_is_seen_by_the_save(tmp_path: Path) -> None:
    system, ledger, model, opt = _open(tmp_path)
    model[0].register_buffer("calls", torch.zeros(1 << 18))

    def count(module: torch.nn.Module, prefix: str, keep_vars: bool) -> None:
        module.calls.add_(1)

    model[0].register_state_dict_pre_hook(count)
    for step in range(1, 6):
        system.checkpoint_on_step(step)
    h = _done(system)
    manager = CheckpointManager(tmp_path, mode="r")
    for step in range(1, 6):
        assert float(manager.load(h, step)["models"]["model"]["0.calls"][0]) == step


def test_a_parameter_swapped_without_a_hook_is_the_one_a_freeze_is_seen_on(tmp_path: Path) -> None:
    system, _, model, opt = _started(tmp_path, range(1, 4))
    # what accelerate and torch's functional accessors do: no registration hook fires
    model[0]._parameters["weight"] = torch.nn.Parameter(model[0].weight.detach().clone())
    system.checkpoint_on_step(4)
    model[0].weight.requires_grad_(False)
    system.checkpoint_on_step(5)
    h = _done(system)
    manager = CheckpointManager(tmp_path, mode="r")
    assert manager.load(h, 5)["frozen"] == {"model": ["0.weight"]}
    assert manager.load(h, 5)["trigger"] == "freeze"


def test_a_transient_snapshot_is_not_held_once_finished() -> None:
    state = {"a": torch.ones(1 << 20), "b": torch.ones(1 << 20)}
    bufs = SnapshotBuffers(max_staging_bytes=0)  # over the bound: nothing kept between saves
    staged = bufs.begin(state, background=True)
    out, _ = staged.finish()
    assert torch.equal(out["a"], state["a"])
    ref = weakref.ref(out["a"])
    del staged, out
    gc.collect()
    assert ref() is None and bufs.kept_bytes == 0
    bufs.close()


def _stage_in_child(bufs: SnapshotBuffers, state: dict[str, torch.Tensor], done: Any) -> None:
    torch.set_num_threads(1)  # as DataLoader workers do: the parent's OpenMP pool is not in a child
    out, _ = bufs.begin(state, background=True).finish()
    done.put(torch.equal(out["a"], state["a"]))


def test_a_forked_child_stages_with_a_copier_of_its_own() -> None:
    state = {"a": torch.arange(1 << 19, dtype=torch.float32), "b": torch.ones(1 << 19)}
    bufs = SnapshotBuffers(max_staging_bytes=None)
    bufs.begin(state, background=True).finish()  # the parent's copier thread exists now
    ctx = multiprocessing.get_context("fork")
    done = ctx.Queue()
    child = ctx.Process(target=_stage_in_child, args=(bufs, state, done))
    child.start()
    assert done.get(timeout=300) is True  # a child that waited on the parent's thread would hang
    child.join()
    assert child.exitcode == 0
    bufs.close()


def test_a_hook_added_after_saves_were_copied_ahead_is_seen_by_the_next(tmp_path: Path) -> None:
    system, _, model, opt = _started(tmp_path)
    model[0].register_buffer("calls", torch.zeros(1 << 18))
    system.checkpoint_on_step(4)  # a new layout, copied after the reads
    system.checkpoint_on_step(5)  # copied ahead

    def count(module: torch.nn.Module, prefix: str, keep_vars: bool) -> None:
        module.calls.add_(1)

    model[0].register_state_dict_pre_hook(count)  # from now on the state_dict writes
    for step in range(6, 9):
        system.checkpoint_on_step(step)
    h = _done(system)
    manager = CheckpointManager(tmp_path, mode="r")
    got = {s: float(manager.load(h, s)["models"]["model"]["0.calls"][0]) for s in range(6, 9)}
    assert got == {6: 1.0, 7: 2.0, 8: 3.0}


class _Ema:
    """A stateful object whose state_dict() folds pending updates into a registered model."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.pending = 0.0

    def state_dict(self) -> dict[str, Any]:
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(self.pending)
        self.pending = 0.0
        return {}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        pass


def test_a_model_another_objects_state_dict_writes_into_is_copied_after_it(tmp_path: Path) -> None:
    system, ledger, model, opt = _started(tmp_path)
    ema = _Ema(model)
    ledger.register_stateful("ema", ema)
    expected: dict[int, float] = {}
    for step in range(4, 8):
        ema.pending = 1.0
        system.checkpoint_on_step(step)
        expected[step] = float(model[0].bias[0])  # what the save had to see, after the fold
    h = _done(system)
    manager = CheckpointManager(tmp_path, mode="r")
    got = {s: float(manager.load(h, s)["models"]["model"]["0.bias"][0]) for s in range(4, 8)}
    assert got == expected


def test_a_state_dict_replaced_on_the_instance_is_called_as_it_is(tmp_path: Path) -> None:
    ledger = Ledger()
    model = _model()
    plain = model.state_dict
    model.state_dict = lambda: {k: v for k, v in plain().items() if k.startswith("3.")}  # type: ignore[method-assign,assignment]
    ledger.register_model("model", model)
    ledger.register_hyperparams("config", {"lr": 1e-3})
    system = AutomaticCheckpointSystem(root_log_dir=tmp_path, checkpoint_frequency=1, ledger=ledger)
    for step in range(1, 4):
        system.checkpoint_on_step(step)
    h = _done(system)
    saved = CheckpointManager(tmp_path, mode="r").load(h, 3)["models"]["model"]
    assert set(saved) == {"3.weight", "3.bias"}


class _Broken(Mapping[str, Any]):
    """A state tree whose items() fails."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("this tree cannot be read")

    def __len__(self) -> int:
        return 1


def test_a_snapshot_that_fails_after_taking_the_copy_made_ahead_waits_for_it() -> None:
    src = {"a": torch.randn(1 << 24), "b": torch.randn(1 << 10)}  # 64 MiB: the copy takes a while
    bufs = SnapshotBuffers()
    bufs.begin({"models": src}, background=True, ahead_keys=("models",)).finish()
    assert bufs.copy_ahead()
    job = bufs._ahead[1] if bufs._ahead is not None else None
    with pytest.raises(RuntimeError, match="cannot be read"):
        bufs.begin({"models": src, "extra": _Broken()}, background=True, ahead_keys=("models",))
    assert job is not None and job.done()  # no copy reads the sources once begin has raised
    bufs.close()


def _counting_save(module: torch.nn.Module, destination: Any, prefix: str, keep_vars: bool) -> None:
    """A ``_save_to_state_dict`` that bumps the module's ``calls`` buffer first (folds updates in)."""
    module.calls.add_(1)
    torch.nn.Module._save_to_state_dict(module, destination, prefix, keep_vars)


def _calls_saved(root: Path, h: str, key: str, steps: range) -> dict[int, float]:
    manager = CheckpointManager(root, mode="r")
    return {s: float(manager.load(h, s)["models"]["model"][key][0]) for s in steps}


def test_a_save_to_state_dict_replaced_on_an_instance_runs_before_the_copy(tmp_path: Path) -> None:
    system, _, model, opt = _started(tmp_path)
    model[0].register_buffer("calls", torch.zeros(1 << 18))
    model[0]._save_to_state_dict = types.MethodType(_counting_save, model[0])  # type: ignore[method-assign]
    expected: dict[int, float] = {}
    for step in range(4, 10):
        _train(model, opt)
        system.checkpoint_on_step(step)
        expected[step] = float(model[0].calls[0])  # what the save's own state_dict() left
    h = _done(system)
    assert _calls_saved(tmp_path, h, "0.calls", range(4, 10)) == expected


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(1 << 18))
        self.lin = torch.nn.Linear(256, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def test_a_class_patched_between_saves_is_seen_by_the_next(tmp_path: Path) -> None:
    model = torch.nn.Sequential(_Block(), *[torch.nn.Linear(256, 256) for _ in range(3)])
    system, _, model, opt = _open(tmp_path, model)
    for step in range(1, 4):
        _train(model, opt)
        system.checkpoint_on_step(step)
    _Block._save_to_state_dict = _counting_save  # type: ignore[method-assign,assignment]
    try:
        expected: dict[int, float] = {}
        for step in range(4, 10):
            _train(model, opt)
            system.checkpoint_on_step(step)
            expected[step] = float(model[0].calls[0])
        h = _done(system)
    finally:
        del _Block._save_to_state_dict
    assert _calls_saved(tmp_path, h, "0.calls", range(4, 10)) == expected


class _Warmup(torch.optim.lr_scheduler.LRScheduler):
    """A scheduler of the user's whose state_dict() writes into a registered model."""

    def __init__(self, opt: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        self.model = model
        super().__init__(opt)

    def get_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        self.model[0].calls.add_(1)
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_epoch = state_dict["last_epoch"]


def test_a_scheduler_of_the_users_inside_a_chained_scheduler_runs_before_the_copy(tmp_path: Path) -> None:
    system, ledger, model, opt = _open(tmp_path)
    model[0].register_buffer("calls", torch.zeros(1 << 18))
    chained = torch.optim.lr_scheduler.ChainedScheduler(
        [torch.optim.lr_scheduler.StepLR(opt, 10), _Warmup(opt, model)]
    )
    ledger.register_scheduler("sched", chained)
    expected: dict[int, float] = {}
    for step in range(1, 9):
        _train(model, opt)
        chained.step()
        system.checkpoint_on_step(step)
        expected[step] = float(model[0].calls[0])
    assert system._buffers.copied_ahead == 0
    h = _done(system)
    assert _calls_saved(tmp_path, h, "0.calls", range(1, 9)) == expected


def test_torchs_own_schedulers_keep_the_copy_made_ahead(tmp_path: Path) -> None:
    system, ledger, model, opt = _open(tmp_path)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=3)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt, [warm, torch.optim.lr_scheduler.StepLR(opt, 10)], milestones=[3]
    )
    ledger.register_scheduler("sched", sched)
    for step in range(1, 7):
        _train(model, opt)
        sched.step()
        system.checkpoint_on_step(step)
        live = _live(model, opt)
    assert system._buffers.copied_ahead > 0
    h = _done(system)
    assert _same(live, _saved(tmp_path, h, 6))


def test_a_finished_copy_holds_no_slot_even_when_it_failed() -> None:
    bufs = SnapshotBuffers()
    for fits in (True, False):
        slot = torch.empty(1 << 18)
        gone = weakref.ref(slot)
        source = torch.ones(1 << 18 if fits else 7)  # a size that does not fit: the copy raises
        job = bufs._start([slot], [source])
        assert (job.exception() is None) is fits  # waits for the copy
        del slot
        gc.collect()
        # the future (and a failure's traceback in it) is still held here, the slot is not
        assert gone() is None, fits
    bufs.close()
