"""Block digests: a step file over one block records the digest of each 64 MiB block, and every
verified read (resume, `weightslab verify`) checks the blocks on all cores instead of one sequential
xxh3-128; entries without them (older files, copies, replacements) still check the whole file."""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

import pytest
import torch
import xxhash

from weightslab.components import AutomaticCheckpointSystem
from weightslab.errors import CheckpointCorruptedError
from weightslab.format.manifest import BlockDigests, CheckpointEntry, PendingReplacement, entry_from_dict
from weightslab.registry.ledger import Ledger
from weightslab.storage.local import LocalStorage
from weightslab.store.manager import CheckpointManager
from weightslab.store.verify import verifies_in_parallel
from weightslab.util.digests import BLOCK_BYTES, FileHasher, block_digests


def _blocks_of(data: bytes, size: int) -> list[str]:
    return [xxhash.xxh3_128(data[i : i + size]).hexdigest()[:16] for i in range(0, len(data), size)]


@pytest.mark.parametrize("length", [0, 999, 1000, 1001, 5 * 1000, 5 * 1000 + 7])
def test_the_hasher_digests_the_whole_stream_and_each_block_across_any_write_boundaries(length: int) -> None:
    data = os.urandom(length)
    hasher = FileHasher(block_bytes=1000)
    cuts = sorted({min(c, length) for c in (0, 1, 333, 1000, 1001, 2999)} | {length})
    hasher.update(b"")
    for start, end in itertools.pairwise(cuts):
        hasher.update(memoryview(data)[start:end])
    assert hasher.bytes == length
    assert hasher.hexdigest() == xxhash.xxh3_128(data).hexdigest()
    assert list(hasher.blocks()) == _blocks_of(data, 1000)
    assert block_digests(memoryview(data), 1000, threads=2) == _blocks_of(data, 1000)


def test_a_block_size_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="block_bytes must be positive, got 0"):
        FileHasher(block_bytes=0)


def _entry(**changes: object) -> CheckpointEntry:
    base = CheckpointEntry(
        step=3,
        file="model/x_step_000003.pt",
        bytes=2500,
        xxh3_128="a" * 32,
        created=1.0,
        trigger="step",
        blocks=BlockDigests(1000, "a" * 32, ("1" * 16, "2" * 16, "3" * 16)),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_block_digests_round_trip_through_the_manifest_and_apply_only_to_their_own_bytes() -> None:
    entry = _entry()
    assert entry_from_dict(entry.to_dict()) == entry
    assert entry.usable_blocks() == entry.blocks
    # bytes re-encoded by a copy, a replacement under way, a file of another length: the whole
    # file's digest is checked instead
    assert _entry(xxh3_128="b" * 32).usable_blocks() is None
    assert _entry(pending=PendingReplacement(2500, "c" * 32)).usable_blocks() is None
    assert _entry(bytes=3500).usable_blocks() is None
    assert "blocks" not in _entry(blocks=None).to_dict()
    assert entry_from_dict(_entry(blocks=None).to_dict()).blocks is None


def _system(root: Path, ledger: Ledger, model: torch.nn.Module) -> AutomaticCheckpointSystem:
    ledger.register_model("model", model)
    ledger.register_hyperparams("config", {"lr": 0.1})
    return AutomaticCheckpointSystem(
        root_log_dir=root, checkpoint_frequency=1, async_save=False, ledger=ledger
    )


def _big_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    # 3 x 3000 x 3000 float32: 108 MB, a step file of two blocks
    return torch.nn.Sequential(*[torch.nn.Linear(3000, 3000, bias=False) for _ in range(3)])


def test_a_step_file_over_one_block_is_verified_block_by_block_and_a_damaged_block_is_named(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    model = _big_model(0)
    system = _system(root, Ledger(), model)
    system.checkpoint_on_step(1)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    system.checkpoint_on_step(2)
    system.close()
    manager = CheckpointManager(root, mode="r")
    h = system.exp_hash
    assert h is not None
    entry = manager.manifest(h).entry(2)
    assert entry is not None and entry.blocks is not None
    path = root / "checkpoints" / h / entry.file
    data = path.read_bytes()
    assert entry.blocks.block_bytes == BLOCK_BYTES and list(entry.blocks.xxh3_128_hi64) == _blocks_of(
        data, BLOCK_BYTES
    )
    assert len(entry.blocks.xxh3_128_hi64) == 2 and entry.usable_blocks() == entry.blocks
    assert LocalStorage(durable=False).hash_threads() >= 1
    assert verifies_in_parallel(manager.storage, entry) == (LocalStorage(durable=False).hash_threads() > 1)
    assert manager.verify().healthy

    with open(path, "r+b") as f:  # one bit in the second block
        f.seek(BLOCK_BYTES + 12345)
        byte = f.read(1)
        f.seek(BLOCK_BYTES + 12345)
        f.write(bytes([byte[0] ^ 1]))
    report = CheckpointManager(root, mode="r").verify()
    (problem,) = report.problems
    assert problem.kind == "corrupt" and problem.step == 2
    assert problem.detail.startswith(f"checksum mismatch in block 2 of 2: bytes {BLOCK_BYTES}-{len(data)}")
    with pytest.raises(CheckpointCorruptedError, match="a mismatch in block 2 of 2"):
        CheckpointManager(root, mode="r").load(h, 2)

    # a resume checks the blocks before it restores anything, and falls back to step 1
    fresh = _big_model(7)
    resumed = _system(root, Ledger(), fresh)
    assert resumed.resume() == 2
    at_1 = CheckpointManager(root, mode="r").load(h, 1)["models"]["model"]
    assert all(torch.equal(v, at_1[k]) for k, v in fresh.state_dict().items())
    unreadable = [e for e in resumed.manager.events() if e["event"] == "checkpoint_unreadable"]
    assert [e["step"] for e in unreadable] == [2] and "block 2 of 2" in unreadable[0]["error"]
    resumed.close()
