"""The fast paths of ``weightslab ls``: each gives what the slow path gave, on the same roots.

- the plain table (:mod:`weightslab.cli.plain_table`) prints what rich prints, or leaves it to rich;
- ``size_on_disk`` takes a committed step file's size from its entry and measures everything else;
- a commit log is parsed in one call, with the same entries and the same errors as line by line;
- entries built by the manifest reader are the entries the constructor builds;
- ``ls`` pauses the garbage collector only while it runs, and imports no other command's modules.
"""

from __future__ import annotations

import gc
import io
import json
import os
import random
import re
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from weightslab.cli.formatting import format_size
from weightslab.cli.main import main
from weightslab.cli.plain_table import Column, render_plain
from weightslab.cli.tables import (
    EXPERIMENT_COLUMNS,
    _experiments_table,
    experiments_cells,
    experiments_table,
    print_summary,
)
from weightslab.errors import ManifestError
from weightslab.format import manifest_log
from weightslab.format.manifest import CheckpointEntry, Manifest, ParentRef
from weightslab.format.manifest_entries import entry_from_dict
from weightslab.format.manifest_log import encode_change, fold
from weightslab.inspect.experiments import BestMetric, ExperimentInfo, experiment_infos
from weightslab.store.manager import CheckpointManager

from .conftest import writes

REPO = Path(__file__).resolve().parent.parent
H, G = "0123456789abcdef", "fedcba9876543210"


def _root(path: Path, hashes: tuple[str, ...] = (H,), steps: int = 5, **options: Any) -> Path:
    with CheckpointManager(path, durable=False, **options) as mgr:
        for h in hashes:
            mgr.create_experiment(
                exp_hash=h,
                architecture_hash="a",
                hyperparams_hash="h",
                parent=None,
                retention={"monitor": "loss"},
                hyperparams={"lr": 0.1},
                models={},
            )
            for s in range(steps):
                mgr.save(h, s, writes(b"x" * (s + 1) * 7), trigger="step", metrics={"loss": 1.0 / (s + 1)})
    return path


def _measured(mgr: CheckpointManager, h: str) -> int:
    """What ``size_on_disk`` measured before: every file below the experiment folder, stat'ed."""
    total = 0
    for path in mgr.storage.files_under(mgr.experiment(h).dir):
        try:
            total += mgr.storage.size(path)
        except FileNotFoundError:  # a dangling link
            continue
    return total


# -- the plain table --------------------------------------------------------------------------------
WORDS = [
    "config_change",
    "model_change",
    "reason [bold]b[/]",
    "a:smile:b",
    "日本語の理由",
    "long " * 9,
    "tab\there",
    "[x]",
    "é",
    "two\nlines",
    "a:b c:d",
    "🙂",
    "bell\x07",
    "trailing  ",
]


def _info(rng: random.Random) -> ExperimentInfo:
    h = f"{rng.getrandbits(64):016x}"
    parent = None if rng.random() < 0.3 else ParentRef(h, rng.choice([None, 3, 12345]), rng.choice(WORDS))
    best = None
    if rng.random() < 0.6:
        monitor = rng.choice(["val/loss", "acc", "m:x:y", "[b]", "loss "])
        best = BestMetric(monitor, "min", rng.random() * 10 ** rng.randint(-3, 6), rng.randint(0, 10**6))
    return ExperimentInfo(
        exp_hash=h,
        parent=parent,
        created=rng.choice([None, 1.7e9 + rng.random() * 1e7]),
        checkpoints=rng.randint(0, 20000),
        latest_step=rng.choice([None, rng.randint(0, 10**7)]),
        best=best,
        size_bytes=rng.randint(0, 10**12),
        active=rng.random() < 0.2,
        error="unreadable" if rng.random() < 0.05 else None,
    )


def _by_rich(infos: list[ExperimentInfo], width: int) -> str:
    console = Console(file=io.StringIO(), width=width)
    console.print(experiments_table(infos))
    return console.file.getvalue()  # type: ignore[attr-defined]


