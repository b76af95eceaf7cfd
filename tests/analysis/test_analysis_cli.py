"""``weightslab analyze`` and examples/analyze_run.py: as users run them."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from weightslab.cli.analyze import add_analyze_parser, run_analyze

from ..hubserver import HubServer
from .analysis_runs import LocalRun, PublishedRun

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test from tmp_path: default output folders and relative paths never touch the checkout."""
    monkeypatch.chdir(tmp_path)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_DISABLE_XET": "1", "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_on_a_local_root(local_run: LocalRun, tmp_path: Path) -> None:
    argv = ["-m", "weightslab.cli.analyze", "analyze", str(local_run.root), "--out", "out", "--workers", "2"]
    result = _run(*argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for branch in local_run.snapshots:
        assert branch in result.stdout
    assert "6 checkpoints analysed, 0 with errors" in result.stdout
    assert "\x1b[" not in result.stdout  # no colour codes or progress bars in a pipe
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["checkpoints"] == 6 and summary["source"] == str(local_run.root)
    assert len(list((tmp_path / "out" / "checkpoints").glob("*.json"))) == 6


def test_cli_analyses_a_local_roots_weights_by_default(local_run: LocalRun, tmp_path: Path) -> None:
    argv = ["-m", "weightslab.cli.analyze", "analyze", str(local_run.root), "--out", "out"]
    result = _run(*argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())["rows"]
    assert [r["branch"] for r in rows] == list(local_run.snapshots)
    for r in rows:
        state = local_run.snapshots[r["branch"]].model_state
        norm = float(torch.cat([t.double().reshape(-1) for t in state.values()]).norm())
        assert r["weights_available"] and r["total_parameters"] == 212
        assert r["weights_norm"] == pytest.approx(norm, rel=1e-9)
    table = {line.split()[0]: line.split() for line in result.stdout.splitlines() if "-step" in line}
    for branch in local_run.snapshots:  # the params and |w| columns are filled
        assert table[branch][7] == "212" and table[branch][8] != "-", table[branch]

    skipped = _run(*argv[:-1], "out-no-weights", "--no-weights", cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    rows = json.loads((tmp_path / "out-no-weights" / "summary.json").read_text())["rows"]
    assert [(r["weights_available"], r["total_parameters"]) for r in rows] == [(False, None)] * 6
    assert all(r["has_weights"] and r["optimizer_available"] for r in rows)

    both = _run(*argv, "--include-weights", "--no-weights", cwd=tmp_path)
    assert both.returncode == 2 and "not allowed with argument --include-weights" in both.stderr


def test_cli_help_says_what_the_weight_options_do_for_each_source(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="weightslab")
    add_analyze_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["analyze", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "a local root's are analysed by default (they are in the step files, nothing is downloaded" in text
    assert "A Hub repo's are analysed only with --include-weights, which downloads them" in text
    assert "--include-weights Hub repo: also analyse the weights" in text
    assert "removing what was downloaded once analysed. Local root: the default already" in text
    assert "--no-weights do not analyse the weights (local root: reads only the optimizer state" in text


def test_cli_on_a_hub_repo_with_weights(
    hub: HubServer, published: dict[str, PublishedRun], tmp_path: Path
) -> None:
    run = published["pythia"]
    argv = ["-m", "weightslab.cli.analyze", "analyze", run.repo_id, "--include-weights"]
    argv += ["--endpoint", hub.endpoint, "--cache-dir", str(tmp_path / "cache")]
    result = _run(*argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "5 checkpoints analysed, 1 with errors" in result.stdout
    assert "step50: optimizer (training/optim.pt): CheckpointFormatError" in result.stdout
    out = tmp_path / "analysis" / "pythia-test__pythia-tiny"  # the default output directory
    assert (out / "summary.csv").is_file() and (out / "learning_rates.csv").is_file()
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [r["total_parameters"] for r in rows] == [212] * 5
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # what it downloaded is removed


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "./no/such/root",
            "weightslab analyze: local root ./no/such/root does not exist; pass the root_log_dir",
        ),
        ("nobody/none", "weightslab analyze: 'nobody/none' is neither a local directory nor a repository at"),
    ],
)
def test_cli_bad_sources_exit_2_with_one_line(
    hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str, message: str
) -> None:
    parser = argparse.ArgumentParser(prog="weightslab")
    add_analyze_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["analyze", source, "--endpoint", hub.endpoint, "--cache-dir", str(tmp_path)])
    assert run_analyze(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(message) and captured.err.count("\n") == 1


def test_cli_unreachable_hub_exits_1_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In tmp_path (see _work_in_tmp) no runs/quickstart exists: the name can only be a repo id.
    parser = argparse.ArgumentParser(prog="weightslab")
    add_analyze_parser(parser.add_subparsers(dest="command"))
    argv = ["analyze", "runs/quickstart", "--endpoint", "http://127.0.0.1:9", "--cache-dir", str(tmp_path)]
    assert run_analyze(parser.parse_args(argv)) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "weightslab analyze: 'runs/quickstart' is not a local directory, and listing it as a repository at "
        "http://127.0.0.1:9 failed (ConnectError"
    )
    assert err.count("\n") == 1


def test_cli_rejects_a_root_without_checkpoints_and_bad_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="weightslab")
    add_analyze_parser(parser.add_subparsers(dest="command"))
    assert run_analyze(parser.parse_args(["analyze", str(tmp_path)])) == 2
    assert "is not a weightslab root: it has no checkpoints/ directory" in capsys.readouterr().err
    assert run_analyze(parser.parse_args(["analyze", str(tmp_path), "--workers", "0"])) == 2
    assert capsys.readouterr().err == "weightslab analyze: --workers must be at least 1, got 0\n"


def test_cli_help_describes_the_sources(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="weightslab")
    add_analyze_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["analyze", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for words in ("REPO_OR_ROOT", "step1000-tokens4B", "--include-weights", "--workers N", "--out DIR"):
        assert words in text


def test_example_analyze_run(local_run: LocalRun, tmp_path: Path) -> None:
    script = str(REPO_ROOT / "examples" / "analyze_run.py")
    result = _run(script, str(local_run.root), "--out", str(tmp_path / "analysis"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "learning rate by step and param group" in result.stdout
    assert (tmp_path / "analysis" / "learning_rates.csv").is_file()

    missing = _run(script, cwd=tmp_path)  # the default runs/quickstart does not exist here
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr == (
        "analyze_run.py: no weightslab root at runs/quickstart; run examples/quickstart.py first "
        "(it writes runs/quickstart) or pass the root_log_dir of your run\n"
    )
