"""The crash suite: training processes killed with SIGKILL at random moments, then resumed.

A worker process (``tests/crash_worker.py``) trains a small deterministic model with durable background
saves, ``keep_last=2`` retention and a hyperparameter change at a fixed step. The suite kills it with
SIGKILL, either at a time drawn uniformly over its run, or (to hit the narrow windows on purpose) at a
chosen crash point: inside a step-file write, between the file and the manifest, while the manifest is
replaced, during retention deletes, during the hash change. After every kill a new process resumes on
the same root, and is itself a victim of the next kill, until a last process runs to the end.

After every process the suite reads the root itself (JSON and xxh3, not weightslab's reader) and checks:

* every manifest parses and every committed entry's file matches its size and checksum;
* the resume point is the newest committed checkpoint that verified before the kill, in the experiment
  that was active (walking to the parent experiment when the active one has none yet), or step 0;
* no committed checkpoint was lost: each one committed before a process ran is still committed after,
  or the journal records its retention delete (or, when the kill fell inside that delete before its
  journal line, retention was entitled to delete it: ``keep_last`` newer ones exist, not a branch point);
* no ``checkpoint_unreadable`` event (nothing committed ever failed to load), and ``verify()`` is healthy
  once a run completes;
* every training step any process ran gives exactly the loss and weights of an uninterrupted reference
  run, and the final weights, optimizer and scheduler state equal the reference's (``torch.equal``).

``WEIGHTSLAB_CRASH_TRIALS`` sets the number of kills (default 20, under a minute on two cores);
``WEIGHTSLAB_CRASH_SEED`` replays a trial plan. The summary is printed (``pytest -s``) and written to
``crash_summary.json`` under the test's ``tmp_path``.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash

from weightslab.components import CheckpointManager

from .crash_worker import CRASH_POINTS, KEEP_LAST, TOTAL_STEPS

WORKER = Path(__file__).with_name("crash_worker.py")
REPO = Path(__file__).resolve().parent.parent
TRIALS = int(os.environ.get("WEIGHTSLAB_CRASH_TRIALS", "20"))
SEED = int(os.environ.get("WEIGHTSLAB_CRASH_SEED", str(random.SystemRandom().randrange(2**32))))
KILLS_PER_CHAIN = 5  # processes killed on one root before a last one runs to the end
PARALLEL_CHAINS = 2
PROCESS_TIMEOUT_S = 240.0  # generous: CI machines are small and loaded

ACTIVATING = {"experiment_created", "experiment_activated", "checkpoint_saved", "resumed"}


# -- reading a root without weightslab --------------------------------------------------------------
@dataclass(frozen=True)
class Committed:
    """One manifest entry, as the suite read it."""

    exp_hash: str
    step: int
    file: str
    accepted: frozenset[tuple[int, str]]  # (bytes, xxh3_128) of the entry, and of a pending replacement
    seq: int = 0  # commit order
    abandoned: bool = False


@dataclass
class RootState:
    """What a root holds at one moment: parsed manifests, committed entries, journal, leftovers."""

    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    committed: dict[tuple[str, int], Committed] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    temp_files: int = 0
    uncommitted_step_files: int = 0
    folders_without_manifest: int = 0

    def expected_resume(self) -> tuple[str, int] | None:
        """The checkpoint resume() must load: (hash, step), or None for a fresh start at step 0."""
        active = None
        for record in self.events:
            if record.get("event") in ACTIVATING and isinstance(record.get("exp_hash"), str):
                active = record["exp_hash"]
        if active not in self.manifests:
            by_age = sorted(self.manifests, key=lambda h: (self.manifests[h]["created"], h))
            active = by_age[-1] if by_age else None
        upto: int | None = None
        seen: set[str] = set()
        while active is not None and active in self.manifests and active not in seen:
            seen.add(active)
            if upto is None:  # the active experiment: its live run's newest commit
                live = [c for (h, _), c in self.committed.items() if h == active and not c.abandoned]
                steps = [max(live, key=lambda c: c.seq).step] if live else []
            else:  # an ancestor: the checkpoint the branch continued from, or older
                steps = sorted((s for (h, s) in self.committed if h == active and s <= upto), reverse=True)
            if steps:
                return active, steps[0]  # every committed entry verified when the state was read
            parent = self.manifests[active].get("parent")
            active, upto = (parent["exp_hash"], parent.get("checkpoint")) if parent else (None, None)
            if upto is None:
                return None
        return None


def read_events(path: Path) -> list[dict[str, Any]]:
    """Journal records; a line torn by a kill is skipped, as readers must."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def file_digest(path: Path) -> tuple[int, str] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return len(data), xxhash.xxh3_128_hexdigest(data)