def _plain(infos: list[ExperimentInfo], width: int) -> str | None:
    headers, rows = experiments_cells(infos)
    columns = [Column(**options) for _, options in EXPERIMENT_COLUMNS]
    console = Console(file=io.StringIO(), width=width)
    return render_plain(console, headers, columns, rows, lambda some: _experiments_table(headers, some))


def test_the_plain_table_is_what_rich_prints_or_nothing() -> None:
    rng = random.Random(15)
    laid_out = 0
    for _ in range(300):
        infos = [_info(rng) for _ in range(rng.randint(0, 8))]
        width = rng.choice([40, 80, 100, 120, 200])
        plain = _plain(infos, width)
        if plain is not None:
            laid_out += 1
            assert plain == _by_rich(infos, width)
    assert laid_out > 50  # the random tables exercise the plain path, not only the fallback


def test_a_long_wrapped_table_gets_richs_widths_from_the_rows_that_set_them() -> None:
    rng = random.Random(100)
    for width in (100, 90, 70):
        infos = [_info(rng) for _ in range(80)]
        infos = [replace(i, parent=ParentRef(H, 1, rng.choice(WORDS[:6] + WORDS[8:9]))) for i in infos]
        plain = _plain(infos, width)
        assert plain is not None and plain == _by_rich(infos, width)


def test_the_plain_table_fits_exactly_as_rich_does_at_the_width_limit() -> None:
    rng = random.Random(8)
    for _ in range(60):
        infos = [
            ExperimentInfo(
                exp_hash=f"{rng.getrandbits(64):016x}",
                parent=ParentRef(H, 3, "r" * rng.randint(1, 40)),
                created=1.7e9,
                checkpoints=3,
                latest_step=5,
                best=BestMetric("val/loss", "min", 1.5, 3) if rng.random() < 0.5 else None,
                size_bytes=rng.randint(0, 10**9),
                active=k == 0,
            )
            for k in range(rng.randint(1, 5))
        ]
        full = max(map(len, _by_rich(infos, 400).splitlines()))
        for width in (full + 1, full, full - 1, full - 7):  # fits, then rich's widths and wrapping
            assert _plain(infos, width) == _by_rich(infos, width)


@pytest.mark.parametrize(
    "cell",
    [
        "two\nlines",
        "tab\there",
        "bell\x07",
        "ends in\u3000",
        "no\xa0break",
        "\u0301\u0301ﾊﾝ",
        "zero\u200dwidth",
    ],
    ids=["newline", "tab", "control", "ideographic-space", "nbsp", "combining", "zero-width-joiner"],
)
def test_a_cell_rich_would_reflow_is_left_to_rich(cell: str) -> None:
    info = ExperimentInfo(exp_hash=H, parent=ParentRef(G, 1, cell), created=1.7e9, checkpoints=1)
    assert _plain([info], 100) is None


def test_a_wide_table_is_wrapped_as_rich_wraps_it_or_left_to_rich() -> None:
    info = ExperimentInfo(exp_hash=H, parent=ParentRef(G, 1, "x" * 60 + " word " * 9), created=1.7e9)
    for width in (100, 80, 60):
        plain = _plain([info], width)
        assert plain is not None and plain == _by_rich([info], width)
        assert max(map(len, plain.splitlines())) <= width and len(plain.splitlines()) > 4
    assert _plain([info], 30) is None  # rich squeezes columns to nothing there and leaves them out


