"""The training process that the crash suite (tests/test_crash.py) kills with SIGKILL and resumes.

It trains a small deterministic model through the public API (``get_checkpoint_system``, the
``register_*`` functions, ``resume()``, ``checkpoint_on_step``) with durable background saves, a
retention policy that deletes (``keep_last=2``) and a hyperparameter change at a fixed step (so the
experiment hash changes once). Every run calls ``resume()`` first, as a real training script does: on
a fresh root it returns 0.

It writes a progress file, one line per event, with unbuffered appends (a kill tears at most the last
line): ``ready <time>`` once torch is imported, ``resumed <start> <time>`` after ``resume()``, ``step <s> <loss>
<digest>`` after each training step (the loss as ``float.hex`` and an xxh3 digest of the weights,
both exact), and ``done <time>`` at the end, after the final state is written to ``--final``. None of this
touches an RNG, so it does not change what the run computes.

Crash points (test instrumentation of this process only; the package is not modified): with
``--crash-point NAME --crash-after STEP`` a profile hook (``sys.setprofile`` on the training thread,
``threading.setprofile`` on the background writer) kills the process with SIGKILL at the first time
the point is reached once the training loop is at ``STEP`` or later. ``--count-points FILE`` records
at which loop steps each point is reached instead, so the suite can choose reachable targets.

An object-store root works too (tests/s3/test_s3_crash.py): ``--root s3://bucket/prefix`` with
``--storage-options JSON`` (s3fs's options, passed to ``get_checkpoint_system``). The crash points that
are about local files (a rename, a folder fsync) never fire there; :data:`S3_CRASH_POINTS` adds the
moments of an S3 root: a PUT of a step object, of a manifest (the commit) or of the journal, each
with ``--crash-delay SECONDS``: the kill comes that long after the PUT started, from another thread,
so that it lands while the request is in flight (or just after it was answered).

The preemption tests (tests/test_preemption.py) run it with ``--handle-signals`` and ``--pause-at``
(a sleep before one step, written as ``pausing <step> <time>``, during which they send signals).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

TOTAL_STEPS = 200
FREQUENCY = 5
KEEP_LAST = 2
CHANGE_STEP = 103  # not a multiple of FREQUENCY: the change gets its own checkpoint
LR, CHANGED_LR = 1e-2, 3e-3

# The loop step the training thread is at; the crash points compare with it.
CURRENT_STEP = -1


def _path_local(frame: FrameType | None, name: str = "path") -> Path | None:
    value = None if frame is None else frame.f_locals.get(name)
    return value if isinstance(value, Path) else None


def _writing(frame: FrameType, predicate: Callable[[Path], bool]) -> bool:
    """True when a ``write_atomic`` frame on this stack writes a path that satisfies ``predicate``."""
    f: FrameType | None = frame
    while f is not None:
        if f.f_code.co_name == "write_atomic":
            path = _path_local(f)
            return path is not None and predicate(path)
        f = f.f_back
    return False


def _is_step_file(path: Path) -> bool:
    return path.suffix == ".pt" and "_step_" in path.name


def _is_manifest(path: Path) -> bool:
    return path.name == "manifest.json"


def _caller(frame: FrameType) -> str:
    return frame.f_back.f_code.co_name if frame.f_back is not None else ""


def _self_type(frame: FrameType) -> str:
    return type(frame.f_locals.get("self")).__name__


def _journal_event(frame: FrameType) -> str | None:
    return frame.f_locals.get("event") if _self_type(frame) == "Journal" else None


# name -> (profile event, function name, predicate on the frame). For "call" the frame is the called
# function's (its arguments are in f_locals); for "c_call" it is the Python frame calling the builtin.
CRASH_POINTS: dict[str, tuple[str, str, Callable[[FrameType], bool]]] = {
    # inside a save: part of the step file is in its temporary file
    "step_file_mid_write": (
        "call",
        "write",
        lambda f: (
            _self_type(f) == "HashingWriter"
            and getattr(f.f_locals.get("self"), "bytes", 0) > 0
            and _writing(f, _is_step_file)
        ),
    ),
    # the temporary step file is complete and fsynced, not yet renamed
    "step_file_before_rename": (
        "c_call",
        "replace",
        lambda f: f.f_code.co_name == "write_atomic" and _is_step_file(_path_local(f) or Path()),
    ),
    # renamed, the folder not yet fsynced
    "step_file_before_dir_fsync": (
        "call",
        "fsync",
        lambda f: _caller(f) == "write_atomic" and _is_step_file(_path_local(f.f_back) or Path()),
    ),
    # between the file and the manifest: the step file is durable, its entry not written
    "before_manifest_commit": (
        "call",
        "_write_manifest",
        lambda f: _caller(f) in ("save", "_write_and_commit"),
    ),
    # a new manifest.json sits in its temporary file
    "manifest_before_rename": (
        "c_call",
        "replace",
        lambda f: f.f_code.co_name == "write_atomic" and _is_manifest(_path_local(f) or Path()),
    ),
    # committed, the journal line not yet written
    "before_saved_journal": ("call", "append", lambda f: _journal_event(f) == "checkpoint_saved"),
    # retention: about to drop an entry from the manifest
    "retention_before_manifest": (
        "call",
        "delete",
        lambda f: _self_type(f) == "CheckpointManager" and _caller(f) == "apply_retention",
    ),
    # retention: the entry is gone from the manifest, the file still under its name (about to be
    # renamed aside for the background unlink)
    "retention_before_unlink": ("call", "rename_aside", lambda f: _caller(f) == "discard"),
    # retention: the file renamed aside, its background unlink about to start (the reaper's thread)
    "retention_before_background_unlink": ("call", "remove", lambda f: _caller(f) == "_run"),
    # retention: the file renamed aside, the journal line not yet written
    "retention_before_journal": ("call", "append", lambda f: _journal_event(f) == "checkpoint_deleted"),
    # hash change: the change was noticed, nothing written yet
    "hash_change_switch": ("call", "_switch", lambda f: True),
    # an experiment folder with its config and architecture files but no manifest yet
    "create_before_manifest": ("call", "_write_manifest", lambda f: _caller(f) == "create_experiment"),
    # the new experiment's manifest exists, the journal does not know it yet
    "create_before_journal": ("call", "append", lambda f: _journal_event(f) == "experiment_created"),
}


def _putting(frame: FrameType, predicate: Callable[[str], bool]) -> bool:
    """True when ``frame`` is an ``S3Storage._put`` of a key that satisfies ``predicate``."""
    key = frame.f_locals.get("key")
    return _self_type(frame) == "S3Storage" and isinstance(key, str) and predicate(key)


# The moments of an S3 root (they never fire on a local one). Not in CRASH_POINTS, so the local suite's
# plan (every point of CRASH_POINTS at least once) is unchanged.
S3_CRASH_POINTS: dict[str, tuple[str, str, Callable[[FrameType], bool]]] = {
    # the PUT of a step object (one request: the objects here are below the multipart part size)
    "step_put_in_flight": (
        "call",
        "_put",
        lambda f: _putting(f, lambda k: k.endswith(".pt") and "_step_" in k.rsplit("/", 1)[-1]),
    ),
    # the conditional PUT (If-Match) of a manifest: the commit itself
    "manifest_put_in_flight": ("call", "_put", lambda f: _putting(f, lambda k: k.endswith("/manifest.json"))),
    # the read-modify-write PUT of the journal
    "journal_put_in_flight": ("call", "_put", lambda f: _putting(f, lambda k: k.endswith("/events.jsonl"))),
}

_TABLE: dict[tuple[str, str], list[tuple[str, Callable[[FrameType], bool]]]] = {}
for _point, (_event, _name, _pred) in {**CRASH_POINTS, **S3_CRASH_POINTS}.items():
    _TABLE.setdefault((_event, _name), []).append((_point, _pred))
# the same moment where the file is removed in place (an object store, a dedup or sharded root)
_TABLE.setdefault(("call", "remove"), []).append(
    ("retention_before_unlink", lambda f: _caller(f) == "delete")
)


class CrashHook:
    """A profile function that kills this process at one crash point, or counts where points are hit."""

    def __init__(
        self, point: str | None, after: int, counts: dict[str, list[int]] | None, delay: float = 0.0
    ) -> None:
        self.point = point
        self.after = after
        self.counts = counts
        self.delay = delay
        self.armed = False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            key = (event, frame.f_code.co_name)
        elif event == "c_call":
            key = (event, getattr(arg, "__name__", ""))
        else:
            return
        checks = _TABLE.get(key)
        if checks is None:
            return
        for point, predicate in checks:
            if self.counts is not None:
                if predicate(frame):
                    self.counts.setdefault(point, []).append(CURRENT_STEP)
            elif point == self.point and self.after <= CURRENT_STEP and predicate(frame):
                if self.delay <= 0:
                    os.kill(os.getpid(), signal.SIGKILL)
                elif not self.armed:  # the kill comes from another thread while this one goes on
                    self.armed = True
                    timer = threading.Timer(self.delay, os.kill, (os.getpid(), signal.SIGKILL))
                    timer.daemon = True
                    timer.start()

    def install(self) -> None:
        sys.setprofile(self)
        threading.setprofile(self)  # the background writer thread starts later and inherits it


class Progress:
    """Unbuffered, append-only progress lines (a SIGKILL tears at most the last one)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def line(self, text: str) -> None:
        os.write(self._fd, (text + "\n").encode())


