"""Faults the outside world causes: a full disk, a read-only root, files damaged behind our back.

Each fault gives a clear error or a clean fallback, training keeps running under ``on_error="warn"``,
and nothing committed before is lost. The full disk and the read-only root are a real tmpfs mounted by
the test (this needs root, as in CI); where mounting is not permitted, the full disk is injected at the
storage boundary instead (a ``LocalStorage`` whose writes run out of space) and the read-only root is
skipped with the reason.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash

from weightslab.components import AutomaticCheckpointSystem, CheckpointManager, get_checkpoint_system
from weightslab.errors import CheckpointCorruptedError, ManifestError, RootError
from weightslab.registry.ledger import Ledger
from weightslab.storage.local import HashingWriter, LocalStorage, WrittenFile
from weightslab.system.config import CheckpointConfig

from .conftest import mlp, train_step

ENOSPC_TEXT = f"OSError: [Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}"


# -- a small filesystem ---------------------------------------------------------------------------
def mount_tmpfs(mountpoint: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` at ``mountpoint``; None on success, else why it is not possible here."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"mount failed: {exc}"
    return None if proc.returncode == 0 else f"mount failed: {proc.stderr.strip()}"


def unmount(mountpoint: Path) -> None:
    if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)  # busy: detach lazily


def remount(mountpoint: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mountpoint)], check=True, capture_output=True)


class RealSmallDisk:
    """A 4 MiB tmpfs: a real ENOSPC when it is filled up."""

    kind = "tmpfs"

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.root = mountpoint / "root"
        self._filler = mountpoint / "filler"

    def attach(self, manager: CheckpointManager) -> None:
        """Nothing to do: the disk itself runs out of space."""

    def free_bytes(self) -> int:
        st = os.statvfs(self.mountpoint)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int) -> None:
        """Take all the free space but ``leave`` bytes (rounded to pages by the filesystem)."""
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while (room := self.free_bytes() - leave) > 0:
                try:
                    os.write(fd, bytes(min(room, 1 << 16)))
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        finally:
            os.close(fd)

    def release(self) -> None:
        self._filler.unlink(missing_ok=True)


class NoSpaceStorage(LocalStorage):
    """A LocalStorage whose files cannot hold more than ``room`` bytes while the disk is 'full'.

    The error comes when the written bytes reach the disk after the serialiser finished, as it does on a
    real disk for files smaller than the write buffer (``test_a_full_disk_in_the_middle_of_a_large_step_file``
    covers a failure inside the serialiser).
    """

    def __init__(self, *, durable: bool) -> None:
        super().__init__(durable=durable)
        self.room: int | None = None

    def write_atomic(self, path: Path, produce: Callable[[HashingWriter], None]) -> WrittenFile:
        room = self.room
        if room is None:
            return super().write_atomic(path, produce)

        def limited(writer: HashingWriter) -> None:
            produce(writer)
            if writer.bytes > room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return super().write_atomic(path, limited)


class InjectedSmallDisk:
    """Where no tmpfs can be mounted: ENOSPC injected at the storage boundary, nowhere else."""

    kind = "injected"

    def __init__(self, base: Path) -> None:
        self.root = base / "root"
        self.storage: NoSpaceStorage | None = None

    def attach(self, manager: CheckpointManager) -> None:
        self.storage = NoSpaceStorage(durable=manager.storage.durable)
        manager.storage = self.storage

    def fill(self, leave: int) -> None:
        assert self.storage is not None, "attach() the manager first"
        self.storage.room = leave

    def release(self) -> None:
        assert self.storage is not None
        self.storage.room = None


SmallDisk = RealSmallDisk | InjectedSmallDisk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A real 4 MiB tmpfs, or ENOSPC injected at the storage boundary where mounting is not permitted."""
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    if mount_tmpfs(mountpoint, "4m") is None:
        try:
            yield RealSmallDisk(mountpoint)
        finally:
            unmount(mountpoint)
    else:
        yield InjectedSmallDisk(tmp_path)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs that the test may remount read-only; skipped where mounting is not permitted."""
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    reason = mount_tmpfs(mountpoint, "4m")
    if reason is not None:
        pytest.skip(f"needs a real read-only filesystem and {reason}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(mountpoint)], capture_output=True)
        unmount(mountpoint)


# -- a training run -------------------------------------------------------------------------------
class Run:
    """A model, optimizer and config registered on their own ledger, trained by a system."""

    def __init__(
        self, root: Path, sizes: tuple[int, ...] = (8, 16, 4), seed: int = 0, **options: Any
    ) -> None:
        self.ledger = Ledger()
        options.setdefault("checkpoint_frequency", 10)
        options.setdefault("on_error", "warn")
        # these runs stop as a crash would, with no last checkpoint at close() (tests/test_system.py
        # covers save_last); the fault tests count exactly the step saves
        options.setdefault("save_last", False)
        self.system = AutomaticCheckpointSystem(
            CheckpointConfig(root_log_dir=root, **options), ledger=self.ledger
        )
        self.model = mlp(sizes, seed=seed)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-2)
        self.config: dict[str, Any] = {"lr": 1e-2, "batch_size": 16}
        self.in_features = sizes[0]
        self.ledger.register_model("model", self.model)
        self.ledger.register_optimizer("optimizer", self.optimizer)
        self.ledger.register_hyperparams("config", self.config)
        self.losses: dict[int, float] = {}

    def train(self, steps: range, change_lr_at: int | None = None) -> None:
        for step in steps:
            self.losses[step] = train_step(self.model, self.optimizer, self.in_features)
            if step == change_lr_at:
                self.config["lr"] = 1e-3
            self.system.checkpoint_on_step(step, metrics={"loss": self.losses[step]})

    @property
    def manager(self) -> CheckpointManager:
        return self.system.manager

    def committed(self, exp_hash: str | None = None) -> dict[int, tuple[int, str]]:
        """{step: (bytes, xxh3_128)} of the committed checkpoints."""
        self.system.flush()
        h = exp_hash or self.system.exp_hash
        assert h is not None
        return {e.step: (e.bytes, e.xxh3_128) for e in self.manager.checkpoints(h)}


@pytest.fixture
def make_run() -> Iterator[Callable[..., Run]]:
    """Build runs that are closed at teardown, even when the test fails (before any unmount)."""
    made: list[Run] = []

    def make(root: Path, **options: Any) -> Run:
        made.append(Run(root, **options))
        return made[-1]

    yield make
    for run in made:
        if not run.system.closed:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run.system.close()


def files_with(root: Path, marker: str) -> list[Path]:
    return [p for p in root.rglob("*") if marker in p.name]


def digest(path: Path) -> tuple[int, str]:
    data = path.read_bytes()
    return len(data), xxhash.xxh3_128_hexdigest(data)


def caught(fn: Callable[[], object]) -> list[str]:
    """Run ``fn`` and return the messages of the warnings it raised."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in record]


