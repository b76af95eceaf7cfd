"""The crash suite on an ``s3://`` root: training processes killed with SIGKILL, then resumed, on SeaweedFS.

The same kind of suite as tests/test_crash.py, whose helpers it reuses (the resume-point logic of
``RootState``, ``Chain.check``, ``Planner``, ``Reference``, ``tensors_equal``, ``Tally``), with the
same worker (``tests/crash_worker.py --root s3://... --storage-options JSON``): a small deterministic
model, durable background saves, ``keep_last=2`` retention and a hyperparameter change at a fixed step.

Kills: ``WEIGHTSLAB_S3_CRASH_TRIALS`` (default 20) at a time drawn uniformly over what is left of the
run (the background writer is in an S3 request most of the time, so most land with one in flight),
plus ``WEIGHTSLAB_S3_CRASH_POINT_KILLS`` (default 6; 12 covers every point) at crash points an S3 root
reaches, at a step drawn among those still ahead: first the three S3 ones, a PUT in flight (of a step
object, of a manifest, which is the commit, or of the journal; the kill comes from another thread a
random few milliseconds after the request started), then points drawn by the seed from the local
suite's that apply (inside a step object's write, between it and the manifest, around the journal,
during retention, the hash change and an experiment's creation; those about local files, a rename or
a folder fsync, never fire on S3). After every kill a new process resumes on the same root, and is
itself a victim of the next kill, until a last process runs to the end.

After every process the suite reads the bucket itself (s3fs listings and GETs, JSON and xxh3, not
weightslab's reader) and checks what the local suite checks: every manifest parses and every committed
entry's object has the size and xxh3_128 the manifest says (each file of ``shards`` for a sharded
entry); the resume point is the newest committed checkpoint; nothing committed was lost (except by a
retention delete); no ``checkpoint_unreadable`` event; every trained step, and the final weights,
optimizer and scheduler state, equal an uninterrupted reference run (``torch.equal``).

The lease tests: while a writer is alive a second process gets RootLockedError naming it; once it is
killed with SIGKILL, the next writer on this machine takes its lease over at once (timed).

``WEIGHTSLAB_S3_CRASH_SEED`` replays a plan. The summary is printed (``pytest -s``) and written to
``s3_crash_summary.json`` under the test's ``tmp_path``.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash

from tests.crash_worker import CRASH_POINTS, S3_CRASH_POINTS, TOTAL_STEPS
from tests.test_crash import (
    Chain,
    Committed,
    Planner,
    Reference,
    RootState,
    Tally,
    finish,
    read_progress,
    spawn,
    wait_for,
)

from .conftest import S3Server

pytestmark = pytest.mark.s3

TRIALS = int(os.environ.get("WEIGHTSLAB_S3_CRASH_TRIALS", "20"))
SEED = int(os.environ.get("WEIGHTSLAB_S3_CRASH_SEED", str(random.SystemRandom().randrange(2**32))))
# kills at crash points besides the timed ones: the S3 ones (a PUT in flight) first, then others drawn by
# the seed; as many as there are points (12) covers them all, 0 leaves the timed kills alone
POINT_KILLS = int(os.environ.get("WEIGHTSLAB_S3_CRASH_POINT_KILLS", "6"))
KILLS_PER_CHAIN = 6
PARALLEL_CHAINS = 3  # a worker waits on the server much of the time: three keep two cores busy
IN_FLIGHT_MAX_DELAY_S = 0.025  # a PUT to the local server takes 10-60 ms in the (profiled) worker
# the local suite's points that are about local files: a temporary file's rename, a folder's fsync,
# the background unlink of a deleted step file (an object store deletes in place)
LOCAL_FILE_POINTS = {
    "step_file_before_rename",
    "step_file_before_dir_fsync",
    "manifest_before_rename",
    "retention_before_background_unlink",
}
S3_POINTS = sorted((set(CRASH_POINTS) - LOCAL_FILE_POINTS) | set(S3_CRASH_POINTS))
WRITER = Path(__file__).with_name("s3_writer_worker.py")
REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 240.0  # generous: a loaded CI machine, five times slower


# -- reading a bucket without weightslab -----------------------------------------------------------
class BucketReader:
    """Lists and reads the objects under one prefix with s3fs (no listings cache, no weightslab)."""

    def __init__(self, server: S3Server) -> None:
        import s3fs

        self.bucket = server.bucket
        self.fs = s3fs.S3FileSystem(
            skip_instance_cache=True, use_listings_cache=False, **server.storage_options()
        )

    def keys(self, prefix: str) -> dict[str, int]:
        """Every object under ``prefix/``: its key relative to the prefix -> its size (folder markers left out)."""
        found: dict[str, int] = {}
        token: dict[str, str] = {}
        while True:
            page = self.fs.call_s3("list_objects_v2", Bucket=self.bucket, Prefix=prefix + "/", **token)
            for obj in page.get("Contents", []) or []:
                key = str(obj["Key"])
                if not key.endswith("/"):
                    found[key[len(prefix) + 1 :]] = int(obj["Size"])
            if not page.get("IsTruncated"):
                return found
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def get(self, key: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(f"{self.bucket}/{key}"))
        except FileNotFoundError:
            return None

    def digest(self, key: str) -> tuple[int, str] | None:
        data = self.get(key)
        return None if data is None else (len(data), xxhash.xxh3_128_hexdigest(data))

    def incomplete_uploads(self, prefix: str) -> int:
        page = self.fs.call_s3("list_multipart_uploads", Bucket=self.bucket, Prefix=prefix + "/")
        return len(page.get("Uploads", []) or [])

    def lease_age(self, key: str) -> float:
        """How old the object is on the server's clock (Date header minus LastModified)."""
        from email.utils import parsedate_to_datetime

        head = self.fs.call_s3("head_object", Bucket=self.bucket, Key=key)
        now = parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"]).timestamp()
        return now - head["LastModified"].timestamp()


