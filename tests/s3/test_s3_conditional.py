"""The commit primitives under races, on a real server: conditional create, compare-and-swap, append.

Racers start together on a barrier (threads) or on a ``go`` line (processes), never after a sleep.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from weightslab.storage.s3 import S3Storage

from .conftest import S3Server

pytestmark = pytest.mark.s3

WORKER = Path(__file__).with_name("s3_worker.py")
REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def race(n: int, attempt: Callable[[int], T]) -> list[T]:
    """Run ``attempt(i)`` in ``n`` threads released together; their results in order."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=120)
            results[i] = attempt(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return results


def test_server_honours_if_none_match_and_if_match(store: S3Storage) -> None:
    """Raw PUTs: SeaweedFS answers 412 to a failed If-None-Match / If-Match (and does not write)."""
    key = store.key_for(store.root / "raw")
    first = store._call("put_object", Key=key, Body=b"1", IfNoneMatch="*")
    with pytest.raises(OSError) as info:
        store._call("put_object", Key=key, Body=b"2", IfNoneMatch="*")
    assert "PreconditionFailed" in repr(info.value.__cause__)
    with pytest.raises(OSError) as info:
        store._call("put_object", Key=key, Body=b"3", IfMatch='"00000000000000000000000000000000"')
    assert "PreconditionFailed" in repr(info.value.__cause__)
    assert store.read_bytes(store.root / "raw") == b"1"
    store._call("put_object", Key=key, Body=b"4", IfMatch=first["ETag"])
    assert store.read_bytes(store.root / "raw") == b"4"


@pytest.mark.parametrize("round_", range(3))
def test_create_exclusive_race_between_threads_has_one_winner(store: S3Storage, round_: int) -> None:
    path = store.root / "commit" / f"r{round_}.json"
    results = race(12, lambda i: store.create_exclusive(path, f"writer {i}".encode()))
    assert results.count(True) == 1, results
    assert store.read_bytes(path) == f"writer {results.index(True)}".encode()


def _workers(spec: dict[str, Any], n: int, s3_server: S3Server) -> list[subprocess.Popen[str]]:
    procs = []
    for i in range(n):
        body = dict(spec, body=f"process {i}", options=s3_server.storage_options())
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), json.dumps(body)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
        )
    return procs


def _release_and_collect(procs: list[subprocess.Popen[str]]) -> list[str]:
    for p in procs:  # every racer is connected before any is released
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=300)
        assert p.returncode == 0
        out.append(stdout.strip())
    return out


def test_create_exclusive_race_between_processes_has_one_winner(s3_server: S3Server, s3_url: str) -> None:
    store = S3Storage(s3_url, s3_server.storage_options())
    procs = _workers({"mode": "create", "url": s3_url, "path": "commit.json"}, 4, s3_server)
    results = _release_and_collect(procs)
    assert sorted(results) == ["lost"] * 3 + ["won"], results
    assert store.read_bytes(store.root / "commit.json") == f"process {results.index('won')}".encode()


def test_put_if_match_race_between_processes_has_one_winner(s3_server: S3Server, s3_url: str) -> None:
    store = S3Storage(s3_url, s3_server.storage_options())
    path = store.root / "manifest.json"
    store.write_bytes_atomic(path, b"v0")
    _, etag = store.read_with_etag(path)
    procs = _workers({"mode": "cas", "url": s3_url, "path": "manifest.json", "etag": etag}, 4, s3_server)
    results = _release_and_collect(procs)
    assert sorted(results) == ["lost"] * 3 + ["won"], results
    assert store.read_bytes(path) == f"process {results.index('won')}".encode()


def test_put_if_match_race_between_threads_has_one_winner(store: S3Storage) -> None:
    path = store.root / "manifest.json"
    store.write_bytes_atomic(path, b"round -1")
    for r in range(3):
        _, etag = store.read_with_etag(path)
        # each body names its round and writer: no two writes are byte-equal (the ETag is their MD5)

        def write(i: int, r: int = r, etag: str = etag) -> str | None:
            return store.put_if_match(path, f"round {r} by {i}".encode(), etag)

        results = race(8, write)
        winners = [i for i, new in enumerate(results) if new is not None]
        assert len(winners) == 1, results
        assert store.read_with_etag(path) == (f"round {r} by {winners[0]}".encode(), results[winners[0]])


def test_compare_and_swap_counter_loses_no_increment(store: S3Storage) -> None:
    path = store.root / "counter"
    store.write_bytes_atomic(path, b"0")
    per_thread, threads = 5, 6

    def increment(_i: int) -> int:
        retries = 0
        for _ in range(per_thread):
            while True:
                data, etag = store.read_with_etag(path)
                if store.put_if_match(path, str(int(data) + 1).encode(), etag) is not None:
                    break
                retries += 1
        return retries

    race(threads, increment)
    assert int(store.read_bytes(path)) == per_thread * threads


def test_concurrent_append_line_keeps_every_line_whole(store: S3Storage) -> None:
    path = store.root / "logs" / "events.jsonl"
    per_thread, threads = 4, 5

    def append(i: int) -> None:
        for k in range(per_thread):
            store.append_line(path, json.dumps({"writer": i, "k": k}).encode() + b"\n")

    race(threads, append)
    lines = [json.loads(line) for line in store.read_bytes(path).splitlines()]
    assert sorted((e["writer"], e["k"]) for e in lines) == [
        (i, k) for i in range(threads) for k in range(per_thread)
    ]
