"""Deleting a checkpoint does not wait for the kernel to free its file.

The manifest entry goes first (the commit), then the step file is renamed aside and unlinked on a
background thread; ``close`` waits for those unlinks, and a crash before one leaves a temporary file
that the next writer's open removes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from weightslab.format.layout import TMP_MARKER
from weightslab.policy.retention import RetentionPolicy
from weightslab.store.manager import CheckpointManager

from .conftest import bare_experiment, writes

REPO = Path(__file__).resolve().parent.parent
H = "0123456789abcdef"


def test_a_deleted_step_is_gone_at_once_and_its_file_after_close(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path / "root") as mgr:
        bare_experiment(mgr, H)
        for step in range(6):
            mgr.save(H, step, writes(os.urandom(1 << 20)), trigger="step")
        model = mgr.experiment(H).model_dir
        deleted = mgr.apply_retention(H, RetentionPolicy(keep_last=2))
        assert deleted == [0, 1, 2, 3]
        assert mgr.manifest(H).steps() == [4, 5]  # committed before delete returned
        for step in deleted:  # the names are free at once: renamed aside
            assert not (model / f"{H}_step_{step:06d}.pt").exists()
    left = sorted(os.listdir(model))
    assert [n for n in left if TMP_MARKER in n] == []  # close waited for the unlinks
    assert [n for n in left if "_step_" in n] == [f"{H}_step_000004.pt", f"{H}_step_000005.pt"]


def test_a_step_saved_again_right_after_its_deletion_is_not_unlinked(tmp_path: Path) -> None:
    with CheckpointManager(tmp_path / "root") as mgr:
        bare_experiment(mgr, H)
        for round_ in range(20):  # delete and save the same step back to back, many times
            mgr.save(H, 7, writes(os.urandom(1 << 18) + bytes([round_])), trigger="step")
            mgr.delete(H, 7)
            entry = mgr.save(H, 7, writes(b"kept %d" % round_), trigger="step")
            mgr.reaper.drain()
            assert mgr.verify_entry(H, entry) == mgr.experiment(H).step_file(7)  # size and checksum
            assert mgr.experiment(H).step_file(7).read_bytes() == b"kept %d" % round_
            mgr.delete(H, 7)


def test_a_crash_before_the_unlink_leaves_a_leftover_the_next_writer_removes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    script = textwrap.dedent(
        f"""
        import os, sys, threading
        from weightslab.storage.local import LocalStorage
        from weightslab.store.manager import CheckpointManager

        class SlowUnlink(LocalStorage):  # a disk whose unlink of a large file never returns in time
            def remove(self, path):
                if ".tmp-" in path.name:
                    threading.Event().wait()
                super().remove(path)

        mgr = CheckpointManager(sys.argv[1])
        mgr.storage = SlowUnlink()
        mgr.create_experiment(exp_hash={H!r}, architecture_hash="a", hyperparams_hash="h", parent=None,
                              retention={{}}, hyperparams={{}}, models={{}})
        for step in range(3):
            mgr.save({H!r}, step, lambda w: w.write(os.urandom(64 << 20)), trigger="step")
        model = mgr.experiment({H!r}).model_dir
        mgr.delete({H!r}, 0)  # committed; the file renamed aside, its unlink queued
        print(" ".join(n for n in os.listdir(model) if ".tmp-" in n), flush=True)
        os._exit(0)  # killed before the background unlink
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(root)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    model = root / "checkpoints" / H / "model"
    (left,) = proc.stdout.split()  # the file renamed aside, never unlinked
    assert TMP_MARKER in left and (model / left).is_file()
    with CheckpointManager(root) as mgr:  # the writer's open cleans crash leftovers
        assert [n for n in os.listdir(model) if TMP_MARKER in n] == []
        assert mgr.manifest(H).steps() == [1, 2]
        report = mgr.verify()
        assert report.healthy and report.ok == 2