def test_print_summary_prints_the_same_on_every_kind_of_console(tmp_path: Path) -> None:
    """A pipe takes the plain table; a terminal, a recording console, NO_COLOR keep rich's: all the same."""
    root = _root(tmp_path / "root", (H, G))
    mgr = CheckpointManager(root, mode="r")
    infos = experiment_infos(mgr)
    total = format_size(sum(i.size_bytes for i in infos))
    kinds: list[dict[str, Any]] = [
        {},
        {"force_terminal": True},
        {"record": True},
        {"force_terminal": True, "no_color": True},
    ]
    for kwargs in kinds:
        console = Console(file=io.StringIO(), width=100, **kwargs)
        print_summary(mgr, console=console)
        reference = Console(file=io.StringIO(), width=100, **kwargs)
        reference.print(f"[bold]{root}[/]: 2 experiments, 10 checkpoints, {total}", soft_wrap=True)
        reference.print(experiments_table(infos))
        reference.print(f"[bold green]*[/] active: {G}")
        got = console.file.getvalue()  # type: ignore[attr-defined]
        assert got == reference.file.getvalue(), kwargs  # type: ignore[attr-defined]
        if kwargs.get("record"):
            assert console.export_html() == reference.export_html()  # the styles were recorded, as rich's
    plain = Console(file=io.StringIO(), width=100)
    print_summary(mgr, console=plain)
    lines = plain.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert lines[1].rstrip().endswith("best") and "loss" in lines[2] and lines[3].startswith("─")
    assert [line[:18] for line in lines[4:6]] == [f"  {H}", f"* {G}"]


class _AsciiFile(io.StringIO):
    encoding = "ascii"  # a pipe in the C locale: rich draws the table with ASCII characters


def test_an_ascii_output_keeps_richs_ascii_table(tmp_path: Path) -> None:
    mgr = CheckpointManager(_root(tmp_path / "root", (H, G)), mode="r")
    infos = experiment_infos(mgr)
    console = Console(file=_AsciiFile(), width=100)
    print_summary(mgr, console=console)
    reference = Console(file=_AsciiFile(), width=100)
    reference.print(experiments_table(infos))
    table = reference.file.getvalue()  # type: ignore[attr-defined]
    assert "-+-" in table and "─" not in table and table in console.file.getvalue()  # type: ignore[attr-defined]


# -- size on disk -----------------------------------------------------------------------------------
@pytest.mark.parametrize("storage_mode", ["files", "dedup"])
def test_size_on_disk_is_every_file_of_the_folder(tmp_path: Path, storage_mode: str) -> None:
    root = _root(tmp_path / "root", (H, G), storage_mode=storage_mode)
    exp = root / "checkpoints" / H
    (exp / "model" / f"{H}_step_000099.pt").write_bytes(b"a leftover without an entry")
    (exp / "model" / "nested").mkdir()
    (exp / "model" / "nested" / "deeper").mkdir()
    (exp / "model" / "nested" / "deeper" / "file").write_bytes(b"12345")
    (exp / "data" / "notes.txt").write_bytes(b"notes" * 10)
    (exp / "model" / "dangling").symlink_to(tmp_path / "nowhere")
    mgr = CheckpointManager(root, mode="r")
    for h in (H, G):
        assert mgr.size_on_disk(h) == _measured(mgr, h) > 0


def test_size_on_disk_measures_pending_sharded_and_unreadable(tmp_path: Path) -> None:
    root = _root(tmp_path / "root", (H, G))
    exp = root / "checkpoints" / H
    raw = json.loads((exp / "manifest.json").read_bytes())
    # step 2 under replacement: the file holds other bytes than its record says
    raw["checkpoints"][2]["pending"] = {"bytes": 3, "xxh3_128": "0" * 32}
    (exp / raw["checkpoints"][2]["file"]).write_bytes(b"abc")
    # a sharded checkpoint: its entry names a folder, its shards are measured
    shard_dir = exp / "model" / f"{H}_step_000007"
    shard_dir.mkdir()
    (shard_dir / "__0_0.distcp").write_bytes(b"s" * 40)
    (shard_dir / ".metadata").write_bytes(b"m" * 9)
    shards = [
        {"file": f"model/{H}_step_000007/__0_0.distcp", "bytes": 40, "xxh3_128": "0" * 32},
        {"file": f"model/{H}_step_000007/.metadata", "bytes": 9, "xxh3_128": "0" * 32},
    ]
    entry = dict(raw["checkpoints"][-1], step=7, seq=99, file=f"model/{H}_step_000007", bytes=49)
    raw["checkpoints"].append({**entry, "shards": shards})
    (exp / "manifest.json").write_text(json.dumps(raw))
    mgr = CheckpointManager(root, mode="r")
    assert mgr.manifest(H).entry(7) is not None and mgr.manifest(H).entry(2).pending is not None  # type: ignore[union-attr]
    assert mgr.size_on_disk(H) == _measured(mgr, H)

    (root / "checkpoints" / G / "manifest.json").write_bytes(b"{ not json")  # entries unknown: measure all
    mgr = CheckpointManager(root, mode="r")
    assert mgr.size_on_disk(G) == _measured(mgr, G) > 0


