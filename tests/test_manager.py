"""CheckpointManager on real folders: exact layout, commit rule, checksums, lock, leftovers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash

from weightslab.components import CheckpointManager
from weightslab.errors import (
    AmbiguousExperimentError,
    CheckpointCorruptedError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    RootError,
    RootLockedError,
    UnknownExperimentError,
    UntrustedLoadError,
)
from weightslab.format.layout import CHECKPOINT_FORMAT
from weightslab.policy.retention import RetentionPolicy

from .conftest import mlp

H1 = "0123456789abcdef"
H2 = "0123ffff00000000"


def payload(step: int, value: float = 1.0) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "exp_hash": H1,
        "step": step,
        "models": {"model": {"w": torch.full((4, 4), value)}},
    }


def new_experiment(mgr: CheckpointManager, h: str = H1, parent: Any = None) -> None:
    mgr.create_experiment(
        exp_hash=h,
        architecture_hash="a" * 16,
        hyperparams_hash="b" * 16,
        parent=parent,
        retention={"keep_last": None},
        hyperparams={"config": {"lr": 0.1}},
        models={"model": mlp()},
    )


@pytest.fixture
def mgr(tmp_path: Path) -> Any:
    m = CheckpointManager(tmp_path / "root")
    yield m
    m.close()


def test_layout_and_file_names_are_exact(mgr: CheckpointManager) -> None:
    new_experiment(mgr)
    mgr.save(H1, 100, payload(100), trigger="step", metrics={"val/loss": 0.5})
    root = mgr.root
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [
        f"checkpoints/{H1}/hp/{H1}_config.yaml",
        f"checkpoints/{H1}/manifest.json",
        f"checkpoints/{H1}/model/{H1}_architecture.json",
        f"checkpoints/{H1}/model/{H1}_architecture.pkl",
        f"checkpoints/{H1}/model/{H1}_architecture.txt",
        f"checkpoints/{H1}/model/{H1}_step_000100.pt",
        f"checkpoints/{H1}/summary.json",  # what `ls` reads instead of the manifest
        "logs/events.jsonl",
        "logs/writer.lock",
    ]
    assert (root / "data").is_dir() and (root / "checkpoints" / H1 / "data").is_dir()


def test_manifest_fields(mgr: CheckpointManager) -> None:
    new_experiment(mgr)
    mgr.save(H1, 100, payload(100), trigger="step", metrics={"val/loss": 0.5})
    raw = json.loads((mgr.root / "checkpoints" / H1 / "manifest.json").read_text())
    assert raw["format"] == "weightslab.manifest/1"
    assert raw["exp_hash"] == H1 and raw["parent"] is None
    assert raw["architecture_hash"] == "a" * 16 and raw["hyperparams_hash"] == "b" * 16
    (entry,) = raw["checkpoints"]
    data = (mgr.root / "checkpoints" / H1 / "model" / f"{H1}_step_000100.pt").read_bytes()
    assert entry == {
        "step": 100,
        "seq": 1,
        "file": f"model/{H1}_step_000100.pt",
        "bytes": len(data),
        "xxh3_128": xxhash.xxh3_128(data).hexdigest(),
        "created": entry["created"],
        "trigger": "step",
        "metrics": {"val/loss": 0.5},
        "tags": [],
        "description": "",
    }


def test_step_file_opens_with_weights_only(mgr: CheckpointManager) -> None:
    new_experiment(mgr)
    mgr.save(H1, 7, payload(7, 3.0), trigger="step")
    path = mgr.root / "checkpoints" / H1 / "model" / f"{H1}_step_000007.pt"
    data = torch.load(path, weights_only=True)
    assert data["format"] == CHECKPOINT_FORMAT and torch.equal(
        data["models"]["model"]["w"], torch.full((4, 4), 3.0)
    )


def test_load_latest_best_step_and_prefix(mgr: CheckpointManager) -> None:
    new_experiment(mgr)
    for step, loss in [(10, 0.9), (20, 0.1), (30, 0.5)]:
        mgr.save(H1, step, payload(step, float(step)), trigger="step", metrics={"loss": loss})
    assert mgr.load(H1)["step"] == 30
    assert mgr.load(H1, "best", monitor="loss")["step"] == 20
    assert mgr.load(H1, "best", monitor="loss", mode="max")["step"] == 10
    assert mgr.load(H1, 10)["step"] == 10
    assert mgr.load("0123456")["step"] == 30  # unique prefix
    assert mgr.load()["step"] == 30  # the active experiment
    with pytest.raises(
        CheckpointNotFoundError, match=r"no checkpoint at step 15; committed steps: \[10, 20, 30\]"
    ):
        mgr.load(H1, 15)


def test_hash_prefixes_like_git(mgr: CheckpointManager) -> None:
    new_experiment(mgr, H1)
    new_experiment(mgr, H2)
    assert mgr.resolve_hash("0123f") == H2
    with pytest.raises(AmbiguousExperimentError, match="ambiguous"):
        mgr.resolve_hash("0123")
    with pytest.raises(UnknownExperimentError, match="no experiment"):
        mgr.resolve_hash("ffff")


def test_flipped_byte_is_detected_on_load(mgr: CheckpointManager) -> None:
    new_experiment(mgr)
    mgr.save(H1, 10, payload(10), trigger="step")
    path = mgr.root / "checkpoints" / H1 / "model" / f"{H1}_step_000010.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptedError, match=f"checkpoint {path} is corrupted: expected xxh3_128"):
        mgr.load(H1, 10)
    report = mgr.verify()
    assert report.checked == 1 and report.ok == 0
    assert [(p.kind, p.step) for p in report.problems] == [("corrupt", 10)]


def test_truncated_and_missing_files_are_detected(mgr: CheckpointManager) -> None:
    new_experiment(mgr)
    mgr.save(H1, 10, payload(10), trigger="step")
    mgr.save(H1, 20, payload(20), trigger="step")
    model_dir = mgr.root / "checkpoints" / H1 / "model"
    with open(model_dir / f"{H1}_step_000010.pt", "r+b") as f:
        f.truncate(100)
    os.unlink(model_dir / f"{H1}_step_000020.pt")
    with pytest.raises(CheckpointCorruptedError, match="size is 100 bytes"):
        mgr.load(H1, 10)
    assert sorted((p.kind, p.step) for p in mgr.verify().problems) == [("corrupt", 10), ("missing", 20)]


def test_a_file_from_another_format_is_refused(mgr: CheckpointManager, tmp_path: Path) -> None:
    from weightslab.store.manager import load_step_file

    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, other)
    with pytest.raises(CheckpointFormatError, match=r"is not a weightslab\.checkpoint/1 step file"):
        load_step_file(other)


def test_delete_removes_the_entry_then_the_file(mgr: CheckpointManager) -> None:
    new_experiment(mgr)
    mgr.save(H1, 10, payload(10), trigger="step")
    mgr.delete(H1, 10)
    assert mgr.checkpoints(H1) == []
    assert not (mgr.root / "checkpoints" / H1 / "model" / f"{H1}_step_000010.pt").exists()
    assert [e["event"] for e in mgr.events()][-1] == "checkpoint_deleted"


def test_retention_keeps_branch_points(mgr: CheckpointManager) -> None:
    from weightslab.format.manifest import ParentRef

    new_experiment(mgr, H1)
    for step in (10, 20, 30, 40):
        mgr.save(H1, step, payload(step), trigger="step")
    # the child branched at step 25, continuing from the parent's checkpoint 20
    new_experiment(mgr, H2, parent=ParentRef(H1, 25, "config_change", checkpoint=20))
    deleted = mgr.apply_retention(H1, RetentionPolicy(keep_last=1), protected={10})
    assert deleted == [30]
    assert [e.step for e in mgr.checkpoints(H1)] == [10, 20, 40]


def test_second_writer_gets_a_clear_error(tmp_path: Path) -> None:
    first = CheckpointManager(tmp_path / "root")
    try:
        with pytest.raises(RootLockedError, match=f"is already open for writing by pid {os.getpid()}"):
            CheckpointManager(tmp_path / "root")
        code = f"from weightslab.components import CheckpointManager; CheckpointManager({str(tmp_path / 'root')!r})"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert (
            proc.returncode != 0
            and "RootLockedError" in proc.stderr
            and "already open for writing" in proc.stderr
        )
        reader = CheckpointManager(tmp_path / "root", mode="r")  # readers are welcome
        assert reader.experiments() == []
    finally:
        first.close()
    CheckpointManager(tmp_path / "root").close()  # released


def test_a_killed_writer_does_not_leave_a_stale_lock(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import os, signal
        from weightslab.components import CheckpointManager
        CheckpointManager({str(tmp_path / "root")!r})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    CheckpointManager(tmp_path / "root").close()


def test_root_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RootError, match="is a file, not a folder"):
        CheckpointManager(f)


def test_leftovers_are_ignored_and_cleaned(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with CheckpointManager(root) as mgr:
        new_experiment(mgr)
        mgr.save(H1, 10, payload(10), trigger="step")
    model_dir = root / "checkpoints" / H1 / "model"
    orphan = model_dir / f"{H1}_step_000020.pt"  # written, never committed
    torch.save(payload(20), orphan)
    tmp = model_dir / f".{H1}_step_000030.pt.tmp-123-abc"
    tmp.write_bytes(b"partial")
    half = root / "checkpoints" / H2  # a crash before its manifest
    (half / "model").mkdir(parents=True)
    (half / "model" / f"{H2}_architecture.txt").write_text("x")
    reader = CheckpointManager(root, mode="r")
    assert [e.step for e in reader.checkpoints(H1)] == [10]
    assert reader.experiments() == [H1]
    assert {p.kind for p in reader.verify().problems} == {"orphaned"}
    with CheckpointManager(root) as mgr:
        assert not orphan.exists() and not tmp.exists() and not half.exists()
        assert mgr.verify().healthy
        assert mgr.events()[-1]["event"] == "leftovers_removed"


def test_replacing_a_committed_step_is_crash_safe(mgr: CheckpointManager) -> None:
    new_experiment(mgr)
    first = mgr.save(H1, 10, payload(10, 1.0), trigger="step")
    second = mgr.save(H1, 10, payload(10, 2.0), trigger="reset")
    assert first.xxh3_128 != second.xxh3_128 and second.pending is None
    assert [e.trigger for e in mgr.checkpoints(H1)] == ["reset"]
    assert torch.equal(mgr.load(H1, 10)["models"]["model"]["w"], torch.full((4, 4), 2.0))
    assert mgr.verify().healthy


def test_interrupted_replacement_settles_on_open(tmp_path: Path) -> None:
    from weightslab.format.manifest import PendingReplacement
    from weightslab.storage.local import LocalStorage

    root = tmp_path / "root"
    with CheckpointManager(root) as mgr:
        new_experiment(mgr)
        old = mgr.save(H1, 10, payload(10, 1.0), trigger="step")
        # simulate a crash after the new file was renamed over, before the entry was committed
        path = mgr.experiment(H1).step_file(10)
        written = LocalStorage().write_atomic(path, lambda w: torch.save(payload(10, 5.0), w))  # type: ignore[arg-type]
        m = mgr.manifest(H1)
        from weightslab.store.manager import _with_pending

        mgr._write_manifest(
            m.with_entry(_with_pending(old, PendingReplacement(written.bytes, written.xxh3_128)))
        )
        assert torch.equal(mgr.load(H1, 10)["models"]["model"]["w"], torch.full((4, 4), 5.0))
    with CheckpointManager(root) as mgr:
        (entry,) = mgr.checkpoints(H1)
        assert entry.pending is None and entry.xxh3_128 == written.xxh3_128


def test_architecture_pickle_needs_trust(mgr: CheckpointManager) -> None:
    new_experiment(mgr)
    with pytest.raises(UntrustedLoadError, match="trust=True"):
        mgr.load_architecture(H1)
    arch = mgr.load_architecture(H1, trust=True)
    model = arch["model"]
    assert all(p.device.type == "meta" for p in model.parameters())
    model = model.to_empty(device="cpu")
    assert [tuple(p.shape) for p in model.parameters()] == [tuple(p.shape) for p in mlp().parameters()]
    assert mgr.read_config(H1) == {"config": {"lr": 0.1}}


def test_architecture_pickle_is_small(mgr: CheckpointManager) -> None:
    big = torch.nn.Linear(1024, 1024)
    mgr.create_experiment(
        exp_hash=H1,
        architecture_hash="a" * 16,
        hyperparams_hash="b" * 16,
        parent=None,
        retention={},
        hyperparams={},
        models={"model": big},
    )
    assert mgr.experiment(H1).architecture_pickle.stat().st_size < 20_000  # the weights would be 4 MB


def test_reader_never_writes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with CheckpointManager(root) as mgr:
        new_experiment(mgr)
    reader = CheckpointManager(root, mode="r")
    with pytest.raises(RootError, match="read-only"):
        reader.save(H1, 1, payload(1), trigger="step")
    with pytest.raises(RootError, match="not a weightslab root"):
        CheckpointManager(tmp_path / "nowhere", mode="r")


def test_rebuild_refuses_a_step_file_whose_checksum_differs_from_the_journal(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with CheckpointManager(root) as mgr:
        new_experiment(mgr)
        mgr.save(H1, 10, payload(10, 1.0), trigger="step")
        mgr.save(H1, 20, payload(20, 2.0), trigger="step")
    step20 = root / "checkpoints" / H1 / "model" / f"{H1}_step_000020.pt"
    data = bytearray(step20.read_bytes())
    data[-200] ^= 0x10  # inside tensor bytes: torch.load would not notice
    step20.write_bytes(bytes(data))
    (root / "checkpoints" / H1 / "manifest.json").write_text("{ torn")
    with CheckpointManager(root) as mgr:
        assert [e.step for e in mgr.checkpoints(H1)] == [10]
        rebuilt = [e for e in mgr.events() if e["event"] == "manifest_rebuilt"]
        assert rebuilt[-1]["recovered"] == [10] and rebuilt[-1]["kept_broken_as"].startswith("checkpoints/")


def test_a_reader_does_not_call_a_write_in_flight_an_orphan(mgr: CheckpointManager) -> None:
    new_experiment(mgr)
    mgr.save(H1, 10, payload(10), trigger="step")
    in_flight = mgr.experiment(H1).model_dir / f".{H1}_step_000020.pt.tmp-1-abc"
    in_flight.write_bytes(b"partial")
    live = CheckpointManager(mgr.root, mode="r").verify()
    assert live.healthy and live.writer_active and live.ok == 1
    mgr.close()  # the writer is gone: now it is a leftover
    after = CheckpointManager(mgr.root, mode="r").verify()
    assert not after.writer_active and [(p.kind, p.detail) for p in after.problems] == [
        ("orphaned", "interrupted write")
    ]