def parse_events(data: bytes | None) -> list[dict[str, Any]]:
    """Journal records (the S3 counterpart of test_crash.read_events: a torn line is skipped)."""
    records = []
    for line in (data or b"").splitlines():
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def is_step_name(name: str) -> bool:
    """A step object ``{hash}_step_{n}.pt`` or a sharded checkpoint's folder ``{hash}_step_{n}``."""
    stem = name.removesuffix(".pt")
    return "_step_" in stem and stem.rsplit("_step_", 1)[1].isdigit()


def read_s3_root(reader: BucketReader, prefix: str) -> RootState:
    """The S3 counterpart of test_crash.read_root: parse every manifest, verify every committed object."""
    keys = reader.keys(prefix)
    state = RootState(events=parse_events(reader.get(f"{prefix}/logs/events.jsonl")))
    experiments: dict[str, dict[str, int]] = {}
    for rel, size in keys.items():
        parts = rel.split("/")
        if len(parts) >= 3 and parts[0] == "checkpoints":
            experiments.setdefault(parts[1], {})["/".join(parts[2:])] = size
    for h, files in sorted(experiments.items()):
        base = f"{prefix}/checkpoints/{h}"
        state.temp_files += sum(".tmp" in name for name in files)
        if "manifest.json" not in files:
            state.folders_without_manifest += 1
            continue
        raw = reader.get(f"{base}/manifest.json")
        try:
            manifest = json.loads(raw or b"")
            entries = manifest["checkpoints"]
        except (ValueError, KeyError, TypeError) as exc:
            state.problems.append(f"{base}/manifest.json does not parse after a kill: {exc}")
            continue
        state.manifests[h] = manifest
        listed: set[str] = set()
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
            listed.add(c.file.split("/")[1] if c.file.startswith("model/") else c.file)
            if e.get("shards"):  # a sharded checkpoint: every file of it, each with its own checksum
                for shard in e["shards"]:
                    found = reader.digest(f"{base}/{shard['file']}")
                    if found != (int(shard["bytes"]), str(shard["xxh3_128"])):
                        state.problems.append(
                            f"committed {h} step {c.step} shard {shard['file']} does not verify: {found}"
                        )
            else:
                found = reader.digest(f"{base}/{c.file}")
                if found not in c.accepted:
                    state.problems.append(
                        f"committed {h} step {c.step} does not verify: {found} not in {accepted}"
                    )
            state.committed[(h, c.step)] = c
        arch = manifest.get("architecture")
        if arch:
            found = reader.digest(f"{base}/{arch['file']}")
            if found != (int(arch["bytes"]), str(arch["xxh3_128"])):
                state.problems.append(f"{h}: the architecture file {arch['file']} does not verify: {found}")
        model_names = {name.split("/")[1] for name in files if name.startswith("model/") and "/" in name}
        state.uncommitted_step_files += sum(is_step_name(n) and n not in listed for n in model_names)
    return state