# -- a full disk ----------------------------------------------------------------------------------
def test_a_full_disk_fails_the_save_cleanly_and_training_continues(
    small_disk: SmallDisk, caplog: pytest.LogCaptureFixture, make_run: Callable[..., Run]
) -> None:
    run = make_run(small_disk.root, sizes=(64, 256, 64), checkpoint_frequency=5)  # step files of ~400 kB
    small_disk.attach(run.manager)
    run.train(range(11))
    before = run.committed()
    assert sorted(before) == [5, 10]
    h = run.system.exp_hash
    assert h is not None
    model_dir = run.manager.experiment(h).model_dir

    small_disk.fill(leave=64 << 10)  # room for journal lines and a manifest, not for a step file
    messages = caught(lambda: run.train(range(11, 21)))  # saves at 15 and 20 fail
    messages += caught(run.system.flush)
    assert len(messages) == 2 and all(
        "No space left on device" in m and "training continues" in m for m in messages
    )
    failed = [e for e in run.manager.events() if e["event"] == "save_failed"]
    assert [(e["step"], Path(e["path"]).name, e["error"]) for e in failed] == [
        (15, f"{h}_step_000015.pt", ENOSPC_TEXT),
        (20, f"{h}_step_000020.pt", ENOSPC_TEXT),
    ]
    assert run.system.failures == 2
    assert files_with(small_disk.root, ".tmp-") == []  # the failed writes left nothing behind
    assert sorted(p.name for p in model_dir.glob("*_step_*")) == [
        f"{h}_step_000005.pt",
        f"{h}_step_000010.pt",
    ]
    assert run.committed() == before and run.manager.verify().healthy

    # nothing left at all, not even for the journal: still no exception, and the failure is logged
    small_disk.fill(leave=0)
    with caplog.at_level(logging.ERROR, logger="weightslab"):
        messages = caught(lambda: run.train(range(21, 26)))
        messages += caught(run.system.flush)
    assert len(messages) == 1 and "No space left on device" in messages[0]
    assert f"saving {model_dir / f'{h}_step_000025.pt'} failed: {ENOSPC_TEXT}" in caplog.text
    journalled = any(e["event"] == "save_failed" and e["step"] == 25 for e in run.manager.events())
    assert journalled or "could not journal the failure" in caplog.text
    assert files_with(small_disk.root, ".tmp-") == [] and run.committed() == before

    # space comes back: the next save commits, and everything resumes from it
    small_disk.release()
    assert caught(lambda: run.train(range(26, 31))) == []
    after = run.committed()
    assert sorted(after) == [5, 10, 30] and {s: after[s] for s in before} == before
    assert run.manager.verify().healthy
    run.system.close()
    again = make_run(small_disk.root, sizes=(64, 256, 64), seed=1, checkpoint_frequency=5)
    small_disk.attach(again.manager)
    assert again.system.resume() == 31
    again.system.close()


