"""Experiment summaries (``summary.json``) and the ``ls`` that reads them instead of the manifests.

- the writer's tally, advanced commit by commit, equals counting the manifest again, whatever the
  sequence of commits, rewinds, deletions, annotations and retention changes;
- the writer keeps a current summary beside every manifest, below and above the commit log's
  threshold; a stale one (a crash between the commit and the summary) is never used;
- ``ls`` from the summaries prints exactly what the full path prints, text and JSON, and hands every
  case it cannot answer the same way back to the full path;
- on the fast path ``ls`` loads neither the storage layer nor rich's console.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from weightslab.cli.listing import quick_ls, read_current, rows
from weightslab.cli.main import main
from weightslab.cli.output import make_console
from weightslab.cli.tables import print_summary
from weightslab.format.manifest import CheckpointEntry, Manifest, ParentRef
from weightslab.format.summary import SUMMARY_NAME, Tally, advance, tally
from weightslab.inspect.experiments import experiment_infos
from weightslab.policy.retention import RetentionPolicy
from weightslab.storage.local import LocalStorage
from weightslab.store.manager import CheckpointManager

from .conftest import bare_experiment, writes

REPO = Path(__file__).resolve().parent.parent
H, G, K = "0123456789abcdef", "fedcba9876543210", "00000000000000aa"


def _save(mgr: CheckpointManager, h: str, step: int, loss: float | None) -> None:
    metrics = {} if loss is None else {"loss": loss}
    mgr.save(h, step, writes(b"x" * (step % 13 + 1) * 5), trigger="step", metrics=metrics)


def _fields(t: Tally) -> dict[str, Any]:
    names = [n for n in Tally.__slots__ if not n.startswith("_")]
    return {name: getattr(t, name) for name in [*names, "latest", "best"]}


def _full_ls(root: Path, *args: str) -> str:
    """What the full path prints (``print_summary`` on the console ``ls`` makes, or the JSON)."""
    buf = io.StringIO()
    mgr = CheckpointManager(root, mode="r")
    if "--json" in args:
        infos = experiment_infos(mgr)
        active = next((i.exp_hash for i in infos if i.active), None)
        data = {"root": str(mgr.root), "active": active, "experiments": [i.to_dict() for i in infos]}
        return json.dumps(data, indent=2, allow_nan=False, default=str) + "\n"
    print_summary(mgr, console=make_console(file=buf))
    return buf.getvalue()


class _Pipe(io.StringIO):
    encoding = "utf-8"  # type: ignore[assignment]  # a pipe in a UTF-8 locale


def _quick(root: Path, *, as_json: bool = False, monitor: str | None = None) -> str | None:
    buf = _Pipe()
    with redirect_stdout(buf):
        done = quick_ls(str(root), as_json=as_json, monitor=monitor, mode=None)
    return buf.getvalue() if done else None


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "FORCE_COLOR",
        "TTY_COMPATIBLE",
        "TTY_INTERACTIVE",
        "COLUMNS",
        "JUPYTER_COLUMNS",
    ):  # pytest-xdist sets COLUMNS
        monkeypatch.delenv(name, raising=False)


# -- the tally --------------------------------------------------------------------------------------
def _entry(rng: random.Random, step: int) -> CheckpointEntry:
    metrics: dict[str, float | None] = {}
    roll = rng.random()
    if roll < 0.7:
        metrics["loss"] = rng.choice([0.5, 1.0, 2.0, rng.random(), 1, True])  # ties on purpose; ints
    elif roll < 0.8:
        metrics["loss"] = float("nan")  # never the best
    shards = ()
    name = f"model/{H}_step_{step:06d}.pt"
    if rng.random() < 0.1:
        from weightslab.format.manifest_entries import FileRecord

        name = f"model/{H}_step_{step:06d}"
        shards = (FileRecord(file=f"{name}/state.pt", bytes=3, xxh3_128="0" * 32),)
    elif rng.random() < 0.05:
        name = f"model/imported_{step}.pt"  # named otherwise: a listing cannot size it from the record
    return CheckpointEntry(
        step=step,
        file=name,
        bytes=rng.randint(1, 1000),
        xxh3_128="0" * 32,
        created=1.7e9 + step,
        trigger="step",
        metrics=metrics,
        shards=shards,
    )


@pytest.mark.parametrize("seed", range(12))
def test_the_tally_advanced_commit_by_commit_is_the_tally_counted_again(seed: int) -> None:
    rng = random.Random(seed)
    m = Manifest(exp_hash=H, architecture_hash="a", hyperparams_hash="h", created=1.7e9)
    m.retention = {"monitor": "loss", "mode": rng.choice(["min", "max"])}
    t = tally(m)
    for _ in range(300):
        steps = m.steps()
        op = rng.random()
        if op < 0.45 or not steps:
            nxt = m.committing(_entry(rng, rng.randint(0, 60)))  # a rewind when the step is not the last
        elif op < 0.6:
            nxt = m.without_steps(set(rng.sample(steps, k=min(len(steps), rng.randint(1, 3)))))
        elif op < 0.7:
            nxt = m.with_abandoned(set(rng.sample(steps, k=min(len(steps), 2))))
        elif op < 0.85:
            old = m.entry(rng.choice(steps))
            assert old is not None
            loss = rng.choice([None, 0.1, 5.0, old.metric("loss")])
            metrics = {} if loss is None else {"loss": loss}
            nxt = m.with_entry(CheckpointEntry(**{**old.__dict__, "metrics": metrics}))  # annotated
        elif op < 0.92:
            nxt = m.without_steps(set())
            nxt.retention = {"monitor": rng.choice(["loss", "acc", None]), "mode": rng.choice(["min", "max"])}
        else:
            nxt = m.with_entry(_entry(rng, rng.choice(steps)))  # a replacement of a committed step
        t = advance(t, nxt)
        assert _fields(t) == _fields(tally(nxt))
        nxt.forget_change()
        m = nxt


def test_the_best_is_ranked_as_retention_ranks_it() -> None:
    rng = random.Random(7)
    m = Manifest(exp_hash=H, architecture_hash="a", hyperparams_hash="h", created=1.7e9)
    for mode in ("min", "max"):
        m.retention = {"monitor": "loss", "mode": mode}
        for step in range(40):
            m = m.committing(_entry(rng, step))
        t = tally(m)
        ranked = RetentionPolicy(keep_best=1, monitor="loss", mode=mode).best(m.checkpoints, 1)
        assert (None if t.best is None else t.best[1]) == (ranked[0] if ranked else None)
        latest = m.latest()
        assert (None if t.latest is None else t.latest[1]) == (None if latest is None else latest.step)


# -- the writer keeps it ----------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [5, 150])  # a manifest written whole; a base and its commit log
def test_the_writer_keeps_a_current_summary_through_every_kind_of_commit(tmp_path: Path, steps: int) -> None:
    root = tmp_path / "root"
    with CheckpointManager(root, durable=False) as mgr:
        bare_experiment(mgr, H, {"monitor": "loss", "keep_last": 40})
        folder = str(mgr.experiment(H).dir)

        def check() -> None:
            record = read_current(folder, H)
            assert record is not None
            m = mgr.manifest(H)
            t = tally(m)
            assert record["checkpoints"] == len(m.checkpoints) == t.checkpoints
            assert record["step_bytes"] == t.step_bytes and record["step_files"] == t.step_files
            assert record["latest_step"] == (None if t.latest is None else t.latest[1])
            assert (record["best"] or {}).get("step") == (None if t.best is None else t.best[1])

        check()
        for s in range(steps):
            _save(mgr, H, s, 1.0 / (s + 1) if s % 7 else None)
            if s % 17 == 0:
                check()
        check()
        mgr.annotate(H, steps - 1, tags=["keep"], description="annotated")
        check()
        mgr.rewind(H, steps // 2)
        check()
        _save(mgr, H, steps // 2 + 1, 0.001)
        check()
        mgr.apply_retention(H, RetentionPolicy(keep_last=3))
        check()
        mgr.record_retention(H, {"monitor": "loss", "mode": "max"})
        check()


def test_a_summary_left_from_before_the_last_commit_is_not_used(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with CheckpointManager(root, durable=False) as mgr:
        bare_experiment(mgr, H, {"monitor": "loss"})
        for s in range(100):
            _save(mgr, H, s, 1.0)
        folder = Path(mgr.experiment(H).dir)
        before = (folder / SUMMARY_NAME).read_bytes()
        _save(mgr, H, 100, 0.5)  # appends one line to the log
        assert read_current(str(folder), H) is not None
    # a crash after the commit and before the summary: the old summary is back
    (folder / SUMMARY_NAME).write_bytes(before)
    assert read_current(str(folder), H) is None
    assert _quick(root) is None  # ls reads the manifests instead
    assert main(["ls", str(root)]) == 0
    # a writer that opens the root writes it again
    with CheckpointManager(root, durable=False) as mgr:
        record = read_current(str(folder), H)
        assert record is not None and record["checkpoints"] == 101 and record["best"]["step"] == 100
    for damaged in (b"", b"{", b'{"format": "weightslab.summary/9"}', b"[]"):
        (folder / SUMMARY_NAME).write_bytes(damaged)
        assert read_current(str(folder), H) is None and _quick(root) is None


def test_a_compaction_gives_a_summary_of_the_new_base(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with CheckpointManager(root, durable=False) as mgr:
        bare_experiment(mgr, H, {})
        folder = Path(mgr.experiment(H).dir)
        generations = set()
        for s in range(400):
            _save(mgr, H, s, None)
            record = read_current(str(folder), H)
            assert record is not None and record["checkpoints"] == s + 1
            generations.add(record["log_generation"])
    assert len(generations) > 2  # several compactions happened, each summarized


# -- ls from the summaries --------------------------------------------------------------------------
def _rich_root(path: Path) -> Path:
    """Experiments of every shape ls shows: a branch, a rewind, deletions, no monitor, max mode, logs."""
    with CheckpointManager(path, durable=False) as mgr:
        bare_experiment(mgr, H, {"monitor": "loss", "keep_last": 5})
        for s in range(80):
            _save(mgr, H, s, 1.0 / (s + 1))
        mgr.apply_retention(H, RetentionPolicy(keep_last=30, keep_best=1, monitor="loss"))
        bare_experiment(
            mgr, G, {"monitor": "loss", "mode": "max"}, parent=ParentRef(H, 79, "config_change", 79)
        )
        for s in range(80, 90):
            _save(mgr, G, s, float(s % 4))
        mgr.rewind(G, 84)
        _save(mgr, G, 85, 9.0)
        bare_experiment(mgr, K, {})
        _save(mgr, K, 0, None)
    return path


def test_ls_from_the_summaries_prints_what_the_full_path_prints(tmp_path: Path) -> None:
    root = _rich_root(tmp_path / "root")
    fast = _quick(root)
    assert fast is not None
    assert fast == _full_ls(root)
    fast_json = _quick(root, as_json=True)
    assert fast_json is not None and json.loads(fast_json) == json.loads(_full_ls(root, "--json"))
    assert fast_json == _full_ls(root, "--json")
    assert _quick(root, monitor="loss") is None  # K records no monitor: asking for one is the full path's


def test_ls_hands_back_what_it_cannot_answer_and_the_output_stays_the_same(tmp_path: Path) -> None:
    root = _rich_root(tmp_path / "root")
    assert _quick(root, monitor="acc") is None  # a ranking the summaries do not keep
    assert _quick(tmp_path / "nowhere") is None
    assert rows("s3://bucket/prefix", None, None) is None
    model = root / "checkpoints" / H / "model"
    extra = model / f"{H}_step_999999.pt"
    extra.write_bytes(b"left by a crash")  # a step file no entry lists: size_on_disk measures it
    assert _quick(root) is None
    extra.unlink()
    assert _quick(root) == _full_ls(root)
    (model / "notes.txt").write_bytes(b"12345")  # any other file is measured, as the full path does
    assert _quick(root) == _full_ls(root)
    os.symlink(model / "notes.txt", model / "link.txt")
    assert _quick(root) is None
    (model / "link.txt").unlink()
    # an experiment written by an older version: no summary, until a writer opens the root
    old = root / "checkpoints" / G / SUMMARY_NAME
    old.unlink()
    assert _quick(root) is None
    with CheckpointManager(root, durable=False):
        pass
    assert old.is_file() and _quick(root) == _full_ls(root)


def test_ls_of_an_empty_root_and_of_unusual_names(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    with CheckpointManager(empty, durable=False):
        pass
    assert _quick(empty) == _full_ls(empty)
    odd = _rich_root(tmp_path / "a:smile:b")  # rich reads emoji codes in the header: left to rich
    assert _quick(odd) is None
    wide = tmp_path / ("w" * 120)
    shutil.copytree(_rich_root(tmp_path / "src"), wide)
    with CheckpointManager(wide, durable=False):  # the copy's files have new inodes: summaries again
        pass
    assert _quick(wide) == _full_ls(wide)


def test_ls_on_summaries_loads_neither_the_storage_layer_nor_rich(tmp_path: Path) -> None:
    root = _rich_root(tmp_path / "root")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")}
    code = (
        "import sys; from weightslab.cli.main import main; code = main(['ls', sys.argv[1]]); "
        "sys.stdout.flush(); "
        "heavy = [m for m in ('weightslab.store.manager', 'weightslab.storage.local', 'rich.console', "
        "'weightslab.format.manifest', 'dataclasses') if m in sys.modules]; "
        "print('HEAVY', heavy, code)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(root)],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    listing, _, tail = proc.stdout.rpartition("HEAVY")
    assert tail.strip() == "[] 0"
    assert listing == _full_ls(root)


def test_metrics_given_as_ints_or_bools_list_as_the_manifest_reads_them(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with CheckpointManager(root, durable=False) as mgr:
        bare_experiment(mgr, H, {"monitor": "acc", "mode": "max"})
        mgr.save(H, 1, writes(b"a"), trigger="step", metrics={"acc": 1})
        mgr.save(H, 2, writes(b"b"), trigger="step", metrics={"acc": True})
    assert _quick(root) == _full_ls(root)
    assert _quick(root, as_json=True) == _full_ls(root, "--json")


def test_a_summary_left_in_a_folder_whose_manifest_is_gone_is_a_leftover(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with CheckpointManager(root, durable=False) as mgr:
        bare_experiment(mgr, H, {})
        folder = mgr.experiment(H).dir
    assert (folder / SUMMARY_NAME).is_file()
    for name in os.listdir(folder):  # the manifest lost, no step file: a folder a writer cleans
        if os.path.isfile(folder / name) and name != SUMMARY_NAME:
            os.unlink(folder / name)
    with CheckpointManager(root, durable=False) as mgr:
        assert not (folder / SUMMARY_NAME).exists()


class _FailingLogRemoval(LocalStorage):
    """A disk on which removing the old commit log after a compaction fails once (EIO)."""

    armed = False

    def remove(self, path: Path) -> None:
        if self.armed and path.name.startswith("manifest.") and path.name.endswith(".jsonl"):
            self.armed = False
            raise OSError(errno.EIO, "injected EIO removing the old log")
        super().remove(path)


def test_a_commit_that_fails_after_the_manifest_leaves_no_tally_to_advance_from(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with CheckpointManager(root, durable=False) as mgr:
        disk = _FailingLogRemoval(durable=False)
        mgr.storage = disk
        bare_experiment(mgr, H, {"monitor": "loss"})
        for s in range(300):
            _save(mgr, H, s, 1.0)
        disk.armed = True
        with pytest.raises(OSError, match="injected EIO"):
            mgr.rewind(H, 10)  # abandons 289 checkpoints: a compaction, whose cleanup fails
        _save(mgr, H, 1000, 2.0)
        record = read_current(str(mgr.experiment(H).dir), H)
        assert record is not None
        assert record["abandoned"] == tally(mgr.manifest(H)).abandoned == 289
    assert _quick(root) == _full_ls(root)
    assert _quick(root, as_json=True) == _full_ls(root, "--json")


def test_ls_lays_the_table_out_at_the_columns_rich_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _rich_root(tmp_path / "root")
    for columns, quick in (("120", True), ("100", True), ("40", False), ("wide", False)):
        monkeypatch.setenv("COLUMNS", columns)
        fast = _quick(root)
        assert (fast is not None) == quick, columns
        if fast is not None:
            assert fast == _full_ls(root), columns