def test_size_on_disk_of_a_large_logged_manifest(tmp_path: Path) -> None:
    root = _root(tmp_path / "root", steps=300)
    with CheckpointManager(root, durable=False) as mgr:  # some commits go to the log, some replace
        for s in (10, 20, 400):
            mgr.save(H, s, writes(b"y" * 3), trigger="step")
    assert any(p.suffix == ".jsonl" for p in (root / "checkpoints" / H).iterdir())
    mgr = CheckpointManager(root, mode="r")
    assert mgr.size_on_disk(H) == _measured(mgr, H)


# -- the commit log, parsed in one call --------------------------------------------------------------
def _entry(step: int, **extra: Any) -> CheckpointEntry:
    return CheckpointEntry(
        step=step,
        file=f"model/{H}_step_{step:06d}.pt",
        bytes=8,
        xxh3_128="0" * 32,
        created=1.0,
        trigger="step",
        **extra,
    )


def _base() -> Manifest:
    return Manifest(
        exp_hash=H, architecture_hash="a", hyperparams_hash="h", created=1.0, checkpoints=[_entry(0)]
    )


def _log(lines: list[bytes]) -> bytes:
    return b"".join(lines)


def test_a_log_folds_to_the_same_manifest_as_line_by_line() -> None:
    lines = [
        encode_change(1, 1, [_entry(1, seq=2, metrics={"loss": 0.5})], [], None),
        encode_change(1, 2, [_entry(2, seq=3, tags=("a", "b"))], [0], None),
        encode_change(
            1,
            3,
            [replace(_entry(1, seq=2), abandoned=True)],
            [],
            {**_base().header(), "retention": {"keep_last": 1}},
        ),
    ]
    folded = fold(_base(), _log(lines) + b'{"g": 1, "n"', 1, "log")
    assert folded.lines == 3 and folded.bytes == len(_log(lines)) and folded.torn
    assert [e.step for e in folded.manifest.checkpoints] == [1, 2]
    assert folded.manifest.checkpoints[0].abandoned and folded.manifest.retention == {"keep_last": 1}
    raws = _log(lines).split(b"\n")[:-1]
    assert manifest_log._parse_all(raws) is not None  # the one-call path was the one taken
    by_line = manifest_log._apply(_base(), raws, None, 1, "log")
    at_once = manifest_log._apply(_base(), raws, manifest_log._parse_all(raws), 1, "log")
    assert by_line == at_once


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (b"not json\n", "line 2 is not valid JSON"),
        (b'{"g": 1, "n": 7}\n', "line 2 is not commit 2 of log generation 1"),
        (b"[1, 2]\n", "line 2 is not commit 2 of log generation 1"),
        (b'{"g": 1, "n": 2, "put": [{"step": "x"}]}\n', "line 2: missing or malformed field"),
        (b"\n", "line 2 is not valid JSON"),
    ],
    ids=["not json", "out of order", "not an object", "malformed entry", "empty line"],
)
def test_a_bad_line_is_named_as_line_by_line(bad: bytes, message: str) -> None:
    good = encode_change(1, 1, [_entry(1, seq=2)], [], None)
    third = encode_change(1, 3, [_entry(3, seq=4)], [], None)
    with pytest.raises(ManifestError, match=re.escape(message)):
        fold(_base(), good + bad + third, 1, "log")