def test_a_hash_change_on_a_full_disk_warns_and_training_continues(
    small_disk: SmallDisk, make_run: Callable[..., Run]
) -> None:
    run = make_run(small_disk.root, sizes=(64, 256, 64), checkpoint_frequency=5)
    small_disk.attach(run.manager)
    run.train(range(11))
    first = run.system.exp_hash
    before = run.committed()
    small_disk.fill(leave=0)
    # the config change at step 12 needs a new experiment folder and a checkpoint: neither fits
    messages = caught(lambda: run.train(range(11, 16), change_lr_at=12))
    messages += caught(run.system.flush)
    assert messages and all("No space left on device" in m for m in messages)
    assert run.committed(first) == before and run.manager.verify().healthy
    small_disk.release()
    assert caught(lambda: run.train(range(16, 21))) == []
    second = run.system.exp_hash
    assert second is not None and second != first and 20 in run.committed(second)
    parent = run.manager.manifest(second).parent
    assert parent is not None and parent.exp_hash == first
    assert run.committed(first) == before and run.manager.verify().healthy
    run.system.close()


LARGE_STEP_FILE_RUN = """
import errno, gc, json, os, sys, warnings
from pathlib import Path
import torch
from weightslab.components import AutomaticCheckpointSystem, CheckpointManager
from weightslab.system.config import CheckpointConfig
from weightslab.storage.local import LocalStorage
from weightslab.registry.ledger import Ledger

root, fs, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
filler = fs / "filler"


class MidWriteNoSpace(LocalStorage):  # used only where no tmpfs can be mounted
    room = None

    def write_atomic(self, path, produce):
        room = self.room
        if room is None:
            return super().write_atomic(path, produce)

        def limited(writer):
            class Limited:
                def __getattr__(self, name):
                    return getattr(writer, name)

                def write(self, data):
                    if writer.bytes + memoryview(data).nbytes > room:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    return writer.write(data)

            produce(Limited())

        return super().write_atomic(path, limited)


def fill(leave):
    if mode == "injected":
        system.manager.storage.room = leave
        return
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    st = os.statvfs(fs)
    os.write(fd, bytes(max(0, st.f_bavail * st.f_frsize - leave)))
    os.close(fd)


def release():
    if mode == "injected":
        system.manager.storage.room = None
    else:
        filler.unlink()


ledger = Ledger()
config = CheckpointConfig(root_log_dir=root, checkpoint_frequency=5, on_error="warn")
system = AutomaticCheckpointSystem(config, ledger=ledger)
if mode == "injected":
    system.manager.storage = MidWriteNoSpace(durable=True)
torch.manual_seed(0)
model = torch.nn.Linear(768, 768)  # 2.4 MB of weights: written past the 1 MB write buffer
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
ledger.register_model("model", model)
ledger.register_optimizer("optimizer", optimizer)


def train(steps):
    for step in steps:
        loss = model(torch.randn(4, 768)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        system.checkpoint_on_step(step)


train(range(6))
system.flush()
fill(leave=1 << 20)  # the next step file stops in the middle of a tensor
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    train(range(6, 11))
    system.flush()
messages = [str(w.message) for w in caught]
del caught
gc.collect()  # frees everything the failed save left behind
release()
train(range(11, 16))
system.close()
reader = CheckpointManager(root, mode="r")
print(json.dumps({
    "warnings": messages,
    "committed": [e.step for e in reader.checkpoints(reader.experiments()[0])],
    "healthy": reader.verify().healthy,
    "temp_files": [p.name for p in root.rglob("*") if ".tmp-" in p.name],
}))
"""