def read_root(root: Path) -> RootState:
    """Read manifests, verify every committed file, and count crash leftovers."""
    state = RootState(events=read_events(root / "logs" / "events.jsonl"))
    checkpoints = root / "checkpoints"
    if not checkpoints.is_dir():
        return state
    for exp_dir in sorted(p for p in checkpoints.iterdir() if p.is_dir()):
        h = exp_dir.name
        model_dir = exp_dir / "model"
        names = sorted(p.name for p in model_dir.iterdir()) if model_dir.is_dir() else []
        state.temp_files += sum(".tmp-" in n for n in names)
        manifest_path = exp_dir / "manifest.json"
        if not manifest_path.is_file():
            state.folders_without_manifest += 1
            continue
        try:
            manifest = json.loads(manifest_path.read_bytes())
            entries = manifest["checkpoints"]
        except (ValueError, KeyError, TypeError) as exc:
            state.problems.append(f"{manifest_path} does not parse after a kill: {exc}")
            continue
        state.manifests[h] = manifest
        listed = set()
        for e in entries:
            accepted = {(int(e["bytes"]), str(e["xxh3_128"]))}
            if e.get("pending"):
                accepted.add((int(e["pending"]["bytes"]), str(e["pending"]["xxh3_128"])))
            c = Committed(
                h,
                int(e["step"]),
                str(e["file"]),
                frozenset(accepted),
                int(e.get("seq", 0)),
                bool(e.get("abandoned", False)),
            )
            listed.add(Path(c.file).name)
            found = file_digest(exp_dir / c.file)
            if found not in c.accepted:
                state.problems.append(
                    f"committed {h} step {c.step} does not verify: {found} not in {accepted}"
                )
            state.committed[(h, c.step)] = c
        state.uncommitted_step_files += sum(
            n.endswith(".pt") and "_step_" in n and ".tmp-" not in n and n not in listed for n in names
        )
    return state


def branch_points(state: RootState, exp_hash: str) -> set[int]:
    return {
        m["parent"]["checkpoint"]
        for m in state.manifests.values()
        if m.get("parent")
        and m["parent"]["exp_hash"] == exp_hash
        and m["parent"].get("checkpoint") is not None
    }


# -- running workers -----------------------------------------------------------------------------
@dataclass
class Progress:
    """What a worker's progress file says it did."""

    ready_at: float | None = None
    start: int | None = None
    resumed_at: float | None = None
    steps: dict[int, tuple[str, str]] = field(default_factory=dict)
    done_at: float | None = None


def read_progress(path: Path) -> Progress:
    p = Progress()
    if not path.is_file():
        return p
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        try:
            if parts[0] == "ready" and len(parts) == 2:
                p.ready_at = float(parts[1])
            elif parts[0] == "resumed" and len(parts) == 3:
                p.start, p.resumed_at = int(parts[1]), float(parts[2])
            elif parts[0] == "step" and len(parts) == 4 and len(parts[3]) == 16:
                p.steps[int(parts[1])] = (parts[2], parts[3])
            elif parts[0] == "done" and len(parts) == 2:
                p.done_at = float(parts[1])
        except (IndexError, ValueError):
            continue  # the line a kill tore
    return p


