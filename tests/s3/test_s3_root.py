"""An s3:// root end to end: train, resume, and every read-only command, against SeaweedFS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import weightslab as wl
from weightslab.cli.main import main as cli_main
from weightslab.components import checkpoint_on_step, get_checkpoint_system
from weightslab.errors import RootLockedError

pytestmark = pytest.mark.s3


def _train(url: str, options: dict, steps: range, seed: int = 0) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    system = get_checkpoint_system(
        root_log_dir=url, storage_options=options, checkpoint_frequency=5, keep_last=2
    )
    wl.register_model("net", model)
    wl.register_optimizer("opt", opt)
    wl.register_hyperparams("hp", {"lr": 1e-2})
    start = system.resume()
    for step in range(max(start, steps.start), steps.stop):
        torch.manual_seed(step)
        loss = model(torch.randn(6, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        checkpoint_on_step(step, {"loss": float(loss.detach())})
    system.close()
    return model, start


def test_an_s3_root_trains_resumes_exactly_and_reads_like_a_local_one(
    s3_server, s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    options = s3_server.storage_options()
    whole, _ = _train(f"{s3_url}-whole", options, range(0, 16))
    wl.clear_ledger()
    _train(s3_url, options, range(0, 11))
    wl.clear_ledger()
    resumed, start = _train(s3_url, options, range(0, 16))
    assert start == 11  # step 10 was the newest checkpoint
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # the commands read the root with the standard AWS variables alone
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    assert cli_main(["ls", s3_url, "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    (exp,) = listing["experiments"]
    assert cli_main(["verify", s3_url]) == 0
    capsys.readouterr()
    assert cli_main(["show", s3_url, exp["exp_hash"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [c["step"] for c in shown["checkpoints"]][-2:] == [10, 15]  # keep_last=2 (+ the last)
    assert cli_main(["export", s3_url, exp["exp_hash"], "--to", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "net.safetensors").stat().st_size > 0
    assert cli_main(["analyze", s3_url, "--out", str(tmp_path / "analysis")]) == 0
    assert any((tmp_path / "analysis").iterdir())


def test_a_second_writer_on_an_s3_root_is_refused_naming_the_holder(s3_server, s3_url: str) -> None:
    options = s3_server.storage_options()
    first = wl.CheckpointManager(s3_url, mode="w", storage_options=options)
    try:
        with pytest.raises(RootLockedError, match=r"pid \d+ on"):
            wl.CheckpointManager(s3_url, mode="w", storage_options=options)
    finally:
        first.close()
    wl.CheckpointManager(s3_url, mode="w", storage_options=options).close()  # released: free again


def test_gc_aborts_the_multipart_uploads_a_crash_left(
    s3_server, s3_url: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from weightslab.storage.s3 import S3Storage

    _train(s3_url, s3_server.storage_options(), range(0, 6))
    storage = S3Storage(s3_url, s3_server.storage_options())
    key = storage.key_for(storage.root / "checkpoints" / "0123456789abcdef" / "model" / "x.pt")
    storage.fs.call_s3("create_multipart_upload", Bucket=s3_server.bucket, Key=key)  # a writer died here
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    assert cli_main(["gc", s3_url, "--dry-run", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert [i["path"] for i in planned["removed"] if i["kind"] == "upload"] == [key]
    assert storage.incomplete_uploads()  # a dry run touches nothing
    assert cli_main(["gc", s3_url, "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert [i["path"] for i in done["removed"] if i["kind"] == "upload"] == [key]
    assert storage.incomplete_uploads() == []


@pytest.mark.distributed
def test_fsdp_sharded_checkpoints_on_s3_resume_in_one_process(s3_server, s3_url: str, tmp_path: Path) -> None:
    """Two FSDP2 ranks write their shards through DCP's fsspec writer; one plain process resumes them."""
    import os
    import subprocess
    import sys

    worker = Path(__file__).resolve().parents[1] / "distributed" / "dist_worker.py"
    env = {**os.environ, **s3_server.env(), "GLOO_SOCKET_IFNAME": "lo"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    for world, out in ((2, "two"), (1, "one")):
        proc = subprocess.run(
            [sys.executable, str(worker), "fsdp", s3_url, str(tmp_path / out), str(world), "8"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
    two = torch.load(tmp_path / "two" / "final.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "final.pt", weights_only=True)
    assert two["exp_hash"] == one["exp_hash"]
    for k, v in two["model"].items():
        assert torch.equal(v, one["model"][k]), k
    for k, v in two["optim"].items():
        assert torch.equal(v, one["optim"][k]) if isinstance(v, torch.Tensor) else v == one["optim"][k]
    manager = wl.CheckpointManager(s3_url, mode="r", storage_options=s3_server.storage_options())
    (h,) = manager.experiments()
    entry = manager.manifest(h).latest()
    assert entry is not None and entry.step == 8
    assert sorted(Path(r.file).name for r in entry.shards) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "state.pt",
    ]
    assert manager.verify().healthy
