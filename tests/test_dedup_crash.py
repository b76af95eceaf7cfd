"""Crash safety of storage="dedup": real training processes killed with SIGKILL, then resumed.

Killed between writing a save's blobs and committing it, or in the middle of collecting the blobs of
a dropped checkpoint, a root must keep every promise: every committed checkpoint verifies with all
the blobs it references (never a dangling reference), the left-over blobs are only orphans, the
next run resumes and ends with exactly the weights of an uninterrupted run, and its first
collection removes the orphans.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weightslab.format.blobs import referenced_digests
from weightslab.format.stepfile import load_torch_file
from weightslab.inspect.gc import run_gc
from weightslab.store.manager import CheckpointManager

WORKER = Path(__file__).with_name("dedup_worker.py")
REPO = WORKER.parent.parent
TIMEOUT_S = 300  # a normal run takes a few seconds; generous for a loaded machine


def run_worker(workdir: Path, name: str, root: Path, *extra: str) -> tuple[int, list[str]]:
    """Run the worker to its end (or its kill); returns (exit status, progress lines)."""
    progress = workdir / f"{name}.progress"
    with open(workdir / f"{name}.stderr", "wb") as stderr:
        proc = subprocess.run(
            [sys.executable, str(WORKER), "--root", str(root), "--progress", str(progress), *extra],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=TIMEOUT_S,
            check=False,
        )
    return proc.returncode, progress.read_text().splitlines() if progress.exists() else []


def stored_blobs(root: Path) -> set[str]:
    return {p.name for p in (root / "blobs").rglob("*") if p.is_file() and ".tmp-" not in p.name}


def referenced(root: Path) -> set[str]:
    reader = CheckpointManager(root, mode="r")
    refs: set[str] = set()
    for h in reader.experiments():
        for entry in reader.manifest(h).checkpoints:
            refs |= set(referenced_digests(load_torch_file(reader.experiment(h).resolve(entry.file))))
    return refs


@pytest.fixture(scope="module")
def reference_digest(tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("reference")
    rc, lines = run_worker(work, "reference", work / "root")
    assert rc == 0, (work / "reference.stderr").read_text()
    assert lines[-1].startswith("done ")
    return lines[-1].split()[1]


@pytest.mark.parametrize("point", ["after-blobs", "during-gc"])
def test_a_kill_leaves_orphans_only_and_the_next_run_is_exact(
    point: str, tmp_path: Path, reference_digest: str
) -> None:
    root = tmp_path / "root"
    rc, lines = run_worker(tmp_path, "killed", root, "--crash-point", point, "--crash-after", "6")
    assert rc == -signal.SIGKILL, (tmp_path / "killed.stderr").read_text()
    assert lines[-1].startswith(f"killed {point}")
    # what the kill left: every committed checkpoint verifies, blobs included (no dangling reference)
    reader = CheckpointManager(root, mode="r")
    report = reader.verify()
    assert report.healthy, report.problems
    refs = referenced(root)
    assert refs <= stored_blobs(root)
    orphans = stored_blobs(root) - refs
    assert orphans, "the kill should have left the blobs of the uncommitted save or of the collection"
    # the next run resumes after the last commit and ends exactly where an uninterrupted run does
    rc, lines = run_worker(tmp_path, "resumed", root)
    assert rc == 0, (tmp_path / "resumed.stderr").read_text()
    start = int(lines[0].split()[1])
    # the kill came at step 6 or later of the training thread; the writer may have been one save behind
    assert 5 <= start <= 8
    assert lines[-1] == f"done {reference_digest}"
    # its first collection removed the orphans: the store holds exactly what is referenced
    assert stored_blobs(root) == referenced(root)
    assert CheckpointManager(root, mode="r").verify().healthy


def test_gc_after_a_kill_removes_the_orphans(tmp_path: Path) -> None:
    root = tmp_path / "root"
    rc, _ = run_worker(tmp_path, "killed", root, "--crash-point", "after-blobs", "--crash-after", "4")
    assert rc == -signal.SIGKILL
    before = stored_blobs(root)
    refs = referenced(root)
    result = run_gc(root)
    removed = {Path(i.path).name for i in result.items if i.kind == "blob"}
    assert removed == before - refs and removed
    assert stored_blobs(root) == refs
    reader = CheckpointManager(root, mode="r")
    assert reader.verify().healthy
    latest = reader.load()  # the last committed checkpoint still loads whole
    assert all(isinstance(v, torch.Tensor) for v in latest["models"]["model"].values())
