"""``weightslab backup``: the critical checkpoints copied to a second root that verifies and resumes.

The source is written by a real training loop (two experiments: a config change at step 17). The
interrupted backups are real processes killed with SIGKILL once a file they copy has landed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import train_step
from tests.s3.conftest import S3Server, s3_server, s3_url  # noqa: F401  (fixtures of the s3 test)
from weightslab.cli.main import main
from weightslab.errors import CheckpointCorruptedError, CheckpointNotFoundError, RootError
from weightslab.format.journal import last_active_experiment
from weightslab.format.manifest import PendingReplacement
from weightslab.inspect import open_root
from weightslab.inspect.backup import STAGING, backup_root
from weightslab.inspect.compare import compare_checkpoints
from weightslab.registry.ledger import Ledger
from weightslab.store.manager import CheckpointManager
from weightslab.store.verify import Problem
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig

# val/loss reported at each saved step: the best of the first experiment (5) is not its newest (15)
VAL_LOSS = {5: 0.3, 10: 0.5, 15: 0.4, 17: 0.45, 20: 0.2, 25: 0.25}
_ENV = {k: v for k, v in os.environ.items() if k not in {"COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR"}}


@dataclass
class Source:
    root: Path
    a: str  # steps 5, 10, 15: best 5, newest 15
    b: str  # steps 17 (config_change), 20, 25: best 20, newest 25


def model_and_optimizer(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def open_system(root: Path, ledger: Ledger, **options: Any) -> AutomaticCheckpointSystem:
    config = CheckpointConfig(
        root_log_dir=root,
        checkpoint_frequency=5,
        monitor="val/loss",
        async_save=False,
        durable=False,
        **options,
    )
    return AutomaticCheckpointSystem(config, ledger=ledger)


def train(system: AutomaticCheckpointSystem, ledger: Ledger, steps: range, config: dict[str, Any]) -> None:
    model, opt = ledger.get("model"), ledger.get("optimizer")
    for step in steps:
        train_step(model, opt)
        if step == 17:
            config["lr"] = 0.05
            for group in opt.param_groups:
                group["lr"] = 0.05
            system.checkpoint_on_config_change()
        system.checkpoint_on_step(step, metrics={"val/loss": VAL_LOSS.get(step, 1.0)})


@pytest.fixture
def source(tmp_path: Path) -> Source:
    ledger = Ledger()
    system = open_system(tmp_path / "src", ledger)
    model, opt = model_and_optimizer()
    config = {"lr": 0.1}
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_hyperparams("config", config)
    train(system, ledger, range(1, 26), config)
    system.tag(20, "candidate", description="lowest loss so far")
    system.close()
    a, b = open_root(tmp_path / "src").experiments()
    return Source(tmp_path / "src", a, b)


def run(capsys: pytest.CaptureFixture[str], *args: object, code: int = 0) -> Any:
    """The command in this process with ``--json``; returns the parsed output."""
    status = main([*map(str, args), "--json"])
    out, err = capsys.readouterr()
    assert status == code, err
    return json.loads(out)


def copied(data: dict[str, Any], action: str = "copied") -> set[tuple[str, int, tuple[str, ...]]]:
    return {(i["exp_hash"], i["step"], tuple(i["reasons"])) for i in data["items"] if i["action"] == action}


def entries(root: Path | str, exp_hash: str) -> dict[int, dict[str, Any]]:
    return {e.step: e.to_dict() for e in open_root(root).manifest(exp_hash).checkpoints}


def test_backup_copies_best_and_latest_as_a_root_that_verifies(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "backup"
    data = run(capsys, "backup", source.root, "--to", dest)
    assert copied(data) == {
        (source.a, 5, ("best",)),
        (source.a, 15, ("latest", "branch point")),  # the second experiment continued from it
        (source.b, 20, ("best",)),
        (source.b, 25, ("latest",)),
    }
    assert (data["copied"], data["skipped"], data["failed"]) == (4, 0, 0)
    # the source's record of each checkpoint, bytes and all: seq, metrics, tags, description, checksum
    for h, steps in ((source.a, {5, 15}), (source.b, {20, 25})):
        src, backup = entries(source.root, h), entries(dest, h)
        assert set(backup) == steps and all(backup[s] == src[s] for s in steps)
        for name in (
            f"model/{h}_step_{min(steps):06d}.pt",
            f"hp/{h}_config.yaml",
            f"model/{h}_architecture.pkl",
        ):
            assert (dest / "checkpoints" / h / name).read_bytes() == (
                source.root / "checkpoints" / h / name
            ).read_bytes()
    assert entries(dest, source.b)[20]["tags"] == ["candidate"]
    assert open_root(dest).manifest(source.b).parent == open_root(source.root).manifest(source.b).parent
    assert last_active_experiment(dest / "logs" / "events.jsonl") == source.b
    assert not (dest / "logs" / STAGING).exists()

    assert main(["verify", str(dest)]) == 0
    assert "4 checkpoints verified, no problems" in capsys.readouterr().out
    assert main(["backup", str(source.root), "--to", str(dest)]) == 0  # the text report, to a pipe
    out, err = capsys.readouterr()
    assert err == "" and "\x1b[" not in out
    table = [line for line in out.splitlines() if str(dest) not in line]  # a long path may not wrap
    assert max(len(line) for line in table) <= 100, out
    assert f"copied 0 checkpoints (0 bytes) to {dest}; 4 already there" in out


def test_backup_is_incremental_and_prunes_on_request(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "backup"
    run(capsys, "backup", source.root, "--to", dest)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.rglob("*_step_*.pt")}
    again = run(capsys, "backup", source.root, "--to", dest)
    assert (again["copied"], again["skipped"]) == (0, 4)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.rglob("*_step_*.pt")} == before

    ledger = Ledger()  # the run goes on: resumes, trains to step 30
    system = open_system(source.root, ledger)
    model, opt = model_and_optimizer(seed=3)
    config = {"lr": 0.05}
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_hyperparams("config", config)
    assert system.resume() == 26
    train(system, ledger, range(26, 31), config)
    system.close()
    third = run(capsys, "backup", source.root, "--to", dest)
    assert copied(third) == {(source.b, 30, ("latest",))}
    assert third["skipped"] == 3 and set(entries(dest, source.b)) == {20, 25, 30}  # 25 is not chosen now
    pruned = run(capsys, "backup", source.root, "--to", dest, "--prune")
    assert copied(pruned, "pruned") == {(source.b, 25, ())}  # no longer the newest, never the best
    assert set(entries(dest, source.b)) == {20, 30} and set(entries(dest, source.a)) == {5, 15}
    assert not (dest / "checkpoints" / source.b / "model" / f"{source.b}_step_000025.pt").exists()
    assert main(["verify", str(dest)]) == 0


def test_a_step_saved_again_at_the_source_replaces_its_copy(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "backup"
    run(capsys, "backup", source.root, "--to", dest, "--experiment", source.a)
    old = entries(dest, source.a)[15]
    ledger = Ledger()  # the first experiment's configuration trained again from step 11, without resume()
    system = open_system(source.root, ledger)
    model, opt = model_and_optimizer(seed=5)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_hyperparams("config", {"lr": 0.1})
    train(system, ledger, range(11, 16), {"lr": 0.1})  # step 15 is saved again, over the first one
    system.close()
    new = entries(source.root, source.a)[15]
    assert new["xxh3_128"] != old["xxh3_128"]
    data = run(capsys, "backup", source.root, "--to", dest, "--experiment", source.a)
    assert copied(data) == {(source.a, 15, ("latest", "branch point"))}
    assert entries(dest, source.a)[15] == new and "pending" not in new
    assert run(capsys, "verify", dest)["healthy"]


def test_dry_run_all_experiment_and_tagged(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "backup"
    dry = run(capsys, "backup", source.root, "--to", dest, "--dry-run", "--all")
    assert len(copied(dry, "would copy")) == 6 and dry["dry_run"] is True
    assert not dest.exists()
    only_a = run(capsys, "backup", source.root, "--to", dest, "--all", "--experiment", source.a[:5])
    assert copied(only_a) == {(source.a, 5, ("all",)), (source.a, 10, ("all",))} | {
        (source.a, 15, ("all", "branch point"))
    }
    assert open_root(dest).experiments() == [source.a]
    tagged = backup_root(open_root(source.root), dest, experiments=[source.b], tagged="candidate")
    assert {(i.step, i.reasons) for i in tagged.items} == {
        (20, ("best", "tagged candidate")),
        (25, ("latest",)),
    }


def test_backup_root_resumes_like_the_source(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "backup"
    run(capsys, "backup", source.root, "--to", dest)
    saved = open_root(source.root).load(source.b, 25)["models"]["model"]
    ledger = Ledger()
    system = open_system(dest, ledger)  # restoring is opening the backup
    model, opt = model_and_optimizer(seed=7)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_hyperparams("config", {"lr": 0.05})
    assert system.resume() == 26
    assert system.exp_hash == source.b
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    system.close()


# A backup process that stops, for good, at the first progress report of one phase: right after the
# first file was staged ("copying") or placed ("placing"); or ("committing") when the manager commits
# the copied entries (every file of the experiment placed, its manifest not yet written). The test
# kills it there.
WORKER = textwrap.dedent(
    """
    import signal, sys
    from weightslab.inspect import open_root
    from weightslab.inspect.backup import backup_root

    class StopAt:
        def __init__(self, phase):
            self.phase, self.current = phase, ""
        def start(self, description, total):
            self.current = description
        def advance(self, amount=1):
            if self.current.startswith(self.phase):
                signal.pause()  # SIGKILLed here

    def stop_at_commit(frame, event, arg):
        if event == "call" and frame.f_code.co_name == "_write_manifest":
            if frame.f_back is not None and frame.f_back.f_code.co_name == "commit_copied":
                signal.pause()  # SIGKILLed here

    if sys.argv[3] == "committing":
        sys.setprofile(stop_at_commit)
    backup_root(open_root(sys.argv[1]), sys.argv[2], all_checkpoints=True, tracker=StopAt(sys.argv[3]))
    """
)


def wait_for(path_glob: Callable[[], Iterable[Path]], proc: subprocess.Popen[bytes], what: str) -> Path:
    """Wait until a file matching ``path_glob()`` exists (or the worker exits, which is a failure)."""
    while True:
        found = sorted(path_glob())
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"the backup exited ({proc.returncode}) before {what}: {proc.stderr!r}")
        # re-check after the worker runs a little more; bounded by the test timeout
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.02)


@pytest.mark.parametrize(("phase", "earlier"), [("copying", False), ("placing", False), ("copying", True)])
def test_killed_backup_leaves_a_root_that_verifies_and_a_rerun_completes_it(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str], phase: str, earlier: bool
) -> None:
    dest = tmp_path / "backup"
    if earlier:  # an earlier backup holds the first experiment: its entries must survive the kill
        backup_root(open_root(source.root), dest, experiments=[source.a], all_checkpoints=True)
        first_files = {p: p.read_bytes() for p in dest.rglob("*_step_*.pt")}
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(source.root), str(dest), phase], stderr=subprocess.PIPE, env=_ENV
    )
    try:
        if phase == "copying":
            landed = wait_for(lambda: (dest / "logs" / STAGING).rglob("*_step_*.pt"), proc, "staging a file")
        else:
            model_dir = dest / "checkpoints" / source.a / "model"
            landed = wait_for(lambda: model_dir.glob("*_step_*.pt"), proc, "placing a file")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and landed.exists()
    report = run(capsys, "verify", dest)
    assert report["healthy"] and report["problems"] == []
    if earlier:
        assert report["checked"] == 3 and {p: p.read_bytes() for p in first_files} == first_files
        assert open_root(dest).experiments() == [source.a]
    else:
        assert report["checked"] == 0 and open_root(dest).experiments() == []  # no entry without bytes

    done = run(capsys, "backup", source.root, "--to", dest, "--all")
    assert done["failed"] == 0 and done["copied"] + done["skipped"] == 6
    assert run(capsys, "verify", dest)["checked"] == 6
    for h in (source.a, source.b):
        assert entries(dest, h) == entries(source.root, h)
    assert not (dest / "logs" / STAGING).exists()


def test_killed_between_placing_and_committing_in_an_experiment_the_backup_had(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "backup"
    backup_root(open_root(source.root), dest, experiments=[source.a])  # steps 5 and 15 of the first
    before = entries(dest, source.a)
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(source.root), str(dest), "committing"],
        stderr=subprocess.PIPE,
        env=_ENV,
    )
    placed = dest / "checkpoints" / source.a / "model" / f"{source.a}_step_000010.pt"
    try:
        # the commit comes after this rename, and the worker stops at the commit: killed in between
        wait_for(lambda: [placed] if placed.exists() else [], proc, "placing step 10")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    report = open_root(dest).verify()
    assert (report.checked, report.ok) == (2, 2)  # the committed copies are untouched
    assert report.problems == [Problem("orphaned", source.a, str(placed), 10, "no manifest entry")]
    assert entries(dest, source.a) == before and open_root(dest).experiments() == [source.a]

    done = run(capsys, "backup", source.root, "--to", dest, "--all")  # its open removes the orphan
    assert done["failed"] == 0 and copied(done) == {
        (source.a, 10, ("all",)),
        (source.b, 17, ("all",)),
        (source.b, 20, ("all",)),
        (source.b, 25, ("all",)),
    }
    removed = [e["files"] for e in open_root(dest).events() if e["event"] == "leftovers_removed"]
    assert removed == [[str(placed.relative_to(dest))]]
    report = open_root(dest).verify()
    assert report.healthy and report.checked == 6
    for h in (source.a, source.b):
        assert entries(dest, h) == entries(source.root, h)


class AtCopying:
    """A tracker that runs ``action`` once, when the backup starts copying experiment ``exp_hash``:
    what a training that writes the source meanwhile does (the plan has been made by then)."""

    def __init__(self, exp_hash: str, action: Callable[[], None]) -> None:
        self.exp_hash, self.action, self.done = exp_hash, action, False

    def start(self, description: str, total: float | None) -> None:
        if description == f"copying {self.exp_hash[:8]}" and not self.done:
            self.done = True
            self.action()

    def advance(self, amount: float = 1) -> None:
        pass


def test_a_checkpoint_the_source_deletes_meanwhile_fails_and_nothing_is_pruned(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "backup"
    backup_root(open_root(source.root), dest, experiments=[source.a], all_checkpoints=True)

    def retention_deletes_the_best_of_b() -> None:
        with CheckpointManager(source.root) as training:
            training.delete(source.b, 20)

    # the plan chose b@20 (its best); it goes while a is copied, before b is
    result = backup_root(
        open_root(source.root), dest, prune=True, tracker=AtCopying(source.a, retention_deletes_the_best_of_b)
    )
    (failed,) = result.failed
    assert (failed.exp_hash, failed.step, failed.reasons) == (source.b, 20, ("best",))
    assert "removed from the source meanwhile" in failed.detail
    assert {(i.exp_hash, i.step) for i in result.items if i.action == "copied"} == {(source.b, 25)}
    # a@10 is no longer chosen, but a run with a failure prunes nothing
    assert result.count("pruned") == 0 and any(n.startswith("nothing pruned") for n in result.notes)
    assert set(entries(dest, source.a)) == {5, 10, 15} and set(entries(dest, source.b)) == {25}
    assert open_root(dest).verify().healthy

    again = run(capsys, "backup", source.root, "--to", dest, "--prune")
    assert again["failed"] == 0 and copied(again, "pruned") == {(source.a, 10, ())}


def test_a_step_the_source_saves_again_meanwhile_is_copied_in_its_new_version(
    source: Source, tmp_path: Path
) -> None:
    dest = tmp_path / "backup"
    planned = entries(source.root, source.b)[25]

    def training_saves_25_again() -> None:
        with CheckpointManager(source.root) as training:
            data = training.load(source.b, 25, mmap=False)
            data["models"]["model"] = {k: v + 1 for k, v in data["models"]["model"].items()}
            training.save(source.b, 25, data, trigger="manual", metrics={"val/loss": 0.25})

    result = backup_root(open_root(source.root), dest, tracker=AtCopying(source.a, training_saves_25_again))
    assert not result.failed and result.count("copied") == 4
    new = entries(source.root, source.b)[25]
    assert new["xxh3_128"] != planned["xxh3_128"] and entries(dest, source.b)[25] == new
    assert open_root(dest).verify().healthy


def test_prune_keeps_the_checkpoints_that_children_continued_from(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "backup"
    run(capsys, "backup", source.root, "--to", dest)
    parent = open_root(source.root).manifest(source.b).parent
    assert parent is not None and (parent.exp_hash, parent.checkpoint) == (source.a, 15)
    ledger = Ledger()  # the first configuration trains on to step 20: its new best and newest
    system = open_system(source.root, ledger)
    model, opt = model_and_optimizer(seed=9)
    ledger.register_model("model", model)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_hyperparams("config", {"lr": 0.1})
    train(system, ledger, range(18, 21), {"lr": 0.1})
    system.close()
    assert set(entries(source.root, source.a)) == {5, 10, 15, 20}

    data = run(capsys, "backup", source.root, "--to", dest, "--prune")
    assert copied(data) == {(source.a, 20, ("latest", "best"))}
    assert (source.a, 15, ("branch point",)) in copied(data, "skipped")  # neither best nor newest now
    assert copied(data, "pruned") == {(source.a, 5, ())}
    assert set(entries(dest, source.a)) == {15, 20}

    with CheckpointManager(source.root) as owner:  # removed from the source by hand
        owner.delete(source.a, 15, reason="manual")
    dry = run(capsys, "backup", source.root, "--to", dest, "--prune", "--dry-run")
    assert copied(dry, "would prune") == set()
    data = run(capsys, "backup", source.root, "--to", dest, "--prune")
    assert data["pruned"] == 0 and set(entries(dest, source.a)) == {15, 20}  # b in the backup needs it
    assert any("step 15" in n and "no longer committed in the source" in n for n in data["notes"])
    backup = open_root(dest)
    assert backup.branch_points(source.a) == {15} and backup.verify().healthy
    assert backup.load(source.a, 15)["step"] == 15  # the lineage resumes from the backup


def test_verify_existing_copies_again_a_copy_damaged_in_place(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "backup"
    run(capsys, "backup", source.root, "--to", dest)
    copy = dest / "checkpoints" / source.b / "model" / f"{source.b}_step_000020.pt"
    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # the same size: the manifest and the size still agree
    copy.write_bytes(bytes(raw))
    assert backup_root(open_root(source.root), dest).count("skipped") == 4  # trusted by default
    assert not open_root(dest).verify().healthy

    dry = backup_root(open_root(source.root), dest, dry_run=True, verify_existing=True)
    assert [(i.step, i.action, i.detail) for i in dry.items if i.action != "skipped"] == [
        (20, "would copy", "the backup's copy does not match its manifest entry")
    ]
    result = run(capsys, "backup", source.root, "--to", dest, "--verify-existing")
    (again,) = [i for i in result["items"] if i["action"] == "copied"]
    skipped = [i for i in result["items"] if i["action"] == "skipped"]
    assert (again["exp_hash"], again["step"], len(skipped)) == (source.b, 20, 3)
    assert "copied again" in again["detail"]
    source_file = source.root / "checkpoints" / source.b / "model" / copy.name
    assert copy.read_bytes() == source_file.read_bytes() and "pending" not in entries(dest, source.b)[20]
    assert open_root(dest).verify().healthy


def test_copies_are_committed_through_the_managers_commit_api(source: Source, tmp_path: Path) -> None:
    dest = tmp_path / "backup"
    result = backup_root(open_root(source.root), dest, experiments=[source.a])
    events = open_root(dest).events()
    created = [e for e in events if e["event"] == "experiment_created"]
    saved = [(e["step"], e["replaced"]) for e in events if e["event"] == "checkpoint_saved"]
    assert [e["backup_of"] for e in created] == [result.source] and saved == [(5, False), (15, False)]

    record = open_root(source.root).manifest(source.a)
    ten, fifteen = record.entry(10), record.entry(15)
    assert ten is not None and fifteen is not None
    with pytest.raises(RootError, match="read-only"):
        open_root(dest).commit_copied(record, [ten], placed=[10], backup_of="elsewhere")
    with CheckpointManager(dest) as writer:
        # the commit rule: an entry is committed only once its file is in place
        with pytest.raises(CheckpointCorruptedError, match="not there"):
            writer.commit_copied(record, [ten], placed=[10], backup_of="elsewhere")
        assert writer.manifest(source.a).steps() == [5, 15]
        with pytest.raises(CheckpointNotFoundError, match="no checkpoint at step 10"):
            writer.mark_replacing(source.a, 10, PendingReplacement(ten.bytes, ten.xxh3_128))
        marked = writer.mark_replacing(source.a, 15, PendingReplacement(ten.bytes, ten.xxh3_128))
        assert marked.pending == PendingReplacement(ten.bytes, ten.xxh3_128)
        assert writer.manifest(source.a).entry(15) == marked and writer.verify().healthy
    # never swapped: the next writer's open settles the entry on the version the file holds
    CheckpointManager(dest).close()
    assert open_root(dest).manifest(source.a).entry(15) == fifteen


def test_corrupt_source_file_is_reported_and_not_copied(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = source.root / "checkpoints" / source.a / "model" / f"{source.a}_step_000015.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    dest = tmp_path / "backup"
    data = run(capsys, "backup", source.root, "--to", dest, code=1)
    (failed,) = [i for i in data["items"] if i["action"] == "failed"]
    assert (failed["exp_hash"], failed["step"]) == (source.a, 15)
    assert "does not match its manifest entry" in failed["detail"]
    assert set(entries(dest, source.a)) == {5} and set(entries(dest, source.b)) == {20, 25}
    assert main(["verify", str(dest)]) == 0


def test_writer_lock_of_the_destination_not_of_the_source(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "backup"
    ledger = Ledger()
    running = open_system(source.root, ledger)  # a training holds the source's lock: reading is fine
    try:
        assert run(capsys, "backup", source.root, "--to", dest)["copied"] == 4
    finally:
        running.close()
    with CheckpointManager(dest, mode="w"):  # a second writer of the destination is refused
        assert main(["backup", str(source.root), "--to", str(dest)]) == 2
        assert "already open for writing" in capsys.readouterr().err


def test_destinations_that_are_refused(
    source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backup", str(source.root), "--to", str(source.root / "data" / "backup")]) == 2
    assert "must lie outside the source root" in capsys.readouterr().err
    assert main(["backup", str(source.root / "data" / ".."), "--to", str(source.root)]) == 2
    assert "must lie outside" in capsys.readouterr().err
    busy = tmp_path / "notes"
    busy.mkdir()
    (busy / "todo.txt").write_text("mine\n")
    assert main(["backup", str(source.root), "--to", str(busy)]) == 2
    assert "is not empty and is not a weightslab root" in capsys.readouterr().err
    assert (busy / "todo.txt").read_text() == "mine\n" and sorted(os.listdir(busy)) == ["todo.txt"]


@pytest.mark.s3
def test_backup_to_an_object_store_verifies_and_compares(
    source: Source,
    s3_server: S3Server,  # noqa: F811
    s3_url: str,  # noqa: F811
) -> None:
    options = s3_server.storage_options()
    result = backup_root(open_root(source.root), s3_url, storage_options=options)
    assert result.count("copied") == 4 and not result.failed
    remote = CheckpointManager(s3_url, mode="r", storage_options=options)
    report = remote.verify()
    assert report.healthy and report.checked == 4
    assert {e.step for e in remote.checkpoints(source.b)} == {20, 25}
    comparison = compare_checkpoints(remote, [f"{source.b}@20", f"{source.b}@25"])
    assert comparison.metrics == {"val/loss": [0.2, 0.25]}
    assert comparison.pairs[0].weights.l2 > 0
    again = backup_root(open_root(source.root), s3_url, storage_options=options)
    assert again.count("skipped") == 4 and again.count("copied") == 0