def spawn(workdir: Path, name: str, root: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Start a worker; returns the process, its progress file and its final-state file."""
    progress, final = workdir / f"{name}.progress", workdir / f"{name}.final.pt"
    stderr = open(workdir / f"{name}.stderr", "wb")  # noqa: SIM115 (closed with the process below)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            "--root",
            str(root),
            "--progress",
            str(progress),
            "--final",
            str(final),
            *extra,
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"},
    )
    stderr.close()
    return proc, progress, final


def wait_for(proc: subprocess.Popen[bytes], progress: Path, what: str) -> Progress | None:
    """Poll the progress file until ``what`` ("ready" or "resumed") appears; None if the process ended first."""
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while time.monotonic() < deadline:
        p = read_progress(progress)
        if (p.ready_at if what == "ready" else p.resumed_at) is not None:
            return p
        if proc.poll() is not None:
            return None
        time.sleep(0.005)
    proc.kill()
    raise TimeoutError(f"worker did not reach {what!r} within {PROCESS_TIMEOUT_S}s")


def finish(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(timeout=PROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@dataclass
class Reference:
    """The uninterrupted run: per-step results, final state, timings and where crash points fire."""

    steps: dict[int, tuple[str, str]]
    final: dict[str, Any]
    open_s: float  # from "ready" to "resumed"
    train_s: float  # from "resumed" to "done"
    points: dict[str, list[int]]


def run_reference(workdir: Path) -> Reference:
    """Run the worker to the end twice at once: plainly (timings, results) and counting crash points."""
    workdir.mkdir(parents=True)
    plain = spawn(workdir, "reference", workdir / "root")
    counted = spawn(
        workdir, "counting", workdir / "counting-root", "--count-points", str(workdir / "points.json")
    )
    for proc, _, _ in (plain, counted):
        rc = finish(proc)
        assert rc == 0, (workdir / "reference.stderr").read_text() + (workdir / "counting.stderr").read_text()
    p, c = read_progress(plain[1]), read_progress(counted[1])
    assert sorted(p.steps) == list(range(TOTAL_STEPS))
    assert c.steps == p.steps, "the profile hook must not change what the run computes"
    assert p.ready_at and p.resumed_at and p.done_at
    return Reference(
        steps=p.steps,
        final=torch.load(plain[2], weights_only=True),
        open_s=p.resumed_at - p.ready_at,
        train_s=p.done_at - p.resumed_at,
        points=json.loads((workdir / "points.json").read_text()),
    )


def tensors_equal(a: Any, b: Any) -> bool:
    """Exact equality of nested state dicts (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# -- the trials -----------------------------------------------------------------------------------
@dataclass
class Tally:
    """Outcomes over all trials; ``failures`` explains every bad one."""

    kills: int = 0
    timed_kills: int = 0
    point_kills: collections.Counter[str] = field(default_factory=collections.Counter)
    resumes: int = 0
    corrupt_loads: int = 0
    lost_committed: int = 0
    matched: int = 0
    completed_runs: int = 0
    processes: int = 0
    chains: int = 0
    kills_that_found_the_run_finished: int = 0
    deletes_interrupted_before_journalling: int = 0
    left_temp_file: int = 0
    left_uncommitted_step_file: int = 0
    left_folder_without_manifest: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def summary_line(self) -> str:
        return (
            f"{self.kills} kills, {self.resumes} resumes, {self.corrupt_loads} corrupt loads, "
            f"{self.lost_committed} lost committed checkpoints, {self.matched} matched the uninterrupted run"
        )


class Planner:
    """Hands out kill modes: timed kills and crash points, every point once before any repeats.

    Half of the kills are at crash points, and at least one per point when there are enough trials.
    """

    def __init__(self, trials: int, rng: random.Random) -> None:
        points = sorted(CRASH_POINTS)
        rng.shuffle(points)
        n_points = max(trials // 2, min(trials, len(points)))
        at_points = [points[i % len(points)] for i in range(n_points)]
        timed = ["timed"] * (trials - n_points)
        self.modes: collections.deque[str] = collections.deque()
        while at_points or timed:  # interleaved, so every chain sees both kinds
            for source in (timed, at_points):
                if source:
                    self.modes.append(source.pop(0))
        self.lock = threading.Lock()
        self.attempts = 0
        self.max_attempts = 3 * trials + 10  # runs that did not end in a kill are retried, within bounds

    def take(self, usable: Callable[[str], bool]) -> str | None:
        """The first mode in the queue that ``usable`` accepts (a crash point still ahead of the run)."""
        with self.lock:
            if self.attempts >= self.max_attempts:
                return None
            for mode in self.modes:
                if usable(mode):
                    self.modes.remove(mode)
                    self.attempts += 1
                    return mode
            return None

    def give_back(self, mode: str) -> None:
        with self.lock:
            self.modes.appendleft(mode)


class Chain:
    """One root: processes killed one after another, each resuming the last one's root, then a full run."""

    def __init__(
        self, index: int, base: Path, ref: Reference, planner: Planner, tally: Tally, rng: random.Random
    ):
        self.index, self.ref, self.planner, self.tally, self.rng = index, ref, planner, tally, rng
        self.dir = base / f"chain{index:03d}"
        self.dir.mkdir(parents=True)
        self.root = self.dir / "root"

    def fail(self, message: str) -> None:
        with self.tally.lock:
            self.tally.failures.append(f"chain {self.index}: {message} (files under {self.dir})")

    def run(self) -> None:
        before = read_root(self.root)
        kills = 0
        for link in range(KILLS_PER_CHAIN + 1):
            expected = before.expected_resume()
            expected_start = 0 if expected is None else expected[1] + 1

            def ahead(mode: str, start: int = expected_start) -> list[int]:
                """Loop steps at which crash point ``mode`` fires in what is left of the run."""
                return [s for s in self.ref.points.get(mode, []) if s >= start]

            def usable(mode: str) -> bool:
                """Timed kills always; a crash point already behind this root waits for a fresher one."""
                return mode == "timed" or bool(ahead(mode))

            mode = self.planner.take(usable) if kills < KILLS_PER_CHAIN else None
            extra: list[str] = []
            if mode is not None and mode != "timed":
                extra = ["--crash-point", mode, "--crash-after", str(self.rng.choice(ahead(mode)))]
            name = f"p{link}"
            proc, progress_file, final_file = spawn(self.dir, name, self.root, *extra)
            self.tally.add(processes=1)
            if mode == "timed":
                # uniform over what is left of the run: from "ready" on a fresh root, else from "resumed"
                gate = "ready" if link == 0 else "resumed"
                span = (self.ref.open_s if link == 0 else 0.0) + self.ref.train_s * (
                    (TOTAL_STEPS - expected_start) / TOTAL_STEPS
                )
                if wait_for(proc, progress_file, gate) is not None:
                    time.sleep(self.rng.uniform(0.0, span))
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGKILL)
            rc = finish(proc)
            killed = rc == -signal.SIGKILL
            after = read_root(self.root)
            progress = read_progress(progress_file)
            if not self.check(name, link, before, after, progress, killed, expected, final_file, rc):
                return
            if killed:
                kills += 1
                self.tally.add(
                    kills=1,
                    timed_kills=mode == "timed",
                    left_temp_file=after.temp_files > 0,
                    left_uncommitted_step_file=after.uncommitted_step_files > 0,
                    left_folder_without_manifest=after.folders_without_manifest > 0,
                )
                if mode != "timed":
                    with self.tally.lock:
                        self.tally.point_kills[str(mode)] += 1
                before = after
                continue
            # the run completed: a kill that came too late, or the last run of the chain
            if mode is not None:
                self.planner.give_back(mode)
                self.tally.add(kills_that_found_the_run_finished=1)
            return

    def check(
        self,
        name: str,
        link: int,
        before: RootState,
        after: RootState,
        progress: Progress,
        killed: bool,
        expected: tuple[str, int] | None,
        final_file: Path,
        rc: int,
    ) -> bool:
        """Check one process; False when the chain cannot go on."""
        ok = True
        stderr = (self.dir / f"{name}.stderr").read_text(errors="replace")
        if not killed and rc != 0:
            corrupt = "CheckpointCorruptedError" in stderr or "CheckpointFormatError" in stderr
            self.tally.add(corrupt_loads=corrupt)
            self.fail(f"{name} exited with status {rc}: {stderr[-1500:]}")
            return False
        for problem in after.problems:
            self.fail(f"{name}: {problem}")
            ok = False
        new_events = (
            after.events[len(before.events) :] if len(after.events) >= len(before.events) else after.events
        )
        unreadable = [e for e in new_events if e.get("event") == "checkpoint_unreadable"]
        if unreadable:
            self.tally.add(corrupt_loads=len(unreadable))
            self.fail(f"{name}: a committed checkpoint failed to load: {unreadable}")
            ok = False
        # nothing committed before this process ran may disappear, except by retention
        deleted = {
            (e.get("exp_hash"), e.get("step")) for e in new_events if e.get("event") == "checkpoint_deleted"
        }
        for key, entry in before.committed.items():
            now = after.committed.get(key)
            if now is not None:
                if not (now.accepted & entry.accepted):
                    self.fail(f"{name}: committed {key} was replaced by other bytes")
                    self.tally.add(lost_committed=1)
                    ok = False
                continue
            if key in deleted:
                continue
            h, step = key
            newer = [s for (hh, s) in after.committed if hh == h and s > step]
            if killed and len(newer) >= KEEP_LAST and step not in branch_points(after, h):
                self.tally.add(deletes_interrupted_before_journalling=1)
                continue
            self.tally.add(lost_committed=1)
            self.fail(f"{name}: committed checkpoint {key} was lost (no retention delete recorded)")
            ok = False
        # the resume point
        if progress.start is not None:
            expected_start = 0 if expected is None else expected[1] + 1
            resumed = [e for e in new_events if e.get("event") in ("resumed", "resume_fresh")]
            loaded = None
            if resumed and resumed[0]["event"] == "resumed":
                loaded = (resumed[0].get("exp_hash"), resumed[0].get("step"))
            if progress.start != expected_start or loaded != expected:
                self.fail(
                    f"{name} resumed at step {progress.start} from {loaded}; the newest committed "
                    f"checkpoint before it started was {expected} (so step {expected_start})"
                )
                ok = False
            if loaded is not None and loaded not in before.committed:
                self.tally.add(corrupt_loads=1)
                self.fail(f"{name} loaded {loaded}, which was not a committed checkpoint that verified")
                ok = False
            if link > 0:
                self.tally.add(resumes=1)
        # every step it trained equals the uninterrupted run
        mismatched = [s for s, v in progress.steps.items() if self.ref.steps.get(s) != v]
        if mismatched:
            self.fail(f"{name}: steps {mismatched[:5]} differ from the uninterrupted run")
            ok = False
        if not killed:
            # a run whose last step was saved at close (save_last) resumes at TOTAL_STEPS: nothing to train
            finished = sorted(progress.steps)[-1:] == [TOTAL_STEPS - 1] or progress.start == TOTAL_STEPS
            if progress.done_at is None or not finished:
                self.fail(f"{name} exited 0 without finishing the run")
                ok = False
            elif not tensors_equal(torch.load(final_file, weights_only=True), self.ref.final):
                self.fail(f"{name}: the final state differs from the uninterrupted run")
                ok = False
            report = CheckpointManager(self.root, mode="r").verify()
            if not report.healthy:
                self.fail(f"{name}: verify() after the run: {report.problems}")
                ok = False
            self.tally.add(completed_runs=1)
        if link > 0 and ok and progress.start is not None:
            self.tally.add(matched=1)
        return ok


def run_trials(base: Path, trials: int, seed: int) -> Tally:
    """Run chains in parallel until ``trials`` kills happened (or the retry bound was reached)."""
    ref = run_reference(base / "reference")
    rng = random.Random(seed)
    planner = Planner(trials, rng)
    tally = Tally()
    counter = iter(range(10**6))
    counter_lock = threading.Lock()

    def loop(seed: int) -> None:
        chain_rng = random.Random(seed)
        while True:
            with planner.lock:
                if not planner.modes or planner.attempts >= planner.max_attempts:
                    return
            with counter_lock:
                index = next(counter)
            tally.add(chains=1)
            try:
                Chain(index, base, ref, planner, tally, chain_rng).run()
            except Exception as exc:  # a hung worker or a broken harness must fail the test, not a thread
                with tally.lock:
                    tally.failures.append(f"chain {index}: {type(exc).__name__}: {exc}")
                return

    threads = [threading.Thread(target=loop, args=(rng.randrange(2**32),)) for _ in range(PARALLEL_CHAINS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally


# about 3 s a kill on two idle cores; the budget allows a machine five times slower, and more
@pytest.mark.timeout(max(900, 45 * TRIALS))
def test_sigkill_at_random_moments_never_corrupts_or_loses_a_committed_checkpoint(tmp_path: Path) -> None:
    started = time.monotonic()
    tally = run_trials(tmp_path, TRIALS, SEED)
    summary = {
        "summary": tally.summary_line(),
        "seed": SEED,
        "trials_requested": TRIALS,
        "duration_s": round(time.monotonic() - started, 1),
        **{k: v for k, v in vars(tally).items() if k not in ("point_kills", "lock")},
        "point_kills": dict(sorted(tally.point_kills.items())),
    }
    (tmp_path / "crash_summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\ncrash suite (seed {SEED}): {tally.summary_line()}; details in {tmp_path / 'crash_summary.json'}"
    )
    assert not tally.failures, "\n".join(tally.failures)
    assert tally.kills == TRIALS, summary
    assert set(tally.point_kills) == set(CRASH_POINTS) or len(CRASH_POINTS) > TRIALS, summary
    assert tally.resumes == tally.kills and tally.matched == tally.kills, summary
    assert tally.corrupt_loads == 0 and tally.lost_committed == 0


def test_a_kill_before_the_first_commit_resumes_at_step_zero(tmp_path: Path) -> None:
    """Killed after the first experiment was journalled but before its first checkpoint committed."""
    proc, _, _ = spawn(tmp_path, "victim", tmp_path / "root", "--crash-point", "before_manifest_commit")
    assert finish(proc) == -signal.SIGKILL
    state = read_root(tmp_path / "root")
    assert not state.committed and state.uncommitted_step_files == 1, state
    assert any(e["event"] == "experiment_created" for e in state.events)
    proc, progress, _ = spawn(tmp_path, "resumer", tmp_path / "root")
    assert finish(proc) == 0, (tmp_path / "resumer.stderr").read_text()[-2000:]
    assert read_progress(progress).start == 0
    events = read_events(tmp_path / "root" / "logs" / "events.jsonl")
    assert any(e["event"] == "leftovers_removed" for e in events)