# -- the trials -----------------------------------------------------------------------------------
@dataclass
class S3Tally(Tally):
    """The local suite's tally, plus what is particular to an S3 root."""

    in_flight_kills: int = 0
    incomplete_uploads_left: int = 0
    unreadable_events_in_journals: int = 0
    committed: set[tuple[str, str, int, int, frozenset[tuple[int, str]]]] = field(
        default_factory=set, repr=False
    )
    lifetimes_s: list[float] = field(default_factory=list, repr=False)
    resume_open_s: list[float] = field(default_factory=list, repr=False)
    takeovers_logged: int = 0  # resumes whose lease was taken over from the killed process at once
    ttl_takeovers: int = 0  # ... or only after it expired (never expected: the holder is on this host)


class S3Planner(Planner):
    """``timed`` kills at random moments and one at each of ``points`` (repeats allowed), interleaved."""

    def __init__(self, timed: int, points: list[str], rng: random.Random) -> None:
        self.planned_points = list(points)
        at_points = list(points)
        rng.shuffle(at_points)
        times = ["timed"] * timed
        self.modes: collections.deque[str] = collections.deque()
        while at_points or times:
            for source in (times, at_points):
                if source:
                    self.modes.append(source.pop(0))
        self.lock = threading.Lock()
        self.attempts = 0
        trials = timed + len(points)
        self.max_attempts = 3 * trials + 10


class S3Chain(Chain):
    """One ``s3://`` root: processes killed one after another, each resuming the last one's root, then a full run."""

    tally: S3Tally

    def __init__(
        self,
        index: int,
        base: Path,
        ref: Reference,
        planner: Planner,
        tally: S3Tally,
        rng: random.Random,
        server: S3Server,
        run_id: str,
    ) -> None:
        super().__init__(index, base, ref, planner, tally, rng)
        self.prefix = f"crash-{run_id}/chain{index:03d}"
        # a URL, not a Path: Chain.check opens it read-only for verify() (with the AWS_* variables)
        self.root = f"s3://{server.bucket}/{self.prefix}"  # type: ignore[assignment]
        self.reader = BucketReader(server)
        self.options = json.dumps(server.storage_options())

    def read(self) -> RootState:
        state = read_s3_root(self.reader, self.prefix)
        with self.tally.lock:
            for (h, step), c in state.committed.items():
                self.tally.committed.add((self.prefix, h, step, c.seq, c.accepted))
        return state

    def run(self) -> None:
        before = self.read()
        kills = 0
        for link in range(KILLS_PER_CHAIN + 1):
            expected = before.expected_resume()
            expected_start = 0 if expected is None else expected[1] + 1

            def ahead(mode: str, start: int = expected_start) -> list[int]:
                return [s for s in self.ref.points.get(mode, []) if s >= start]

            def usable(mode: str) -> bool:
                return mode == "timed" or bool(ahead(mode))

            mode = self.planner.take(usable) if kills < KILLS_PER_CHAIN else None
            extra = ["--storage-options", self.options]
            if mode is not None and mode != "timed":
                extra += ["--crash-point", mode, "--crash-after", str(self.rng.choice(ahead(mode)))]
                if mode in S3_CRASH_POINTS:
                    extra += ["--crash-delay", f"{self.rng.uniform(0.0, IN_FLIGHT_MAX_DELAY_S):.6f}"]
            name = f"p{link}"
            began = time.monotonic()
            proc, progress_file, final_file = spawn(self.dir, name, self.root, *extra)  # type: ignore[arg-type]
            self.tally.add(processes=1)
            if mode == "timed":
                # uniform over what is left of the run: from "ready" on a fresh root, else from "resumed"
                gate = "ready" if link == 0 else "resumed"
                span = (self.ref.open_s if link == 0 else 0.0) + self.ref.train_s * (
                    (TOTAL_STEPS - expected_start) / TOTAL_STEPS
                )
                if wait_for(proc, progress_file, gate) is not None:
                    time.sleep(self.rng.uniform(0.0, span))  # the kill's moment, drawn at random
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGKILL)
            rc = finish(proc)
            lifetime = time.monotonic() - began
            killed = rc == -signal.SIGKILL
            after = self.read()
            progress = read_progress(progress_file)
            stderr = (self.dir / f"{name}.stderr").read_text(errors="replace")
            with self.tally.lock:
                self.tally.lifetimes_s.append(lifetime)
                if link > 0 and progress.resumed_at is not None and progress.ready_at is not None:
                    self.tally.resume_open_s.append(progress.resumed_at - progress.ready_at)
                self.tally.takeovers_logged += "on this machine, is gone" in stderr
                self.tally.ttl_takeovers += "s TTL" in stderr and "took over the writer lease" in stderr
            if not self.check(name, link, before, after, progress, killed, expected, final_file, rc):
                return
            if killed:
                kills += 1
                self.tally.add(
                    kills=1,
                    timed_kills=mode == "timed",
                    in_flight_kills=mode in S3_CRASH_POINTS,
                    left_temp_file=after.temp_files > 0,
                    left_uncommitted_step_file=after.uncommitted_step_files > 0,
                    left_folder_without_manifest=after.folders_without_manifest > 0,
                )
                if mode != "timed":
                    with self.tally.lock:
                        self.tally.point_kills[str(mode)] += 1
                before = after
                continue
            if mode is not None:
                self.planner.give_back(mode)
                self.tally.add(kills_that_found_the_run_finished=1)
            self.finished(after)
            return

    def finished(self, state: RootState) -> None:
        """After the run that went to the end: no failed load in the whole journal, no upload left open."""
        unreadable = [e for e in state.events if e.get("event") == "checkpoint_unreadable"]
        uploads = self.reader.incomplete_uploads(self.prefix)
        self.tally.add(unreadable_events_in_journals=len(unreadable), incomplete_uploads_left=uploads)
        if unreadable:
            self.fail(f"the journal records failed loads: {unreadable}")


