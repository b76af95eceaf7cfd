"""DDP and FSDP2 runs on 2 and 3 gloo ranks (real processes), stopped, resumed and compared.

Each launch is a subprocess running ``dist_worker.py`` (``torch.multiprocessing.spawn``, ``file://``
rendezvous, gloo on loopback); there are eight launches in all, a few seconds each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weightslab import CheckpointManager
from weightslab.cli.main import main as cli_main

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(900)]

WORKER = Path(__file__).with_name("dist_worker.py")
REPO = Path(__file__).resolve().parents[2]


def launch(mode: str, root: Path, out: Path, world: int, steps: int) -> None:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(WORKER), mode, str(root), str(out), str(world), str(steps)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def final(out: Path) -> dict:
    return torch.load(out / "final.pt", weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["optim"].keys() == b["optim"].keys()
    for k, v in a["optim"].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b["optim"][k]), k
        else:
            assert v == b["optim"][k], k


def manifest(root: Path) -> dict:
    (path,) = root.glob("checkpoints/*/manifest.json")
    return json.loads(path.read_text())


def test_ddp_stop_and_resume_at_two_ranks_matches_the_uninterrupted_run(tmp_path: Path) -> None:
    launch("ddp", tmp_path / "whole", tmp_path / "out_whole", 2, 12)
    launch("ddp", tmp_path / "split", tmp_path / "out_a", 2, 8)
    launch("ddp", tmp_path / "split", tmp_path / "out_b", 2, 12)
    whole, resumed = final(tmp_path / "out_whole"), final(tmp_path / "out_b")
    assert whole["exp_hash"] == resumed["exp_hash"]
    assert_same_state(whole, resumed)
    for rank in (0, 1):  # each rank continued its own RNG stream
        assert torch.equal(
            torch.load(tmp_path / "out_whole" / f"rng_{rank}.pt"),
            torch.load(tmp_path / "out_b" / f"rng_{rank}.pt"),
        )
    # one set of step files, written by rank 0 only
    files = sorted(p.name for p in (tmp_path / "split").rglob("*_step_*"))
    h = whole["exp_hash"]
    assert files == [f"{h}_step_{s:06d}.pt" for s in (4, 8, 12)]
    data = torch.load(next((tmp_path / "split").rglob("*_step_000008.pt")), weights_only=True)
    assert len(data["rng_ranks"]) == 2
    assert not any("weightslab" in p.name for p in (tmp_path / "split").rglob("*tmp*"))


def test_ranks_that_disagree_raise_naming_the_rank(tmp_path: Path) -> None:
    launch("diverge", tmp_path / "root", tmp_path / "out", 2, 12)
    for rank in (0, 1):
        text = (tmp_path / "out" / f"error_{rank}.txt").read_text()
        step, rest = text.split(" ", 1)
        assert step == "4" and rest.startswith("[1]")
        assert "ranks [1] differ from rank 0" in rest
    assert not list((tmp_path / "root").rglob("*_step_*"))


def test_a_second_system_in_the_same_job_does_not_read_the_first_ones_exchanges(tmp_path: Path) -> None:
    launch("reopen", tmp_path / "root", tmp_path / "out", 2, 0)
    for phase, steps in ((0, [1, 2, 3]), (1, [11, 12, 13])):
        m = manifest(tmp_path / "root" / f"p{phase}")
        assert [e["step"] for e in m["checkpoints"]] == steps
    assert not list((tmp_path / "root").rglob("*tmp*"))


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fsdp")
    launch("fsdp", base / "root", base / "out", 2, 8)
    return base


def test_fsdp_checkpoints_are_sharded_and_listed_whole(fsdp_run: Path) -> None:
    m = manifest(fsdp_run / "root")
    assert [e["step"] for e in m["checkpoints"]] == [4, 8]
    entry = m["checkpoints"][-1]
    names = sorted(Path(s["file"]).name for s in entry["shards"])
    assert names == [".metadata", "__0_0.distcp", "__1_0.distcp", "state.pt"]
    assert entry["file"].endswith("_step_000008")
    assert entry["bytes"] == sum(s["bytes"] for s in entry["shards"])
    folder = fsdp_run / "root" / "checkpoints" / m["exp_hash"] / entry["file"]
    assert sum(p.stat().st_size for p in folder.iterdir()) == entry["bytes"]


def test_export_consolidates_a_sharded_checkpoint(fsdp_run: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    h = manifest(fsdp_run / "root")["exp_hash"]
    assert cli_main(["export", str(fsdp_run / "root"), h, "--to", str(tmp_path / "x")]) == 0
    exported = load_file(tmp_path / "x" / "net.safetensors")
    reference = final(fsdp_run / "out")["model"]
    assert exported.keys() == reference.keys()
    assert all(torch.equal(exported[k], v) for k, v in reference.items())  # full shapes, 2 ranks' shards
    assert cli_main(["export", str(fsdp_run / "root"), h, "--to", str(tmp_path / "p"), "--format", "pt"]) == 0
    data = torch.load(tmp_path / "p" / "checkpoint.pt", weights_only=True)
    assert torch.equal(data["models"]["net"]["0.weight"], reference["0.weight"])
    # analysis reads the sharded checkpoints too (weights included for a local root)
    assert cli_main(["analyze", str(fsdp_run / "root"), "--out", str(tmp_path / "an")]) == 0
    assert any((tmp_path / "an").iterdir())


def test_fsdp_resume_in_one_plain_process_and_at_three_ranks_is_exact(fsdp_run: Path, tmp_path: Path) -> None:
    reference = final(fsdp_run / "out")
    for world in (1, 3):
        root = tmp_path / f"root{world}"
        shutil.copytree(fsdp_run / "root", root)
        launch("fsdp", root, tmp_path / f"out{world}", world, 8)  # resume() -> 9: no step is trained
        got = final(tmp_path / f"out{world}")
        assert got["exp_hash"] == reference["exp_hash"]
        assert_same_state(reference, got)
    # the hash does not depend on the world size or the wrapping: a one-process run hashes the same
    launch("fsdp", tmp_path / "plain", tmp_path / "out_plain", 1, 1)
    assert final(tmp_path / "out_plain")["exp_hash"] == reference["exp_hash"]


def test_a_flipped_byte_in_a_shard_is_named_and_resume_falls_back(
    fsdp_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    shutil.copytree(fsdp_run / "root", root)
    shard = next(root.rglob("*_step_000008/__1_0.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert cli_main(["verify", str(root)]) == 1
    assert "__1_0.distcp" in capsys.readouterr().out
    launch("fsdp", root, tmp_path / "out", 1, 4)  # resumes step 4, the newest that verifies
    h = manifest(root)["exp_hash"]
    step4 = CheckpointManager(root, mode="r").load(h, 4)  # consolidated from the shards
    got = final(tmp_path / "out")["model"]
    assert step4["models"]["net"].keys() == got.keys()
    assert all(torch.equal(step4["models"]["net"][k], v) for k, v in got.items())
    events = [json.loads(line) for line in (root / "logs" / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "checkpoint_unreadable" and e["step"] == 8 for e in events)