def test_a_full_disk_in_the_middle_of_a_large_step_file_does_not_abort_training(tmp_path: Path) -> None:
    """ENOSPC inside the serialiser (a tensor larger than the write buffer) is a failed save, not a crash.

    It runs in a subprocess, so that a failure here cannot take the test session down with it.
    """
    fs = tmp_path / "fs"
    fs.mkdir()
    mounted = mount_tmpfs(fs, "12m") is None
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                LARGE_STEP_FILE_RUN,
                str(fs / "root"),
                str(fs),
                "tmpfs" if mounted else "injected",
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        if mounted:
            unmount(fs)
    assert proc.returncode == 0, (
        f"the training process died (status {proc.returncode}):\n{proc.stderr[-3000:]}"
    )
    result = json.loads(proc.stdout.splitlines()[-1])
    assert len(result["warnings"]) == 1 and "No space left on device" in result["warnings"][0]
    assert result["committed"] == [5, 15] and result["healthy"] and result["temp_files"] == []


# -- a read-only root -----------------------------------------------------------------------------
def test_a_read_only_root_refuses_writers_clearly_and_serves_readers(
    tmpfs: Path, make_run: Callable[..., Run]
) -> None:
    root = tmpfs / "root"
    run = make_run(root)
    run.train(range(25))
    h = run.system.exp_hash
    assert h is not None
    committed = run.committed()
    run.system.close()
    remount(tmpfs, "ro")

    for open_writer in (
        lambda: CheckpointManager(root),
        lambda: AutomaticCheckpointSystem(CheckpointConfig(root_log_dir=root), ledger=Ledger()),
        lambda: get_checkpoint_system(root_log_dir=root, checkpoint_frequency=10),
    ):
        with pytest.raises(RootError) as exc:
            open_writer()
        message = str(exc.value)
        assert str(root) in message and "read-only" in message and "mode='r'" in message, message

    reader = CheckpointManager(root, mode="r")
    assert reader.experiments() == [h]
    assert {e.step: (e.bytes, e.xxh3_128) for e in reader.checkpoints(h)} == committed
    assert reader.load(h)["step"] == 20 and reader.verify().healthy
    listing = subprocess.run(
        [sys.executable, "-m", "weightslab.cli", "ls", str(root), "--json"], capture_output=True, text=True
    )
    assert listing.returncode == 0, listing.stderr
    assert [e["exp_hash"] for e in json.loads(listing.stdout)["experiments"]] == [h]


