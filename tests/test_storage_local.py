"""``LocalStorage.create_exclusive``: create-if-absent, the primitive a commit record is built on.

Exactly one of any number of racing callers (threads of one process, or separate processes) gets
True, and the file then holds that caller's bytes whole; everyone else gets False and changes nothing.
A write that fails after the name was taken gives the name back.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from weightslab.storage.local import LocalStorage

RACERS = 8
PROCESS_RACERS = 4  # each spawned process imports weightslab (and torch): keep it few


def _payload(who: int) -> bytes:
    # large enough that a write is not a single trivially atomic syscall on every file system
    return f"writer {who}\n".encode() * 20_000


@pytest.mark.parametrize("durable", [True, False])
def test_creates_once_and_never_overwrites(tmp_path: Path, durable: bool) -> None:
    storage = LocalStorage(durable=durable)
    path = tmp_path / "record.json"
    assert storage.create_exclusive(path, b'{"first": true}') is True
    assert path.read_bytes() == b'{"first": true}'
    assert storage.create_exclusive(path, b'{"second": true}') is False
    assert path.read_bytes() == b'{"first": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]  # no temporary left beside it


def test_empty_content_is_a_valid_record(tmp_path: Path) -> None:
    storage = LocalStorage(durable=False)
    path = tmp_path / "empty"
    assert storage.create_exclusive(path, b"") is True
    assert path.read_bytes() == b""
    assert storage.create_exclusive(path, b"x") is False


def test_existing_file_of_another_writer_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "record"
    path.write_bytes(b"theirs")
    assert LocalStorage(durable=False).create_exclusive(path, b"mine") is False
    assert path.read_bytes() == b"theirs"


def test_missing_folder_is_an_error_not_a_false(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        LocalStorage(durable=False).create_exclusive(tmp_path / "no" / "record", b"x")


def test_failed_write_gives_the_name_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(durable=False)
    path = tmp_path / "record"
    real_write = os.write
    calls = 0

    def failing_write(fd: int, data: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data[:10]))  # a short write: the rest must follow
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        storage.create_exclusive(path, b"0123456789abcdef")
    monkeypatch.undo()
    assert not path.exists(), "a half-written record must not keep the name"
    assert storage.create_exclusive(path, b"retry") is True
    assert path.read_bytes() == b"retry"


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def one_byte_at_a_time(fd: int, data: Any) -> int:
        return real_write(fd, bytes(data[:1]))

    monkeypatch.setattr(os, "write", one_byte_at_a_time)
    path = tmp_path / "record"
    assert LocalStorage(durable=False).create_exclusive(path, b"whole record") is True
    monkeypatch.undo()
    assert path.read_bytes() == b"whole record"


def _race_threads(storage: LocalStorage, path: Path) -> dict[int, bool]:
    """``{racer: create_exclusive's answer}`` of RACERS threads let go at the same moment on ``path``."""
    barrier = threading.Barrier(RACERS)
    results: dict[int, bool] = {}
    errors: list[BaseException] = []

    def race(who: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[who] = storage.create_exclusive(path, _payload(who))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(who,)) for who in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


@pytest.mark.parametrize("durable", [True, False])
def test_racing_threads_exactly_one_wins(tmp_path: Path, durable: bool) -> None:
    storage = LocalStorage(durable=durable)
    for attempt in range(5):  # several rounds: each is a fresh race on a fresh name
        path = tmp_path / f"record-{attempt}"
        results = _race_threads(storage, path)
        winners = [who for who, won in results.items() if won]
        assert len(results) == RACERS and len(winners) == 1, results
        assert path.read_bytes() == _payload(winners[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"record-{i}" for i in range(5)]


def _race_in_process(path: str, who: int, barrier: Any, results: Any) -> None:
    barrier.wait(timeout=60)
    results.put((who, LocalStorage(durable=True).create_exclusive(Path(path), _payload(who))))


def test_racing_processes_exactly_one_wins(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
    path = tmp_path / "record"
    barrier = ctx.Barrier(PROCESS_RACERS)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_race_in_process, args=(str(path), who, barrier, results))
        for who in range(PROCESS_RACERS)
    ]
    for p in procs:
        p.start()
    outcomes = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    winners = [who for who, won in outcomes.items() if won]
    assert len(outcomes) == PROCESS_RACERS and len(winners) == 1, outcomes
    assert path.read_bytes() == _payload(winners[0])
    assert [p.name for p in tmp_path.iterdir()] == ["record"]
