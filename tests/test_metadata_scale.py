"""A large manifest commits by appending to its commit log; readers fold it; crashes leave it whole.

Every test uses real files: a writer :class:`CheckpointManager` commits, a second, read-only one in
the same process (or a SIGKILLed subprocess, ``tests/meta_worker.py``) shows what another process sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from weightslab.errors import ManifestError
from weightslab.format.layout import MANIFEST_LOGGED_FORMAT, TMP_MARKER, parse_manifest_log
from weightslab.format.manifest import Manifest
from weightslab.format.manifest_log import LOG_MIN_ENTRIES
from weightslab.store.manager import CheckpointManager

from .conftest import writes
from .meta_worker import EXP, POINTS, SEED_ENTRIES, payload_of

REPO = Path(__file__).resolve().parent.parent
H = "0123456789abcdef"


def _open(root: Path) -> CheckpointManager:
    mgr = CheckpointManager(root, durable=False)
    if not mgr.has_experiment(H):
        mgr.create_experiment(
            exp_hash=H,
            architecture_hash="a",
            hyperparams_hash="h",
            parent=None,
            retention={"keep_last": None},
            hyperparams={},
            models={},
        )
    return mgr


def _save(mgr: CheckpointManager, steps: range) -> None:
    for s in steps:
        mgr.save(H, s, writes(b"s%d" % s), trigger="step", metrics={"loss": 1.0 / (s + 1)})


def _exp(root: Path, h: str = H) -> Path:
    return root / "checkpoints" / h


def _logs(root: Path, h: str = H) -> dict[int, Path]:
    return {g: p for p in _exp(root, h).iterdir() if (g := parse_manifest_log(p.name)) is not None}


def _seen_by_reader(root: Path, h: str = H) -> dict[str, Any]:
    return CheckpointManager(root, mode="r").manifest(h).to_dict()


def test_small_manifest_is_rewritten_whole_and_has_no_log(tmp_path: Path) -> None:
    mgr = _open(tmp_path)
    _save(mgr, range(LOG_MIN_ENTRIES - 1))
    raw = json.loads((_exp(tmp_path) / "manifest.json").read_text())
    assert raw["format"] == "weightslab.manifest/1"
    assert len(raw["checkpoints"]) == LOG_MIN_ENTRIES - 1
    assert _logs(tmp_path) == {}


def test_commits_of_a_large_manifest_append_one_line_each_and_readers_fold_them(tmp_path: Path) -> None:
    mgr = _open(tmp_path)
    _save(mgr, range(LOG_MIN_ENTRIES))  # the commit that reaches the threshold writes the first base
    base = _exp(tmp_path) / "manifest.json"
    raw = json.loads(base.read_text())
    assert raw["format"] == MANIFEST_LOGGED_FORMAT
    generation = raw["log_generation"]
    before = base.read_bytes()
    _save(mgr, range(LOG_MIN_ENTRIES, LOG_MIN_ENTRIES + 5))
    assert base.read_bytes() == before  # not rewritten
    lines = _logs(tmp_path)[generation].read_bytes().splitlines()
    assert [json.loads(line)["n"] for line in lines] == [1, 2, 3, 4, 5]
    assert [json.loads(line)["put"][0]["step"] for line in lines] == list(
        range(LOG_MIN_ENTRIES, LOG_MIN_ENTRIES + 5)
    )
    seen = _seen_by_reader(tmp_path)
    assert seen == mgr.manifest(H).to_dict()
    assert len(seen["checkpoints"]) == LOG_MIN_ENTRIES + 5


def test_every_kind_of_change_goes_through_the_log_and_folds_to_the_writers_manifest(tmp_path: Path) -> None:
    mgr = _open(tmp_path)
    _save(mgr, range(70))  # a base of 64 entries and 6 lines: far from its compaction
    generation = json.loads((_exp(tmp_path) / "manifest.json").read_text())["log_generation"]
    mgr.annotate(H, 10, tags=("best",), description="kept", metrics={"val": 0.5})
    mgr.delete(H, 3)
    mgr.save(H, 50, writes(b"replaced"), trigger="manual")  # a replacement: pending mark, then commit
    mgr.rewind(H, 60)  # 51..69 were abandoned by re-saving 50: 60 comes back
    mgr.record_retention(H, {"keep_last": 5})
    mgr.save(H, 61, writes(b"continued"), trigger="step")
    assert json.loads((_exp(tmp_path) / "manifest.json").read_text())["log_generation"] == generation
    assert len(_logs(tmp_path)[generation].read_bytes().splitlines()) == 6 + 8  # one line per write
    seen = CheckpointManager(tmp_path, mode="r").manifest(H)
    assert seen.to_dict() == mgr.manifest(H).to_dict()
    assert seen.retention == {"keep_last": 5}
    assert seen.entry(3) is None and seen.entry(10) is not None and seen.entry(10).tags == ("best",)
    assert (
        seen.entry(50) is not None and seen.entry(50).trigger == "manual" and seen.entry(50).pending is None
    )
    assert sorted(e.step for e in seen.checkpoints if e.abandoned) == [*range(51, 60), *range(62, 70)]
    assert seen.latest() is not None and seen.latest().step == 61
    mgr.close()
    reopened = CheckpointManager(tmp_path, durable=False)  # a writer's open reads the same state
    assert reopened.manifest(H).to_dict() == seen.to_dict()
    assert reopened.verify().healthy


def test_compaction_writes_a_new_base_and_removes_the_old_log(tmp_path: Path) -> None:
    mgr = _open(tmp_path)
    _save(mgr, range(LOG_MIN_ENTRIES))
    first = json.loads((_exp(tmp_path) / "manifest.json").read_text())["log_generation"]
    step = LOG_MIN_ENTRIES
    while json.loads((_exp(tmp_path) / "manifest.json").read_text())["log_generation"] == first:
        _save(mgr, range(step, step + 1))
        step += 1
        assert step < 10 * LOG_MIN_ENTRIES, "the log was never compacted"
    base_size = (_exp(tmp_path) / "manifest.json").stat().st_size
    assert step - LOG_MIN_ENTRIES > 10  # many appends per rewrite: amortised
    assert list(_logs(tmp_path)) == [first + 1]  # the old log went with its compaction
    assert all(p.stat().st_size <= base_size for p in _logs(tmp_path).values())
    assert _seen_by_reader(tmp_path) == mgr.manifest(H).to_dict()
    assert [e.step for e in mgr.manifest(H).checkpoints] == list(range(step))


def test_a_torn_last_line_is_not_a_commit_and_a_writer_compacts_it_away_on_open(tmp_path: Path) -> None:
    mgr = _open(tmp_path)
    _save(mgr, range(80))
    committed = mgr.manifest(H).to_dict()
    mgr.close()
    generation, log = max(_logs(tmp_path).items())
    with open(log, "ab") as f:  # what a crash in the middle of an append leaves
        f.write(b'{"g":%d,"n":99,"put":[{"step":500,"fi' % generation)
    assert _seen_by_reader(tmp_path) == committed
    writer = CheckpointManager(tmp_path, durable=False)
    assert writer.manifest(H).to_dict() == committed
    assert max(_logs(tmp_path)) == generation + 1  # compacted at once: the torn bytes are gone
    assert b'"step":500' not in b"".join(p.read_bytes() for p in _logs(tmp_path).values())
    _save(writer, range(80, 82))
    assert [e.step for e in CheckpointManager(tmp_path, mode="r").manifest(H).checkpoints] == list(range(82))


def test_a_broken_line_inside_the_log_is_an_error_and_the_writer_rebuilds(tmp_path: Path) -> None:
    mgr = _open(tmp_path)
    _save(mgr, range(70))
    _save(mgr, range(70, 73))
    mgr.close()
    generation, log = max(_logs(tmp_path).items())
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(lines[0] + b"not json\n" + b"".join(lines[2:]))
    with pytest.raises(ManifestError, match=r"line 2 is not valid JSON"):
        CheckpointManager(tmp_path, mode="r").manifest(H)
    writer = CheckpointManager(tmp_path, durable=False)  # rebuilds from the step files that load
    rebuilt = writer.manifest(H)
    assert len(rebuilt.checkpoints) == 0 or all(
        e.description == "recovered by rebuild_manifest" for e in rebuilt.checkpoints
    )
    kept = sorted(p.name for p in _exp(tmp_path).iterdir() if ".broken-" in p.name)
    assert any(name.startswith("manifest.json.broken-") for name in kept)
    assert any(name.startswith(f"manifest.{generation:06d}.jsonl.broken-") for name in kept)


def test_a_missing_log_is_an_error_naming_it(tmp_path: Path) -> None:
    mgr = _open(tmp_path)
    _save(mgr, range(70))
    mgr.close()
    for log in _logs(tmp_path).values():
        log.unlink()
    with pytest.raises(ManifestError, match=r"commit log manifest\.\d{6}\.jsonl is missing"):
        CheckpointManager(tmp_path, mode="r").manifest(H)


def test_an_old_root_with_a_large_whole_manifest_opens_unchanged_and_moves_to_the_log(tmp_path: Path) -> None:
    mgr = _open(tmp_path)
    _save(mgr, range(LOG_MIN_ENTRIES + 10))
    whole = Manifest.from_json(mgr.manifest(H).to_json())  # format /1, as older versions wrote it
    mgr.close()
    for log in _logs(tmp_path).values():
        log.unlink()
    (_exp(tmp_path) / "manifest.json").write_bytes(whole.to_json())
    assert _seen_by_reader(tmp_path) == whole.to_dict()
    writer = CheckpointManager(tmp_path, durable=False)
    assert writer.manifest(H).to_dict() == whole.to_dict()
    _save(writer, range(LOG_MIN_ENTRIES + 10, LOG_MIN_ENTRIES + 12))
    assert json.loads((_exp(tmp_path) / "manifest.json").read_text())["format"] == MANIFEST_LOGGED_FORMAT
    assert len(CheckpointManager(tmp_path, mode="r").manifest(H).checkpoints) == LOG_MIN_ENTRIES + 12


def test_shrinking_below_the_threshold_goes_back_to_one_whole_manifest(tmp_path: Path) -> None:
    mgr = _open(tmp_path)
    _save(mgr, range(LOG_MIN_ENTRIES + 2))
    for s in range(10):
        mgr.delete(H, s)
    raw = json.loads((_exp(tmp_path) / "manifest.json").read_text())
    assert raw["format"] == "weightslab.manifest/1" and len(raw["checkpoints"]) == LOG_MIN_ENTRIES - 8
    assert _logs(tmp_path) == {}


# -- SIGKILL during an append and during a compaction ------------------------------------------------


def _run_worker(root: Path, progress: Path, point: str, after: int) -> int:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.meta_worker", str(root), str(progress), point, str(after)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=600,
        check=False,
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.decode()[-2000:]
    return proc.returncode


def _durable(progress: Path) -> tuple[set[int], set[int]]:
    """(steps whose save returned and that were not deleted since, steps deleted) per the progress file."""
    saved: set[int] = set()
    deleted: set[int] = set()
    for line in progress.read_text().splitlines():
        what, _, step = line.partition(" ")
        if what == "saved":
            saved.add(int(step))
            deleted.discard(int(step))
        elif what == "deleted":
            saved.discard(int(step))
            deleted.add(int(step))
    return saved, deleted


def _check_root(root: Path, progress: Path) -> dict[str, Any]:
    """What a reader sees holds every returned commit, and every entry names its own bytes."""
    seen = CheckpointManager(root, mode="r").manifest(EXP)
    saved, deleted = _durable(progress)
    steps = {e.step for e in seen.checkpoints}
    assert saved <= steps, f"committed and lost: {sorted(saved - steps)}"
    assert not (steps & deleted), f"deleted and back: {sorted(steps & deleted)}"
    for e in seen.checkpoints:
        assert (_exp(root, EXP) / e.file).read_bytes() == payload_of(e.step)
    return seen.to_dict()


def _assert_in_window(root: Path, point: str) -> None:
    """The kill left what its moment leaves (so the test hit the window it names)."""
    exp = _exp(root, EXP)
    logs = _logs(root, EXP)
    generation = json.loads((exp / "manifest.json").read_text())["log_generation"]
    if point == "append_torn":
        assert not logs[generation].read_bytes().endswith(b"\n")
    elif point == "compact_base_mid_write":
        assert any(TMP_MARKER in p.name and "manifest.json" in p.name for p in exp.iterdir())
    elif point == "compact_before_rename":
        assert max(logs) == generation + 1 and logs[generation + 1].stat().st_size == 0
    elif point == "compact_before_old_log_removed":
        assert sorted(logs) == [generation - 1, generation]


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_during_a_log_append_or_a_compaction_loses_no_commit(tmp_path: Path, point: str) -> None:
    root, progress = tmp_path / "root", tmp_path / "progress"
    # from a few commits in (appends) to past the first compaction (about 60 lines of log)
    for after in (3, 75):
        rc = _run_worker(root, progress, point, after)
        assert rc == -signal.SIGKILL, f"{point} was never reached after {after} commits"
        _assert_in_window(root, point)
        seen = _check_root(root, progress)
        writer = CheckpointManager(root)  # recovery on open: torn tails compacted, stale logs removed
        assert writer.manifest(EXP).to_dict() == seen
        assert len(_logs(root, EXP)) <= 1
        report = writer.verify()
        assert report.healthy, report.problems
        writer.close()
    assert _run_worker(root, progress, "none", 20) == 0  # and the root goes on
    _check_root(root, progress)
    assert len(CheckpointManager(root, mode="r").manifest(EXP).checkpoints) > SEED_ENTRIES
