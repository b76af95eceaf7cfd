"""Metadata at scale: commit cost against the number of checkpoints, and ``weightslab ls`` wall time.

    python benchmarks/bench_metadata.py [--repeats 5] [--sizes 10,1000,10000] [--commits 20]

Builds one root per size (10, 1,000 and 10,000 checkpoints of one experiment, tiny step files written
through ``CheckpointManager.save`` with a payload function, not durable while building), and a root
of 100 experiments with 5 checkpoints each. Then, in each round, interleaved:

- **commit**: ``--commits`` durable saves through ``CheckpointManager.save`` on each root (step file,
  fsync, manifest commit, journal); the median per save;
- **full rewrite** (the behaviour before the commit log, reproduced with the same storage calls the
  old commit made: the step file, then the whole manifest replaced atomically and fsynced, then the
  journal line) on a copy of the same manifest;
- ``weightslab ls ROOT`` as a subprocess (``python -m weightslab.cli ls``) on the 10,000-checkpoint
  root and on the 100-experiment root (both read from the experiments' summaries), on a copy of the
  10,000-checkpoint root without its summary (what a root written by an older version takes: the
  full path, which parses the manifest), with the interpreter's own start (``python -c pass``), the
  command's imports alone (``python -c "import weightslab.cli.main"``) and ``python -c "import torch"``
  (what every command paid before it stopped importing torch) as peers. The subprocesses run with
  ``PYTHONDONTWRITEBYTECODE`` unset, so that they load (and, on the first run, write) ``.pyc`` files as
  an installed package does; one untimed run of each comes first;
- the listing in process: from the summaries (``weightslab.cli.listing.rows``), and through the full
  path, ``open_root`` and ``experiment_infos``.

Medians of the rounds, their spread ((max - min) / median), and the load average before and after.
A ratio inside the spread of its two figures is marked as noise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from weightslab.cli.listing import rows
from weightslab.components import CheckpointManager
from weightslab.format.manifest import CheckpointEntry
from weightslab.inspect import open_root
from weightslab.inspect.experiments import experiment_infos

REPO = Path(__file__).resolve().parent.parent
HASH = "0123456789abcdef"


def payload(step: int) -> Any:
    data = b"x" * 64 + step.to_bytes(8, "little")

    def produce(writer: Any) -> None:
        writer.write(data)

    return produce


def create(mgr: CheckpointManager, exp_hash: str) -> None:
    mgr.create_experiment(
        exp_hash=exp_hash,
        architecture_hash="arch",
        hyperparams_hash="hp",
        parent=None,
        retention={},
        hyperparams={"lr": 0.1},
        models={},
    )


def build_root(path: Path, checkpoints: int) -> None:
    with CheckpointManager(path, durable=False) as mgr:
        create(mgr, HASH)
        for step in range(checkpoints):
            mgr.save(HASH, step, payload(step), trigger="step", metrics={"loss": 1.0 / (step + 1)})


def build_many(path: Path, experiments: int, each: int) -> None:
    with CheckpointManager(path, durable=False) as mgr:
        for i in range(experiments):
            h = f"{i:016x}"
            create(mgr, h)
            for step in range(each):
                mgr.save(h, step, payload(step), trigger="step", metrics={"loss": 1.0 / (step + 1)})


def spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / statistics.median(xs) if len(xs) > 1 else 0.0


def ratio(a: list[float], b: list[float]) -> str:
    r = statistics.median(a) / statistics.median(b)
    noise = abs(r - 1) <= max(spread(a), spread(b))
    return f"{r:.2f}x" + (" (noise)" if noise else "")


# an installed package has .pyc files: a machine that sets PYTHONDONTWRITEBYTECODE would time the
# compilation of every module on every start instead
SUBPROCESS_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        cmd, cwd=REPO, env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
    )
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds (default 5)")
    parser.add_argument(
        "--sizes", default="10,1000,10000", help="checkpoints per root (default 10,1000,10000)"
    )
    parser.add_argument("--commits", type=int, default=20, help="durable saves timed per root and round")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: ./.bench_tmp)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    base = args.dir or Path.cwd() / ".bench_tmp"
    base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=base))
    load_before = os.getloadavg()
    print(f"{os.cpu_count()} cores, python {sys.version.split()[0]}, load average {load_before[0]:.2f}")

    t0 = time.perf_counter()
    roots = {n: scratch / f"root_{n}" for n in sizes}
    for n, path in roots.items():
        build_root(path, n)
    many = scratch / "root_100_experiments"
    build_many(many, 100, 5)
    unsummarized = scratch / "root_no_summary"
    shutil.copytree(roots[max(sizes)], unsummarized)
    (unsummarized / "checkpoints" / HASH / "summary.json").unlink()
    print(f"built the roots in {time.perf_counter() - t0:.1f} s")

    writers = {n: CheckpointManager(path) for n, path in roots.items()}  # durable, as training is
    next_step = dict.fromkeys(sizes, 0)
    for n in sizes:
        next_step[n] = max(writers[n].manifest(HASH).steps()) + 1
    old_dir = scratch / "full_rewrite"
    old_dir.mkdir()
    storage = writers[sizes[0]].storage

    commit: dict[int, list[float]] = {n: [] for n in sizes}
    rewrite: dict[int, list[float]] = {n: [] for n in sizes}
    ls_big: list[float] = []
    ls_many: list[float] = []
    py_pass: list[float] = []
    py_cli: list[float] = []
    py_torch: list[float] = []
    inproc_big: list[float] = []
    inproc_many: list[float] = []
    ls_full: list[float] = []
    rows_big: list[float] = []
    rows_many: list[float] = []
    cli = [sys.executable, "-m", "weightslab.cli", "ls"]
    cli_imports = [sys.executable, "-c", "import weightslab.cli.main"]
    biggest = max(sizes)
    for cmd in ([*cli, str(roots[biggest])], [*cli, str(many)], [*cli, str(unsummarized)], cli_imports):
        wall(cmd)  # untimed: writes the .pyc files a first run lacks, warms the page cache
    for _ in range(args.repeats):
        for n in sizes:
            mgr = writers[n]
            t = time.perf_counter()
            for _ in range(args.commits):
                step = next_step[n]
                mgr.save(HASH, step, payload(step), trigger="step", metrics={"loss": 0.5})
                next_step[n] += 1
            commit[n].append((time.perf_counter() - t) / args.commits)
            # the old commit: the step file, the whole manifest replaced, the journal line
            manifest = mgr.manifest(HASH)
            t = time.perf_counter()
            for i in range(args.commits):
                written = storage.write_atomic(old_dir / f"step_{i}.pt", payload(i))
                entry = CheckpointEntry(
                    step=10**9 + i,
                    file="model/x.pt",
                    bytes=written.bytes,
                    xxh3_128=written.xxh3_128,
                    created=time.time(),
                    trigger="step",
                )
                manifest = manifest.committing(entry)
                storage.write_bytes_atomic(old_dir / "manifest.json", manifest.to_json())
                storage.append_line(old_dir / "events.jsonl", b'{"event": "checkpoint_saved"}\n')
            rewrite[n].append((time.perf_counter() - t) / args.commits)
        ls_big.append(wall([*cli, str(roots[biggest])]))
        py_pass.append(wall([sys.executable, "-c", "pass"]))
        py_cli.append(wall(cli_imports))
        ls_many.append(wall([*cli, str(many)]))
        ls_full.append(wall([*cli, str(unsummarized)]))
        py_torch.append(wall([sys.executable, "-c", "import torch"]))
        for target, out in ((roots[biggest], inproc_big), (many, inproc_many)):
            t = time.perf_counter()
            experiment_infos(open_root(target))
            out.append(time.perf_counter() - t)
        for target, out in ((roots[biggest], rows_big), (many, rows_many)):
            t = time.perf_counter()
            assert rows(str(target), None, None) is not None  # every summary current
            out.append(time.perf_counter() - t)
    for mgr in writers.values():
        mgr.close()
    load_after = os.getloadavg()

    def ms(xs: list[float]) -> str:
        return f"{statistics.median(xs) * 1e3:.2f} ms (spread {spread(xs):.0%})"

    print(f"\nCommit cost per checkpoint (median of {args.repeats} rounds x {args.commits} durable saves)")
    print("| checkpoints in the manifest | commit (log) | full rewrite (before) | full rewrite / commit |")
    print("|---|---|---|---|")
    for n in sizes:
        print(f"| {n:,} | {ms(commit[n])} | {ms(rewrite[n])} | {ratio(rewrite[n], commit[n])} |")
    first, last = sizes[0], sizes[-1]
    print(f"\ncommit at {last:,} / commit at {first:,}: {ratio(commit[last], commit[first])}")
    print(f"\n`weightslab ls` (subprocess, PYTHONDONTWRITEBYTECODE unset, median of {args.repeats})")
    print("| what | wall time |")
    print("|---|---|")
    print(f"| ls, {biggest:,} checkpoints (from its summary) | {ms(ls_big)} |")
    print(f"| ls, 100 experiments x 5 checkpoints (from their summaries) | {ms(ls_many)} |")
    print(f"| ls, {biggest:,} checkpoints, no summary (the full path: the manifest parsed) | {ms(ls_full)} |")
    print(f"| python -c pass (interpreter start) | {ms(py_pass)} |")
    print(f"| python -c 'import weightslab.cli.main' (the command's imports) | {ms(py_cli)} |")
    print(f"| python -c 'import torch' (what each command paid before) | {ms(py_torch)} |")
    print(f"| in process: open_root + experiment_infos, {biggest:,} checkpoints | {ms(inproc_big)} |")
    print(f"| in process: open_root + experiment_infos, 100 experiments | {ms(inproc_many)} |")
    print(f"| in process: the summaries (listing.rows), {biggest:,} checkpoints | {ms(rows_big)} |")
    print(f"| in process: the summaries (listing.rows), 100 experiments | {ms(rows_many)} |")
    print(
        f"\nload average: {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"(2-core machine shared with other jobs: the figures are noisy)"
    )
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