def _root_arg(value: str) -> str | Path:
    """``--root``: an ``s3://`` URL stays a string (a Path would fold its ``//``), anything else a Path."""
    return value if value.startswith("s3://") else Path(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=_root_arg, required=True, help="a folder, or s3://bucket/prefix")
    parser.add_argument(
        "--storage-options", type=json.loads, help="JSON: s3fs options for an s3:// root (storage_options)"
    )
    parser.add_argument("--progress", type=Path, required=True)
    parser.add_argument("--final", type=Path, required=True, help="where to write the final state")
    parser.add_argument("--crash-point", choices=sorted({**CRASH_POINTS, **S3_CRASH_POINTS}))
    parser.add_argument("--crash-after", type=int, default=0)
    parser.add_argument(
        "--crash-delay", type=float, default=0.0, help="kill this many seconds after the point, not at it"
    )
    parser.add_argument("--count-points", type=Path)
    parser.add_argument("--handle-signals", action="store_true", help="checkpoint and exit on SIGTERM/SIGINT")
    parser.add_argument(
        "--pause-at", metavar="STEP:SECONDS", help="sleep before training STEP (a slow data loader)"
    )
    args = parser.parse_args(argv)

    progress = Progress(args.progress)
    import torch
    import xxhash

    import weightslab as wl
    from weightslab.components import checkpoint_on_step, get_checkpoint_system

    global CURRENT_STEP
    torch.set_num_threads(1)
    progress.line(f"ready {time.time()}")
    counts: dict[str, list[int]] | None = {} if args.count_points else None
    if args.crash_point or counts is not None:
        CrashHook(args.crash_point, args.crash_after, counts, args.crash_delay).install()

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 4),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=40, gamma=0.7)
    config = {"lr": LR, "batch_size": 32}
    remote: dict[str, Any] = {} if args.storage_options is None else {"storage_options": args.storage_options}
    system = get_checkpoint_system(
        root_log_dir=args.root,
        checkpoint_frequency=FREQUENCY,
        keep_last=KEEP_LAST,
        durable=True,
        async_save=True,
        handle_signals=args.handle_signals,
        **remote,
    )
    wl.register_model("model", model)
    wl.register_optimizer("optimizer", optimizer)
    wl.register_scheduler("scheduler", scheduler)
    wl.register_hyperparams("config", config)
    start = system.resume()
    progress.line(f"resumed {start} {time.time()}")
    target = torch.linspace(-1, 1, 4)
    pause_step, pause_s = -1, 0.0
    if args.pause_at:
        at, seconds = args.pause_at.split(":")
        pause_step, pause_s = int(at), float(seconds)
    for step in range(start, TOTAL_STEPS):
        if step == pause_step:
            progress.line(f"pausing {step} {time.time()}")
            time.sleep(pause_s)  # a signal's handler runs during the sleep, which then goes on
        x = torch.randn(int(config["batch_size"]), 16)
        loss = (model(x) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step == CHANGE_STEP:  # a hyperparameter change: a new experiment from this step on
            config["lr"] = CHANGED_LR
            for group in optimizer.param_groups:
                group["lr"] = CHANGED_LR
        value = float(loss.detach())
        CURRENT_STEP = step
        checkpoint_on_step(step, metrics={"train/loss": value})
        weights = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        progress.line(f"step {step} {value.hex()} {xxhash.xxh3_64_hexdigest(weights.numpy().tobytes())}")
    system.close()
    sys.setprofile(None)
    threading.setprofile(None)
    if counts is not None:
        args.count_points.write_text(json.dumps(counts))
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        },
        args.final,
    )
    progress.line(f"done {time.time()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