def run_s3_reference(workdir: Path, server: S3Server, run_id: str) -> Reference:
    """The uninterrupted run on S3, twice at once: plainly (timings, results) and counting crash points."""
    workdir.mkdir(parents=True)
    options = ["--storage-options", json.dumps(server.storage_options())]
    url = f"s3://{server.bucket}/crash-{run_id}"
    plain = spawn(workdir, "reference", f"{url}/reference", *options)  # type: ignore[arg-type]
    counted = spawn(
        workdir,
        "counting",
        f"{url}/counting",  # type: ignore[arg-type]
        *options,
        "--count-points",
        str(workdir / "points.json"),
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


def choose_points(reached: list[str], n: int, rng: random.Random) -> list[str]:
    """``n`` crash points to kill at: those of S3 (a PUT in flight) first, then the others, each shuffled."""
    s3 = [p for p in reached if p in S3_CRASH_POINTS]
    others = [p for p in reached if p not in S3_CRASH_POINTS]
    rng.shuffle(s3)
    rng.shuffle(others)
    order = s3 + others
    return [order[i % len(order)] for i in range(n)] if order else []


def run_s3_trials(
    base: Path, server: S3Server, timed: int, seed: int
) -> tuple[S3Tally, Reference, S3Planner]:
    run_id = uuid.uuid4().hex[:8]
    ref = run_s3_reference(base / "reference", server, run_id)
    reached = sorted(p for p in ref.points if p in S3_POINTS)
    # on S3 exactly the points that are not about local files are reached
    assert reached == S3_POINTS and not set(ref.points) & LOCAL_FILE_POINTS, sorted(ref.points)
    rng = random.Random(seed)
    planner = S3Planner(timed, choose_points(reached, POINT_KILLS, rng), rng)
    tally = S3Tally()
    counter = iter(range(10**6))
    counter_lock = threading.Lock()

    def loop(chain_seed: int) -> None:
        chain_rng = random.Random(chain_seed)
        while True:
            with planner.lock:
                if not planner.modes or planner.attempts >= planner.max_attempts:
                    return
            with counter_lock:
                index = next(counter)
            tally.add(chains=1)
            try:
                S3Chain(index, base, ref, planner, tally, chain_rng, server, run_id).run()
            except Exception as exc:  # a hung worker or a broken harness must fail the test, not a thread
                with tally.lock:
                    tally.failures.append(f"chain {index}: {type(exc).__name__}: {exc}")
                return

    threads = [threading.Thread(target=loop, args=(rng.randrange(2**32),)) for _ in range(PARALLEL_CHAINS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally, ref, planner


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "mean": round(statistics.fmean(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


@pytest.mark.timeout(max(900, 60 * (TRIALS + POINT_KILLS)))
def test_sigkill_on_an_s3_root_never_corrupts_or_loses_a_committed_checkpoint(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chain.check opens each finished root read-only for verify(): the standard variables point it here
    # (the workers get --storage-options, which take precedence)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    tally, ref, planner = run_s3_trials(tmp_path, s3_server, TRIALS, SEED)
    expected_kills = TRIALS + POINT_KILLS
    summary = {
        "summary": tally.summary_line(),
        "seed": SEED,
        "timed_trials_requested": TRIALS,
        "crash_points_reached_on_s3": S3_POINTS,
        "crash_points_planned": sorted(planner.planned_points),
        "duration_s": round(time.monotonic() - started, 1),
        "reference_open_s": round(ref.open_s, 2),
        "reference_train_s": round(ref.train_s, 2),
        "process_lifetime_s": _stats(tally.lifetimes_s),
        "resume_open_s": _stats(tally.resume_open_s),
        "committed_checkpoints_seen": len(tally.committed),
        "modes_left_unplanned": list(planner.modes),
        **{
            k: v
            for k, v in vars(tally).items()
            if k not in ("point_kills", "lock", "committed", "lifetimes_s", "resume_open_s")
        },
        "point_kills": dict(sorted(tally.point_kills.items())),
    }
    (tmp_path / "s3_crash_summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\nS3 crash suite (seed {SEED}): {tally.kills} kills ({tally.timed_kills} at random times, "
        f"{tally.kills - tally.timed_kills} at crash points, {tally.in_flight_kills} with a PUT in flight) "
        f"in {tally.chains} chains of {tally.processes} processes; {tally.resumes} resumes, "
        f"{len(tally.committed)} committed checkpoints seen, {tally.lost_committed} lost, "
        f"{tally.corrupt_loads} corrupt loads, "
        f"{tally.kills - tally.matched} resume mismatches, {tally.completed_runs} runs completed equal to "
        f"the reference; {summary['duration_s']} s (reference: open {ref.open_s:.1f} s, train "
        f"{ref.train_s:.1f} s; process lifetime {summary['process_lifetime_s']}, resume open "
        f"{summary['resume_open_s']}); {tally.takeovers_logged} resumes took the killed writer's lease over "
        f"at once, {tally.ttl_takeovers} after its TTL; details in {tmp_path / 's3_crash_summary.json'}"
    )
    assert not tally.failures, "\n".join(tally.failures)
    assert tally.kills == expected_kills, summary
    assert sorted(tally.point_kills.elements()) == sorted(planner.planned_points), summary
    assert tally.timed_kills == TRIALS, summary
    assert tally.resumes == tally.kills and tally.matched == tally.kills, summary
    assert tally.corrupt_loads == 0 and tally.lost_committed == 0, summary
    assert tally.unreadable_events_in_journals == 0 and tally.completed_runs == tally.chains, summary
    assert len(tally.committed) > 0 and tally.ttl_takeovers == 0, summary


def test_a_kill_before_the_first_commit_on_s3_resumes_at_step_zero(
    s3_server: S3Server, s3_url: str, tmp_path: Path
) -> None:
    """Killed after the step object's PUT but before the manifest commit: nothing committed, step 0."""
    options = ["--storage-options", json.dumps(s3_server.storage_options())]
    args = ["--crash-point", "before_manifest_commit"]
    proc, _, _ = spawn(tmp_path, "victim", s3_url, *options, *args)  # type: ignore[arg-type]
    assert finish(proc) == -signal.SIGKILL
    reader = BucketReader(s3_server)
    prefix = s3_url.removeprefix(f"s3://{s3_server.bucket}/")
    state = read_s3_root(reader, prefix)
    assert not state.committed and state.uncommitted_step_files == 1 and not state.problems, state
    assert any(e["event"] == "experiment_created" for e in state.events)
    proc, progress, final = spawn(tmp_path, "resumer", s3_url, *options)  # type: ignore[arg-type]
    assert finish(proc) == 0, (tmp_path / "resumer.stderr").read_text()[-2000:]
    assert read_progress(progress).start == 0
    state = read_s3_root(reader, prefix)
    assert not state.problems and state.uncommitted_step_files == 0, state
    assert any(e["event"] == "leftovers_removed" for e in state.events)
    assert not [e for e in state.events if e.get("event") == "checkpoint_unreadable"]


# -- the writer lease -----------------------------------------------------------------------------
class Writer:
    """A ``s3_writer_worker.py`` process; its stdout lines arrive on a queue (read with a deadline)."""

    def __init__(self, server: S3Server, url: str, mode: str, stderr: Path) -> None:
        spec = {"mode": mode, "url": url, "options": server.storage_options()}
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(WRITER), json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                cwd=REPO,
                env={**env, "OMP_NUM_THREADS": "1"},
            )
        self.stderr = stderr
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def line(self) -> str:
        """The next line it prints (fails when it exits first or the deadline passes)."""
        try:
            line = self.lines.get(timeout=DEADLINE_S)
        except queue.Empty:
            raise AssertionError(f"no line from the writer within {DEADLINE_S:g} s") from None
        assert line is not None, f"the writer exited ({self.proc.wait()}): {self.stderr.read_text()[-2000:]}"
        return line

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def wait(self) -> int:
        return self.proc.wait(timeout=DEADLINE_S)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=DEADLINE_S)


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    made: list[Writer] = []
    yield made
    for w in made:
        w.stop()


def test_a_live_writer_refuses_a_second_and_a_sigkilled_ones_lease_is_taken_over_at_once(
    s3_server: S3Server, s3_url: str, tmp_path: Path, writers: list[Writer]
) -> None:
    holder = Writer(s3_server, s3_url, "hold", tmp_path / "holder.stderr")
    second = Writer(s3_server, s3_url, "open", tmp_path / "second.stderr")
    taker = Writer(s3_server, s3_url, "open", tmp_path / "taker.stderr")
    writers += [holder, second, taker]
    held = holder.line()
    assert held == f"held {holder.proc.pid}", held
    # while the holder lives: the second process is refused, naming it
    assert second.line() == "ready"
    second.send("go")
    kind, _, payload = second.line().partition(" ")
    assert kind == "locked", f"a second writer opened a held root: {kind} {payload}"
    refusal = json.loads(payload)
    named = f"pid {holder.proc.pid} on {socket.gethostname()}"
    assert named in refusal["holder"] and named in refusal["message"], refusal
    assert s3_url in refusal["message"], refusal
    assert second.wait() == 3
    # where the holder's checkpoints say the next writer resumes
    reader = BucketReader(s3_server)
    prefix = s3_url.removeprefix(f"s3://{s3_server.bucket}/")
    expected = read_s3_root(reader, prefix).expected_resume()
    assert expected is not None
    # SIGKILL the holder (its lease is fresh: it would not expire for about 20 s), then the taker opens
    assert taker.line() == "ready"
    lease_key = f"{prefix}/logs/writer.lock"
    lease = json.loads(reader.get(lease_key) or b"{}")
    assert lease.get("pid") == holder.proc.pid, lease
    os.kill(holder.proc.pid, signal.SIGKILL)
    killed_at = time.time()  # the lease records its start on the same (this machine's) clock
    assert holder.wait() == -signal.SIGKILL
    age_at_kill = reader.lease_age(lease_key)
    taker.send("go")
    kind, _, payload = taker.line().partition(" ")
    after_kill = time.time() - killed_at
    assert kind == "opened", f"the taker was refused after the holder died: {payload}"
    open_s, start = payload.split()
    assert int(start) == expected[1] + 1, (start, expected)
    taken = json.loads(reader.get(lease_key) or b"{}")  # the taker holds it until told to close
    assert taken.get("pid") == taker.proc.pid, taken
    takeover_s = float(taken["started"]) - killed_at
    taker.send("close")
    assert taker.wait() == 0, taker.stderr.read_text()[-2000:]
    stderr = taker.stderr.read_text()
    print(
        f"\nS3 lease: a second writer was refused naming {refusal['holder']!r}; after the SIGKILL the next "
        f"writer on this host held the lease {takeover_s:.3f} s after the kill (get_checkpoint_system "
        f"took {float(open_s):.3f} s, most of it the S3 client's first request; {after_kill:.3f} s from "
        f"the kill to its resume); the dead holder's lease was {age_at_kill:.0f} s old, TTL "
        f"{lease.get('ttl')} s"
    )
    # at once, because its holder is gone (not because the lease expired: that says "over its TTL")
    assert f"pid {holder.proc.pid} on this machine, is gone" in stderr, stderr[-2000:]
    assert 0 < takeover_s < float(lease["ttl"]) and float(open_s) < float(lease["ttl"]), (takeover_s, open_s)
