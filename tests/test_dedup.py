"""storage="dedup": unchanged tensors are written once, referenced by digest, read back transparently."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from weightslab.analysis.local import analyze_local_checkpoint, list_local_checkpoints
from weightslab.errors import CheckpointCorruptedError, CheckpointFormatError, ConfigError
from weightslab.format.blobs import INLINE_LIMIT, REF_KEY, iter_records, referenced_digests
from weightslab.format.stepfile import load_step_file, load_torch_file
from weightslab.inspect.backup import backup_root
from weightslab.inspect.export import export_checkpoint
from weightslab.inspect.gc import run_gc
from weightslab.registry.ledger import Ledger
from weightslab.storage.base import TMP_MARKER
from weightslab.store.manager import CheckpointManager
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig

FROZEN = 3  # frozen 256x256 layers: 256 KiB of float32 each


def frozen_model(seed: int = 0) -> torch.nn.Sequential:
    """Three frozen 256x256 layers and a trainable 256x64 head (its weight is exactly 64 KiB)."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = [torch.nn.Linear(256, 256) for _ in range(FROZEN)]
    for layer in layers:
        layer.requires_grad_(False)
    return torch.nn.Sequential(*layers, torch.nn.Linear(256, 64))


def setup(
    ledger: Ledger, seed: int = 0, lr: float = 1e-2
) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict[str, Any]]:
    model = frozen_model(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    cfg = {"lr": lr}
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_hyperparams("config", cfg)
    return model, opt, cfg


def train(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    loss = model(torch.randn(8, 256)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def blob_files(root: Path) -> dict[str, int]:
    """Every stored blob: file name -> bytes on disk."""
    return {p.name: p.stat().st_size for p in (root / "blobs").rglob("*") if p.is_file()}


def committed_refs(root: Path) -> set[str]:
    """The digests every committed checkpoint of every experiment of ``root`` references."""
    reader = CheckpointManager(root, mode="r")
    refs: set[str] = set()
    for h in reader.experiments():
        for entry in reader.manifest(h).checkpoints:
            data = load_torch_file(reader.experiment(h).resolve(entry.file), what="step file")
            refs |= set(referenced_digests(data))
    return refs


def open_system(ledger: Ledger, **options: Any) -> AutomaticCheckpointSystem:
    return AutomaticCheckpointSystem(CheckpointConfig(**options), ledger=ledger)


HEAD_BYTES = 256 * 64 * 4  # the trainable head's weight; its bias (256 B) stays inline


def test_frozen_layers_are_written_once(
    make_system: Callable[..., AutomaticCheckpointSystem], ledger: Ledger
) -> None:
    system = make_system(storage="dedup", checkpoint_frequency=1, async_save=False, keep_last=10)
    model, opt, _ = setup(ledger)
    root = system.manager.root
    sizes = []
    for step in range(1, 5):
        train(model, opt)
        system.checkpoint_on_step(step)
        sizes.append(sum(blob_files(root).values()))
    frozen_bytes = FROZEN * 256 * 256 * 4  # the frozen biases are 1 KiB: inline
    # first save: frozen weights + head weight + AdamW's exp_avg and exp_avg_sq of the head weight
    assert sizes[0] == frozen_bytes + 3 * HEAD_BYTES
    # each later save writes only what changed: the head and its two moment tensors
    assert [b - a for a, b in itertools.pairwise(sizes)] == [3 * HEAD_BYTES] * 3
    step_file = system.manager.experiment(system.exp_hash).step_file(4)
    assert step_file.stat().st_size < INLINE_LIMIT  # the step file holds references, not tensors
    raw = torch.load(step_file, weights_only=True)  # still a plain weights_only torch file
    assert sum(1 for _ in iter_records(raw)) == FROZEN + 3
    last = system.manager.blobs.last_save
    assert (last.blobs_written, last.blobs_reused) == (3, FROZEN)


def test_resume_is_exact_bit_for_bit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ledger = Ledger()
    system = open_system(ledger, root_log_dir=root, storage="dedup", checkpoint_frequency=2, async_save=True)
    model, opt, _ = setup(ledger)
    for step in range(1, 7):
        train(model, opt)
        system.checkpoint_on_step(step)
    system.close()
    expected_model = {k: v.clone() for k, v in model.state_dict().items()}
    expected_opt = opt.state_dict()

    ledger2 = Ledger()
    system2 = open_system(ledger2, root_log_dir=root, storage="dedup", checkpoint_frequency=2)
    model2, opt2, _ = setup(ledger2, seed=1)  # other initial weights: resume must overwrite them all
    assert system2.resume() == 7
    for k, v in model2.state_dict().items():
        assert torch.equal(v, expected_model[k]), k
    got = opt2.state_dict()
    for pid, state in expected_opt["state"].items():
        for name, value in state.items():
            assert torch.equal(got["state"][pid][name], value), (pid, name)
    system2.close()


def test_verify_detects_a_corrupted_and_a_missing_blob(
    make_system: Callable[..., AutomaticCheckpointSystem], ledger: Ledger
) -> None:
    system = make_system(storage="dedup", checkpoint_frequency=1, async_save=False)
    model, opt, _ = setup(ledger)
    train(model, opt)
    system.checkpoint_on_step(1)
    root, h = system.manager.root, system.exp_hash
    system.close()
    reader = CheckpointManager(root, mode="r")
    assert reader.verify().healthy
    frozen = model[0].weight
    digest = next(
        r["digest"]
        for r in iter_records(torch.load(reader.experiment(h).step_file(1), weights_only=True))
        if r["shape"] == list(frozen.shape)
    )
    blob = root / "blobs" / digest[:2] / digest
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    report = reader.verify()
    assert [(p.kind, p.path, p.step) for p in report.problems] == [("corrupt", str(blob), 1)]
    assert "checksum mismatch" in report.problems[0].detail
    with pytest.raises(CheckpointCorruptedError, match=digest):
        reader.load(h, 1)  # a verified load checks the blobs too
    blob.unlink()
    report = reader.verify()
    assert [(p.kind, p.path) for p in report.problems] == [("missing", str(blob))]
    with pytest.raises(CheckpointCorruptedError, match="is gone"):
        reader.load(h, 1, verify=False)


def test_retention_and_gc_never_delete_a_referenced_blob_across_a_branch(
    make_system: Callable[..., AutomaticCheckpointSystem], ledger: Ledger
) -> None:
    system = make_system(storage="dedup", checkpoint_frequency=1, async_save=False, keep_last=2)
    model, opt, cfg = setup(ledger)
    root = system.manager.root
    for step in range(1, 5):
        train(model, opt)
        system.checkpoint_on_step(step)
    parent = system.exp_hash
    before_branch = sum(blob_files(root).values())
    # an lr-only branch: the frozen weights are shared with the parent, only what changed is written
    cfg["lr"] = 5e-3
    for group in opt.param_groups:
        group["lr"] = 5e-3
    train(model, opt)
    system.checkpoint_on_step(5)
    child = system.exp_hash
    assert child != parent
    assert system.manager.blobs.last_save.blobs_written == 3  # the head and its two AdamW moments
    assert sum(blob_files(root).values()) - before_branch == 3 * HEAD_BYTES
    for step in range(6, 10):
        train(model, opt)
        system.checkpoint_on_step(step)
    manager = system.manager
    assert manager.manifest(child).steps() == [8, 9]
    assert 4 in manager.manifest(parent).steps()  # the branch point is kept
    # every referenced blob is there, and nothing else is: retention collected the unreferenced ones
    refs = committed_refs(root)
    assert set(blob_files(root)) == refs
    frozen_refs = {
        r["digest"]
        for r in iter_records(torch.load(manager.experiment(child).step_file(9), weights_only=True))
        if r["shape"] == [256, 256]
    }
    assert len(frozen_refs) == FROZEN and frozen_refs <= set(blob_files(root))
    system.close()
    # gc: applies the recorded policies again (nothing to drop) and keeps every referenced blob
    result = run_gc(root)
    assert [i for i in result.items if i.kind == "blob"] == []
    assert set(blob_files(root)) == refs
    assert CheckpointManager(root, mode="r").verify().healthy


def test_orphan_blobs_are_collected_by_gc(
    make_system: Callable[..., AutomaticCheckpointSystem], ledger: Ledger
) -> None:
    system = make_system(storage="dedup", checkpoint_frequency=1, async_save=False)
    model, opt, _ = setup(ledger)
    train(model, opt)
    system.checkpoint_on_step(1)
    root = system.manager.root
    system.close()
    orphan = torch.randn(64, 256)
    with CheckpointManager(root, storage_mode="dedup") as writer:
        # a save that never committed: its blobs are written, its step file never is
        _, digests = writer.blobs.externalize({"models": {"m": {"w": orphan}}})
        writer.blobs.abandoned(digests)
    assert digests[0] in blob_files(root)
    dry = run_gc(root, dry_run=True)
    assert [(i.kind, Path(i.path).name) for i in dry.items] == [("blob", digests[0])]
    assert digests[0] in blob_files(root)  # a dry run touches nothing
    # a blob write a crash interrupted leaves its temp file: gc removes it too
    torn = root / "blobs" / digests[0][:2] / f"{digests[0]}{TMP_MARKER}123"
    torn.write_bytes(b"torn")
    result = run_gc(root)
    assert sorted((i.kind, Path(i.path).name, i.bytes) for i in result.items) == [
        ("blob", digests[0], orphan.nbytes),
        ("blob", torn.name, 4),
    ]
    assert set(blob_files(root)) == committed_refs(root)
    assert CheckpointManager(root, mode="r").verify().healthy


def test_export_is_standalone_and_analysis_reads_it(
    make_system: Callable[..., AutomaticCheckpointSystem], ledger: Ledger, tmp_path: Path
) -> None:
    system = make_system(storage="dedup", checkpoint_frequency=1, async_save=False)
    model, opt, _ = setup(ledger)
    train(model, opt)
    system.checkpoint_on_step(1)
    root, h = system.manager.root, system.exp_hash
    system.close()
    reader = CheckpointManager(root, mode="r")
    export_checkpoint(reader, h, tmp_path / "out", fmt="pt")
    exported = tmp_path / "out" / "checkpoint.pt"
    assert exported.stat().st_size > FROZEN * 256 * 256 * 4  # every tensor inline
    moved = tmp_path / "elsewhere.pt"
    exported.rename(moved)  # standalone: nothing of the root is needed
    data = torch.load(moved, weights_only=True)
    assert "blobs" not in data and not list(iter_records(data))
    for k, v in model.state_dict().items():
        assert torch.equal(data["models"]["model"][k], v), k
    export_checkpoint(reader, h, tmp_path / "st", fmt="safetensors")
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "st" / "model.safetensors")
    assert torch.equal(weights["0.weight"], model[0].weight)

    checkpoint = list_local_checkpoints(root).checkpoints[0]
    analysis = analyze_local_checkpoint(checkpoint, include_weights=True)
    assert analysis.errors == ()
    assert analysis.components.weights.total_parameters == sum(p.numel() for p in model.parameters())
    assert analysis.components.optimizer.available


def test_files_mode_stays_the_default_and_mixed_roots_collect(
    make_system: Callable[..., AutomaticCheckpointSystem], ledger: Ledger, tmp_path: Path
) -> None:
    system = make_system(storage="dedup", checkpoint_frequency=1, async_save=False, keep_last=1)
    model, opt, _ = setup(ledger)
    train(model, opt)
    system.checkpoint_on_step(1)
    root = system.manager.root
    system.close()
    assert blob_files(root)
    # the same root reopened with the default storage="files": new step files are self-contained,
    # and retention collects the blobs only the dropped dedup checkpoint referenced
    ledger2 = Ledger()
    system2 = open_system(ledger2, root_log_dir=root, checkpoint_frequency=1, keep_last=1, async_save=False)
    assert system2.config.storage == "files"
    model2, opt2, _ = setup(ledger2)
    assert system2.resume() == 2
    train(model2, opt2)
    system2.checkpoint_on_step(2)
    assert blob_files(root) == {}
    data = torch.load(system2.manager.experiment(system2.exp_hash).step_file(2), weights_only=True)
    assert "blobs" not in data
    system2.close()


def test_a_malformed_reference_is_refused_naming_the_field(
    make_system: Callable[..., AutomaticCheckpointSystem], ledger: Ledger
) -> None:
    system = make_system(storage="dedup", checkpoint_frequency=1, async_save=False)
    model, opt, _ = setup(ledger)
    train(model, opt)
    system.checkpoint_on_step(1)
    path = system.manager.experiment(system.exp_hash).step_file(1)
    system.close()
    data = torch.load(path, weights_only=True)
    record = next(iter_records(data))
    record["digest"] = "../../../etc/passwd"
    torch.save(data, path)
    with pytest.raises(
        CheckpointFormatError, match=r"digest '\.\./\.\./\.\./etc/passwd' is not 32 lowercase hex"
    ):
        load_step_file(path)
    record["digest"], record["dtype"] = "0" * 32, "object"
    torch.save(data, path)
    with pytest.raises(CheckpointFormatError, match="dtype 'object'"):
        load_step_file(path)
    assert REF_KEY in record


def test_bad_modes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="storage must be 'files' or 'dedup', got 'blobs'"):
        CheckpointManager(tmp_path / "r", storage_mode="blobs")
    with pytest.raises(ConfigError, match="needs storage='dedup'"):
        CheckpointManager(tmp_path / "r", compression="zstd")


def test_compressed_blobs_round_trip(
    make_system: Callable[..., AutomaticCheckpointSystem], ledger: Ledger
) -> None:
    pytest.importorskip("weightslab.format.codec")
    system = make_system(storage="dedup", compression="zstd", checkpoint_frequency=1, async_save=False)
    model, opt, _ = setup(ledger)
    train(model, opt)
    system.checkpoint_on_step(1)
    root, h = system.manager.root, system.exp_hash
    system.close()
    names = blob_files(root)
    assert names and all(n.endswith(".zst") for n in names)
    reader = CheckpointManager(root, mode="r")
    assert reader.verify().healthy
    data = reader.load(h, 1)
    for k, v in model.state_dict().items():
        assert torch.equal(data["models"]["model"][k], v), k


def test_backup_copies_the_referenced_blobs(
    make_system: Callable[..., AutomaticCheckpointSystem], ledger: Ledger, tmp_path: Path
) -> None:
    system = make_system(storage="dedup", checkpoint_frequency=1, async_save=False)
    model, opt, _ = setup(ledger)
    for step in (1, 2):
        train(model, opt)
        system.checkpoint_on_step(step)
    root, h = system.manager.root, system.exp_hash
    system.close()
    dest = tmp_path / "backup"
    result = backup_root(CheckpointManager(root, mode="r"), dest, all_checkpoints=True)
    assert sorted(i.step for i in result.items if i.action == "copied") == [1, 2]
    assert set(blob_files(dest)) == committed_refs(dest) == committed_refs(root)
    copy = CheckpointManager(dest, mode="r")
    assert copy.verify().healthy
    data = copy.load(h, 2)
    for k, v in model.state_dict().items():
        assert torch.equal(data["models"]["model"][k], v), k


def test_equal_tensors_load_as_separate_tensors(tmp_path: Path) -> None:
    # two AdamW moments of equal shape start equal (zeros): one blob, but a restore updates each in
    # place, so each must come back as its own tensor
    manager = CheckpointManager(tmp_path / "root", storage_mode="dedup")
    h = "0123456789abcdef"
    manager.create_experiment(
        exp_hash=h,
        architecture_hash="a" * 16,
        hyperparams_hash="b" * 16,
        parent=None,
        retention={},
        hyperparams={},
        models={},
    )
    zeros = torch.zeros(128, 128)
    payload = {
        "format": "weightslab.checkpoint/1",
        "optimizers": {"o": {"state": {0: {"m": zeros}, 1: {"m": zeros.clone()}}}},
    }
    manager.save(h, 1, payload, trigger="step")
    assert manager.blobs.last_save.blobs_written == 1
    for mmap in (True, False):
        state = manager.load(h, 1, mmap=mmap)["optimizers"]["o"]["state"]
        a, b = state[0]["m"], state[1]["m"]
        a.add_(1.0)
        assert torch.equal(b, zeros) and torch.equal(a, zeros + 1)
    assert torch.equal(manager.load(h, 1)["optimizers"]["o"]["state"][0]["m"], zeros)  # the blob is untouched
    manager.close()
