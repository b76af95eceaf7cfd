"""Snapshot staging: one flat arena per snapshot, exact-size storages, and the max_staging_bytes bound."""

from __future__ import annotations

import gc
import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
import torch

from weightslab.components import AutomaticCheckpointSystem
from weightslab.errors import CheckpointSaveError
from weightslab.format.stepfile import save_state
from weightslab.registry.ledger import Ledger
from weightslab.system.snapshot import SnapshotBuffers
from weightslab.system.staging import StagingArena

from .conftest import mlp, train_step


def mixed_state() -> dict[str, Any]:
    """Tensors of every common kind a state dict holds, each with a storage of its own."""
    torch.manual_seed(0)
    return {
        "model": {
            "w": torch.randn(33, 7),
            "half": torch.randn(5, 3).to(torch.bfloat16),
            "ids": torch.arange(11),
            "mask": torch.rand(9) > 0.5,
            "z": torch.randn(4, dtype=torch.complex64),
            "scalar": torch.tensor(3.5),
            "empty": torch.empty(0, 4),
        },
        "optim": {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(33, 7)}}, "lr": 0.1},
        "nested": [torch.ones(2, 2), (1, "a", torch.zeros(3, dtype=torch.int16)), None],
    }


def tensors_of(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in tensors_of(v)]
    if isinstance(tree, (list, tuple)):
        return [t for v in tree for t in tensors_of(v)]
    return []


def file_bytes(obj: Any) -> bytes:
    out = io.BytesIO()
    save_state(obj, out)  # type: ignore[arg-type]
    return out.getvalue()


def test_staged_tensors_are_exact_size_storages_of_one_arena() -> None:
    state = mixed_state()
    bufs = SnapshotBuffers()
    staged, event = bufs.stage(state)
    assert event is None
    live, copies = tensors_of(state), tensors_of(staged)
    assert len(live) == len(copies) == 11
    for src, dst in zip(live, copies, strict=True):
        assert torch.equal(src, dst) and dst.dtype == src.dtype and dst.shape == src.shape
        assert dst.data_ptr() != src.data_ptr() or src.numel() == 0
        # torch.save writes a tensor's whole storage: each copy's storage holds exactly its bytes
        assert dst.untyped_storage().nbytes() == src.numel() * src.element_size()
    nonempty = sorted(t.data_ptr() for t in copies if t.numel())
    assert nonempty[-1] - nonempty[0] < bufs.staged_bytes  # all inside one allocation
    assert staged["optim"]["lr"] == 0.1 and staged["nested"][1][:2] == (1, "a")


def test_staged_file_is_byte_identical_to_the_live_state() -> None:
    state = mixed_state()
    staged, _ = SnapshotBuffers().stage(state)
    live = file_bytes(state)
    assert file_bytes(staged) == live  # the same records: the arena adds no byte to the file
    loaded = torch.load(io.BytesIO(live), weights_only=True)
    assert torch.equal(loaded["model"]["half"], state["model"]["half"])


def test_a_snapshot_never_changes_when_its_sources_do() -> None:
    state = mixed_state()
    bufs = SnapshotBuffers()
    staged, _ = bufs.stage(state)
    expected = [t.clone() for t in tensors_of(staged)]
    for t in tensors_of(state):
        if t.numel() and t.dtype != torch.bool:
            t.add_(1)
    for got, want in zip(tensors_of(staged), expected, strict=True):
        assert torch.equal(got, want)


def test_the_arena_is_reused_while_the_layout_stays_and_rebuilt_when_it_changes() -> None:
    state = mixed_state()
    bufs = SnapshotBuffers()
    first = tensors_of(bufs.stage(state)[0])
    state["model"]["w"].mul_(2)
    second = tensors_of(bufs.stage(state)[0])
    assert [t.data_ptr() for t in first] == [t.data_ptr() for t in second]
    assert torch.equal(second[0], state["model"]["w"])
    assert bufs.kept_bytes == bufs.staged_bytes > 0
    # a tensor added in the middle and one pruned: a new arena, and the earlier snapshot keeps its values
    kept_copy = second[0].clone()
    state["model"]["extra"] = torch.randn(6)
    state["model"]["w"] = torch.randn(30, 7)
    third = bufs.stage(state)[0]
    assert torch.equal(third["model"]["extra"], state["model"]["extra"])
    assert torch.equal(third["model"]["w"], state["model"]["w"])
    assert torch.equal(second[0], kept_copy)


