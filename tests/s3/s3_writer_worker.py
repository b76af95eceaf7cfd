"""A writer of an ``s3://`` root for the lease tests of tests/s3/test_s3_crash.py, through ``get_checkpoint_system``.

``python s3_writer_worker.py JSON``; the JSON says ``{"mode", "url", "options"}``. Everything is
imported (torch, weightslab, s3fs) before the first line is printed, so that what the test times is
opening the root, not starting Python.

* ``hold``: open the root, train and save a few checkpoints (synchronous saves, so they are committed
  before it reports), print ``held <pid>``, then wait until stdin closes (or a SIGKILL); then close
  the system (which releases the lease) and print ``closed``.
* ``open``: print ``ready``, wait for a ``go`` line on stdin, then open the root. On success print
  ``opened <seconds> <start>`` (how long ``get_checkpoint_system`` took, and what ``resume()``
  returned), then close at the next line on stdin (or its end) and exit 0; on RootLockedError print ``locked <JSON {holder, message}>`` and exit 3.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HOLD_STEPS = 6
FREQUENCY = 2


def build() -> tuple[Any, Any]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def open_system(spec: dict[str, Any]) -> Any:
    from weightslab.components import get_checkpoint_system

    return get_checkpoint_system(
        root_log_dir=spec["url"],
        storage_options=spec["options"],
        checkpoint_frequency=FREQUENCY,
        keep_last=2,
        async_save=False,
    )


def register(model: Any, optimizer: Any) -> None:
    import weightslab as wl

    wl.register_model("model", model)
    wl.register_optimizer("optimizer", optimizer)
    wl.register_hyperparams("config", {"lr": 1e-2})


def main() -> int:
    spec = json.loads(sys.argv[1])
    import s3fs  # noqa: F401  (imported up front: not part of what is timed)
    import torch

    import weightslab.storage.s3  # noqa: F401
    from weightslab.components import checkpoint_on_step
    from weightslab.errors import RootLockedError

    torch.set_num_threads(1)
    model, optimizer = build()
    if spec["mode"] == "hold":
        system = open_system(spec)
        register(model, optimizer)
        start = system.resume()
        for step in range(start, HOLD_STEPS):
            loss = model(torch.randn(4, 8)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            checkpoint_on_step(step, metrics={"loss": float(loss.detach())})
        print(f"held {os.getpid()}", flush=True)
        sys.stdin.read()  # until the parent closes stdin (or kills this process)
        system.close()
        print("closed", flush=True)
        return 0
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    began = time.perf_counter()
    try:
        system = open_system(spec)
    except RootLockedError as exc:
        print("locked " + json.dumps({"holder": exc.holder, "message": str(exc)}), flush=True)
        return 3
    took = time.perf_counter() - began
    register(model, optimizer)
    start = system.resume()
    print(f"opened {took:.6f} {start}", flush=True)
    sys.stdin.readline()  # holding the lease until told (or stdin closes), so that the test can read it
    system.close()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
