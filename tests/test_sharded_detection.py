"""Whether a registered model is sharded: decided by its parameters, whatever the process group."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from weightslab.system.sharded import is_sharded

REPO = Path(__file__).resolve().parents[1]


def test_plain_model_is_not_sharded() -> None:
    assert not is_sharded({"model": torch.nn.Linear(4, 4)})


def test_fsdp2_model_stays_sharded_after_the_process_group_is_destroyed(tmp_path: Path) -> None:
    """A script may destroy its process group before the last save: the parameters are DTensors
    still, so that save must go through the sharded path (a plain file would not resume)."""
    code = textwrap.dedent(
        f"""
        import torch, torch.distributed as dist
        from torch.distributed.fsdp import fully_shard
        from weightslab.system.sharded import is_sharded
        dist.init_process_group("gloo", init_method="file://{tmp_path / "rendezvous"}", rank=0, world_size=1)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        fully_shard(model)
        before = is_sharded({{"model": model}})
        dist.destroy_process_group()
        print(before, dist.is_initialized(), type(model[0].weight).__name__, is_sharded({{"model": model}}))
        """
    )
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "DTensor", "True"]
