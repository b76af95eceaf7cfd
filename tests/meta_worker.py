"""A writer of a large manifest that kills itself (SIGKILL) at one moment of a commit-log write.

Run by ``tests/test_metadata_scale.py``: ``python -m tests.meta_worker ROOT PROGRESS POINT AFTER``.
It opens ROOT for writing (the first process creates the experiment and commits SEED_ENTRIES
checkpoints), then commits checkpoints forever, annotating and deleting some on the way. After each
commit returns it appends ``saved STEP`` (or ``deleted STEP``) to PROGRESS and fsyncs it, so the test
knows what was durably committed. Once AFTER commits have been made by this process, the next time
POINT is reached the process sends itself SIGKILL (``none``: it stops after AFTER commits, exit 0).

The points (a profile hook finds them, as in ``tests/crash_worker.py``):

* ``append_torn``: half of a commit-log line is written, then the process dies (a torn last line);
* ``append_before_fsync``: the whole line is written, not yet fsynced;
* ``compact_base_mid_write``: a compaction's new base is partly in its temporary file;
* ``compact_before_rename``: the new (empty) log exists, the new base is complete but not renamed;
* ``compact_before_old_log_removed``: the new base is in place, the old log not yet deleted.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from weightslab.format.layout import parse_manifest_log
from weightslab.store.manager import CheckpointManager

EXP = "00000000000000aa"
SEED_ENTRIES = 70
POINTS = (
    "append_torn",
    "append_before_fsync",
    "compact_base_mid_write",
    "compact_before_rename",
    "compact_before_old_log_removed",
)


def payload_of(step: int) -> bytes:
    """The bytes of step ``step``'s file (the test checks them)."""
    return (f"step {step} ".encode()) * (1 + step % 7)


def _local(frame: FrameType | None, name: str) -> Any:
    return None if frame is None else frame.f_locals.get(name)


def _is_log(path: Any) -> bool:
    return isinstance(path, Path) and parse_manifest_log(path.name) is not None


def _in_base_write(frame: FrameType | None) -> bool:
    """A ``write_atomic`` of a ``manifest.json`` is on the stack above ``frame``."""
    while frame is not None:
        if frame.f_code.co_name == "write_atomic":
            path = _local(frame, "path")
            return isinstance(path, Path) and path.name == "manifest.json"
        frame = frame.f_back
    return False


class Hook:
    def __init__(self, point: str) -> None:
        self.point = point
        self.armed = False

    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if not self.armed:
            return
        name = frame.f_code.co_name if event == "call" else getattr(arg, "__name__", "")
        if self.point in ("append_torn", "append_before_fsync") and event == "c_call":
            if frame.f_code.co_name == "append_whole_line" and name == "write":
                if not _is_log(_local(frame.f_back, "path")):
                    return
                if self.point == "append_torn":
                    line = _local(frame, "line")
                    os.write(_local(frame, "fd"), line[: max(1, len(line) // 2)])
                    self.die()
            elif frame.f_code.co_name == "append_line" and name == "fsync" and _is_log(_local(frame, "path")):
                self.die()
        elif self.point == "compact_base_mid_write" and event == "call" and name == "write":
            writer = _local(frame, "self")
            if type(writer).__name__ == "HashingWriter" and _in_base_write(frame.f_back):
                data = _local(frame, "data")
                raw = getattr(writer, "_raw", None)
                if raw is not None and data is not None:
                    raw.write(bytes(data)[: max(1, len(data) // 2)])
                    raw.flush()
                self.die()
        elif self.point == "compact_before_rename" and event == "c_call" and name == "replace":
            if frame.f_code.co_name == "write_atomic" and _in_base_write(frame):
                self.die()
        elif (
            self.point == "compact_before_old_log_removed"
            and event == "call"
            and name == "remove"
            and type(_local(frame, "self")).__name__ == "LocalStorage"
            and _is_log(_local(frame, "path"))
        ):
            self.die()


def _record(progress: int, line: str) -> None:
    os.write(progress, (line + "\n").encode())
    os.fsync(progress)


def main() -> int:
    root, progress_path, point, after = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    hook = Hook(point)
    sys.setprofile(hook)
    progress = os.open(progress_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    manager = CheckpointManager(root, mode="w")
    if not manager.has_experiment(EXP):
        manager.create_experiment(
            exp_hash=EXP,
            architecture_hash="arch",
            hyperparams_hash="hp",
            parent=None,
            retention={},
            hyperparams={},
            models={},
        )
    steps = manager.manifest(EXP).steps()
    step = max(steps, default=-1) + 1
    if not steps:
        for _ in range(SEED_ENTRIES):
            manager.save(EXP, step, _writer(step), trigger="step")
            _record(progress, f"saved {step}")
            step += 1
    made = 0
    while True:
        if made >= after:
            if point == "none":
                manager.close()
                return 0
            hook.armed = True
        manager.save(EXP, step, _writer(step), trigger="step", metrics={"loss": 1.0 / (step + 1)})
        _record(progress, f"saved {step}")
        if step % 5 == 0:
            manager.annotate(EXP, step - 1, tags=("five",))
            _record(progress, f"tagged {step - 1}")
        if step % 7 == 0:
            oldest = manager.manifest(EXP).steps()[0]
            manager.delete(EXP, oldest, reason="test")
            _record(progress, f"deleted {oldest}")
        step += 1
        made += 1


def _writer(step: int) -> Any:
    data = payload_of(step)

    def produce(writer: Any) -> None:
        writer.write(data)

    return produce


if __name__ == "__main__":
    sys.exit(main())