# -- files damaged behind our back ----------------------------------------------------------------
def damage(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif how == "bit_flip":  # same size: only the checksum can tell
        flipped = bytearray(path.read_bytes())
        flipped[len(flipped) // 2] ^= 0x10
        path.write_bytes(bytes(flipped))
    else:  # pragma: no cover
        raise ValueError(how)


@pytest.mark.parametrize("how", ["deleted", "truncated", "bit_flip"])
def test_a_damaged_step_file_is_a_clear_error_and_resume_falls_back(
    tmp_path: Path, how: str, make_run: Callable[..., Run]
) -> None:
    root = tmp_path / "root"
    first = make_run(root)
    first.train(range(35))
    h = first.system.exp_hash
    assert h is not None
    committed = first.committed()
    assert sorted(committed) == [10, 20, 30]
    first.system.close()
    newest = root / "checkpoints" / h / "model" / f"{h}_step_000030.pt"
    damage(newest, how)

    reader = CheckpointManager(root, mode="r")
    with pytest.raises(CheckpointCorruptedError) as exc:
        reader.load(h, 30)
    assert exc.value.path == str(newest) and "weightslab verify" in str(exc.value)
    assert reader.load(h, 20)["step"] == 20  # the others still load
    (problem,) = reader.verify().problems
    assert (problem.kind, problem.step) == ("missing" if how == "deleted" else "corrupt", 30)

    second = make_run(root, seed=3)
    messages = caught(lambda: second.system.resume())
    assert messages == []
    assert second.system.last_step == 20
    unreadable = [e for e in second.manager.events() if e["event"] == "checkpoint_unreadable"]
    assert [(e["step"], str(newest) in e["error"]) for e in unreadable] == [(30, True)]
    assert caught(lambda: second.train(range(21, 45))) == []  # training keeps running
    assert {s: first.losses[s] for s in range(21, 35)} == {s: second.losses[s] for s in range(21, 35)}
    now = second.committed()
    assert {s: now[s] for s in (10, 20)} == {s: committed[s] for s in (10, 20)}  # nothing else lost
    assert second.manager.load(h, 40)["step"] == 40
    second.system.close()


@pytest.mark.parametrize("how", ["deleted", "bit_flip"])
def test_the_continued_run_saves_again_over_a_damaged_checkpoint(
    tmp_path: Path, how: str, make_run: Callable[..., Run]
) -> None:
    """After falling back past a damaged step file, passing that step again checkpoints it again."""
    root = tmp_path / "root"
    first = make_run(root)
    first.train(range(35))
    h = first.system.exp_hash
    assert h is not None
    first.system.close()
    damage(root / "checkpoints" / h / "model" / f"{h}_step_000030.pt", how)
    second = make_run(root, seed=3)
    assert second.system.resume() == 21
    second.train(range(21, 31))
    assert sorted(second.committed()) == [10, 20, 30]
    report = second.manager.verify()
    assert report.healthy, report.problems
    weight = dict(second.model.named_parameters())["0.weight"]
    assert torch.equal(second.manager.load(h, 30)["models"]["model"]["0.weight"], weight)
    second.system.close()


# -- broken manifests -----------------------------------------------------------------------------
BREAKAGES: dict[str, Callable[[Path], object]] = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "not_json": lambda p: p.write_text("this is not JSON {"),
    "empty": lambda p: p.write_bytes(b""),
    "wrong_shape": lambda p: p.write_text("[]"),
    "deleted": lambda p: p.unlink(),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_manifest_is_rebuilt_from_what_verifies_never_emptied(
    tmp_path: Path, breakage: str, make_run: Callable[..., Run]
) -> None:
    root = tmp_path / "root"
    run = make_run(root)
    run.train(range(45), change_lr_at=25)  # parent: 10, 20; child (with a parent): 25, 30, 40
    child = run.system.exp_hash
    assert child is not None
    run.system.close()
    path = root / "checkpoints" / child / "manifest.json"
    original_bytes = path.read_bytes()
    original = json.loads(original_bytes)
    assert [e["step"] for e in original["checkpoints"]] == [25, 30, 40] and original["parent"] is not None
    BREAKAGES[breakage](path)
    broken_bytes = path.read_bytes() if path.exists() else None

    if broken_bytes is not None:  # a reader never repairs: it names the file and the way out
        with pytest.raises(ManifestError) as exc:
            CheckpointManager(root, mode="r").manifest(child)
        assert str(path) in str(exc.value) and "rebuild_manifest" in str(exc.value)

    writer = CheckpointManager(root)  # a writer rebuilds it from the step files that verify
    rebuilt = json.loads(path.read_bytes())
    keep = ("step", "file", "bytes", "xxh3_128", "trigger", "metrics")
    assert [{k: e[k] for k in keep} for e in rebuilt["checkpoints"]] == [
        {k: e[k] for k in keep} for e in original["checkpoints"]
    ]
    for key in ("format", "exp_hash", "parent", "architecture_hash", "hyperparams_hash", "retention"):
        assert rebuilt[key] == original[key], key
    kept = sorted(path.parent.glob("manifest.json.broken-*"))
    if broken_bytes is None:
        assert kept == []
    else:
        assert len(kept) == 1 and kept[0].read_bytes() == broken_bytes
    (event,) = [e for e in writer.events() if e["event"] == "manifest_rebuilt"]
    assert event["exp_hash"] == child and event["recovered"] == [25, 30, 40]
    assert event["kept_broken_as"] == (None if broken_bytes is None else str(kept[0].relative_to(root)))
    assert writer.verify().healthy
    writer.close()

    resumed = make_run(root, seed=4)  # and training goes on from the newest checkpoint
    assert resumed.system.resume() == 41
    assert caught(lambda: resumed.train(range(41, 51))) == []
    assert sorted(resumed.committed()) == [25, 30, 40, 50]
    resumed.system.close()


def test_a_rebuild_leaves_out_a_step_file_that_does_not_load(
    tmp_path: Path, make_run: Callable[..., Run]
) -> None:
    root = tmp_path / "root"
    run = make_run(root)
    run.train(range(35))
    h = run.system.exp_hash
    assert h is not None
    committed = run.committed()
    run.system.close()
    exp = root / "checkpoints" / h
    damage(exp / "model" / f"{h}_step_000020.pt", "truncated")
    (exp / "manifest.json").write_text("{")
    writer = CheckpointManager(root)
    assert {e.step: (e.bytes, e.xxh3_128) for e in writer.checkpoints(h)} == {
        s: committed[s] for s in (10, 30)
    }
    (event,) = [e for e in writer.events() if e["event"] == "manifest_rebuilt"]
    assert event["recovered"] == [10, 30]
    writer.close()


def test_a_manifest_broken_while_training_is_rewritten_whole_at_the_next_commit(
    tmp_path: Path, make_run: Callable[..., Run]
) -> None:
    run = make_run(tmp_path / "root")
    run.train(range(25))
    h = run.system.exp_hash
    assert h is not None
    before = run.committed()
    path = run.manager.experiment(h).manifest
    path.write_text("{ broken")
    assert caught(lambda: run.train(range(25, 31))) == []
    run.system.flush()
    raw = json.loads(path.read_text())
    assert {e["step"]: (e["bytes"], e["xxh3_128"]) for e in raw["checkpoints"]} == {
        **before,
        30: run.committed()[30],
    }
    assert CheckpointManager(tmp_path / "root", mode="r").verify().healthy
    run.system.close()