def test_a_line_split_by_damage_is_an_error() -> None:
    line = encode_change(1, 1, [_entry(1, seq=2, description="split here")], [], None)
    damaged = line.replace(b"split here", b"split\nhere")
    with pytest.raises(ManifestError, match="line 1 is not valid JSON"):
        fold(_base(), damaged, 1, "log")


# -- entries ------------------------------------------------------------------------------------------
def test_entries_read_from_a_manifest_are_the_constructors_entries() -> None:
    raw = {
        "step": 3,
        "seq": 4,
        "file": "model/x.pt",
        "bytes": 10,
        "xxh3_128": "ab" * 16,
        "created": 2,
        "trigger": "step",
        "metrics": {"loss": 1, "nan": None},
        "tags": ["t"],
        "description": "d",
        "abandoned": True,
        "pending": {"bytes": 5, "xxh3_128": "cd" * 16},
        "shards": [{"file": "model/x.pt/a", "bytes": 10, "xxh3_128": "ef" * 16}],
        "unknown": "ignored",
    }
    entry = entry_from_dict(raw)
    rebuilt = CheckpointEntry(**{f.name: getattr(entry, f.name) for f in fields(CheckpointEntry)})
    assert entry == rebuilt and repr(entry) == repr(rebuilt) and entry.__dict__ == rebuilt.__dict__
    assert entry.to_dict() == {k: v for k, v in raw.items() if k != "unknown"} | {
        "metrics": {"loss": 1.0, "nan": None}
    }
    assert isinstance(entry.created, float) and entry.tags == ("t",) and entry.sharded
    with pytest.raises(AttributeError):
        entry.step = 5  # type: ignore[misc]
    assert replace(entry, step=9).step == 9
    plain = entry_from_dict({k: raw[k] for k in ("step", "file", "bytes", "xxh3_128", "created", "trigger")})
    assert plain == _entry(3).__class__(
        step=3, file="model/x.pt", bytes=10, xxh3_128="ab" * 16, created=2.0, trigger="step"
    )
    for broken in (
        {**raw, "bytes": "many"},
        {**raw, "metrics": ["loss"]},
        {k: v for k, v in raw.items() if k != "trigger"},
    ):
        with pytest.raises((KeyError, TypeError, ValueError, AttributeError)):
            entry_from_dict(broken)


# -- the command ----------------------------------------------------------------------------------------
def test_ls_pauses_the_collector_only_while_it_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _root(tmp_path / "root")
    assert gc.isenabled()
    assert main(["ls", str(root)]) == 0 and gc.isenabled()
    assert main(["ls", str(tmp_path / "nowhere")]) == 2 and gc.isenabled()
    gc.disable()
    try:
        assert main(["ls", str(root), "--json"]) == 0 and not gc.isenabled()  # left as it was
    finally:
        gc.enable()
    assert H in capsys.readouterr().out


def test_ls_imports_no_other_commands_modules(tmp_path: Path) -> None:
    root = _root(tmp_path / "root")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def imported() -> set[str]:
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "weightslab.cli", "ls", str(root)],
            cwd=REPO,
            env={**env, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        assert H in proc.stdout
        return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", proc.stderr, flags=re.MULTILINE))

    unneeded = {
        "rich.progress",
        "rich.logging",
        "rich.tree",
        "weightslab.cli.render",
        "weightslab.cli.console",
        "weightslab.inspect.gc",
        "weightslab.inspect.diff",
        "weightslab.inspect.verify",
        "weightslab.inspect.backup",
        "weightslab.inspect.lineage",
        "weightslab.inspect.overview",
    }
    quick = imported()  # from the summary: not even the tables
    assert "weightslab.cli.listing" in quick and "weightslab.cli.tables" not in quick
    assert not quick & unneeded
    (root / "checkpoints" / H / "summary.json").unlink()  # the full path: the manifest is read
    full = imported()
    assert "weightslab.cli.tables" in full and not full & unneeded