def test_thousands_of_small_tensors_stage_in_one_pass_and_save_identically() -> None:
    torch.manual_seed(1)
    model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(600)])
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    bufs, live = SnapshotBuffers(), SnapshotBuffers(copy_cpu=False)  # async and sync staging
    staged, _ = bufs.stage(state)
    assert len(tensors_of(staged)) == 4800
    assert file_bytes(staged) == file_bytes(live.stage(state)[0])
    opt.step()  # training moves on, and so does the next snapshot
    assert file_bytes(bufs.stage(state)[0]) == file_bytes(live.stage(state)[0])


def test_over_the_bound_nothing_is_kept_between_saves() -> None:
    state = mixed_state()
    bufs = SnapshotBuffers(max_staging_bytes=64)
    staged, _ = bufs.stage(state)
    assert bufs.kept_bytes == 0 and bufs.staged_bytes > 64
    assert file_bytes(staged) == file_bytes(state)
    again, _ = bufs.stage(state)  # a fresh arena from the remembered layout, equally correct
    assert file_bytes(again) == file_bytes(state) and bufs.kept_bytes == 0
    unbounded = SnapshotBuffers(max_staging_bytes=None)
    unbounded.stage(state)
    assert unbounded.kept_bytes == unbounded.staged_bytes


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
@pytest.mark.parametrize("bound", [0, None])
def test_transient_staging_memory_returns_to_the_system_after_the_snapshot(bound: int | None) -> None:
    size = 64 << 20
    state = {"a": torch.ones(size // 8), "b": torch.ones(size // 8)}  # 2 x 32 MiB, touched
    bufs = SnapshotBuffers(max_staging_bytes=bound)
    gc.collect()
    before = _rss()
    staged, _ = bufs.stage(state)
    assert _rss() - before > size * 0.9  # the copy is resident while the snapshot lives
    del staged
    gc.collect()
    grown = _rss() - before
    if bound is None:
        assert grown > size * 0.9  # kept for the next save
    else:
        assert grown < size * 0.25  # unmapped with the snapshot


def test_sources_that_require_grad_are_copied_out_of_the_graph() -> None:
    p = torch.nn.Parameter(torch.randn(4, 4))
    staged, _ = SnapshotBuffers().stage({"extra": {"p": p, "view": p.detach()[1:]}})
    assert type(staged["extra"]["p"]) is torch.Tensor
    assert not staged["extra"]["p"].requires_grad and staged["extra"]["p"].grad_fn is None
    assert torch.equal(staged["extra"]["p"], p.detach())
    assert torch.equal(staged["extra"]["view"], p.detach()[1:])
    assert staged["extra"]["view"].untyped_storage().nbytes() == 3 * 4 * 4  # not the whole parent


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_rare_layouts_get_copies_of_their_own() -> None:
    sparse = torch.eye(3).to_sparse()
    q = torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)
    meta = torch.empty(2, 2, device="meta")
    staged, _ = SnapshotBuffers().stage({"s": sparse, "q": q, "m": meta, "d": torch.randn(2)})
    assert torch.equal(staged["s"].to_dense(), torch.eye(3)) and staged["s"] is not sparse
    assert torch.equal(staged["q"].int_repr(), q.int_repr()) and staged["q"] is not q
    assert staged["m"] is meta
    sparse.mul_(0)  # the copy does not follow
    assert torch.equal(staged["s"].to_dense(), torch.eye(3))


def test_synchronous_mode_passes_live_cpu_tensors_through() -> None:
    state = mixed_state()
    bufs = SnapshotBuffers(copy_cpu=False)
    staged, _ = bufs.stage(state)
    assert staged["model"]["w"].data_ptr() == state["model"]["w"].data_ptr()
    assert bufs.staged_bytes == 0 and bufs.kept_bytes == 0


def test_an_unreadable_leaf_is_refused_naming_its_path() -> None:
    with pytest.raises(CheckpointSaveError, match=r"optimizers\.sgd\.hook is a object"):
        SnapshotBuffers().stage({"optimizers": {"sgd": {"w": torch.ones(2), "hook": object()}}})


def test_arena_slots_are_aligned_and_do_not_overlap() -> None:
    specs = [(torch.Size([3]), torch.float32), (torch.Size([0]), torch.int64), (torch.Size([5]), torch.uint8)]
    specs += [(torch.Size([2, 2]), torch.float64)]
    arena = StagingArena(specs)
    ptrs = [t.data_ptr() for t in arena.tensors if t.numel()]
    assert all(p % 64 == 0 for p in ptrs) and len(set(ptrs)) == 3
    assert arena.nbytes == 3 * 64 and [t.shape for t in arena.tensors] == [s for s, _ in specs]


def _hashes(tmp_path: Path, name: str, **options: Any) -> dict[str, str]:
    torch.manual_seed(0)
    ledger = Ledger()
    system = AutomaticCheckpointSystem(
        root_log_dir=tmp_path / name,
        checkpoint_frequency=3,
        ledger=ledger,
        clock=lambda: 1_700_000_000.0,
        **options,
    )
    model = mlp((16, 32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_hyperparams("config", {"lr": 1e-2})
    for step in range(1, 10):
        train_step(model, opt, 16)
        system.checkpoint_on_step(step)
        if options.get("async_save", True):
            assert system._buffers.kept_bytes == (
                0 if options.get("max_staging_bytes") == 0 else system._buffers.staged_bytes
            )
    system.close()
    files = sorted((tmp_path / name / "checkpoints").rglob("*_step_*.pt"))
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_every_bound_writes_the_files_a_synchronous_save_writes(tmp_path: Path) -> None:
    sync = _hashes(tmp_path, "sync", async_save=False)
    assert len(sync) == 3
    assert _hashes(tmp_path, "kept", max_staging_bytes=None) == sync
    assert _hashes(tmp_path, "transient", max_staging_bytes=0) == sync
    assert _hashes(tmp_path, "default") == sync


def test_a_transient_snapshot_is_consistent_while_training_mutates_in_place(tmp_path: Path) -> None:
    ledger = Ledger()
    system = AutomaticCheckpointSystem(
        root_log_dir=tmp_path / "r", checkpoint_frequency=5, ledger=ledger, max_staging_bytes=0
    )
    model = mlp((32, 64, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    train_step(model, opt, 32)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    system.checkpoint_on_step(5)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-3.0).add_(7.0)
    system.flush()
    saved = system.manager.load(system.exp_hash, 5)
    for k, v in expected.items():
        assert torch.equal(saved["models"]["model"][k], v), k
    assert system._buffers.kept_bytes == 0
    system.close()


@pytest.mark.parametrize(
    "replacement",
    [
        torch.zeros(33, 7, dtype=torch.float64),  # same shape, another dtype
        torch.zeros(7, 33),  # same bytes, another shape
        torch.nn.Parameter(torch.zeros(33, 7)),  # a subclass
        torch.zeros(33, 7).to_sparse(),  # another layout
        torch.empty(33, 7, device="meta"),  # another device
    ],
    ids=["dtype", "shape", "subclass", "sparse", "meta"],
)
def test_a_changed_tensor_leaves_the_fast_pass_and_is_staged_right(replacement: torch.Tensor) -> None:
    state = mixed_state()
    bufs = SnapshotBuffers()
    bufs.stage(state)
    bufs.stage(state)  # the steady state: the fast pass
    state["model"]["w"] = replacement
    staged, _ = bufs.stage(state)
    got = staged["model"]["w"]
    assert got.dtype == replacement.dtype and got.shape == replacement.shape
    assert got.layout == replacement.layout and got.device == replacement.device
    if replacement.device.type != "meta":
        assert torch.equal(got.to_dense(), replacement.detach().to_dense())
        assert got is not replacement
    assert torch.equal(staged["optim"]["state"][0]["exp_avg"], state["optim"]["state"][0]["exp_avg"])
    again, _ = bufs.stage(state)  # and the layout after the change is staged as well
    assert again["model"]["w"].shape == replacement.shape
