"""DataFrames sorted by step, and the JSON / CSV outputs, from analyses of a published and a local run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from weightslab.analysis import (
    CheckpointAnalysis,
    CheckpointSummaryRow,
    create_comprehensive_summary,
    create_learning_rate_summary,
    process_all_checkpoints,
    save_all_analyses_outputs,
    save_checkpoint_analysis,
)
from weightslab.errors import ConfigError

from ..hubserver import HubServer
from .analysis_runs import LocalRun, PublishedRun


@pytest.fixture
def pythia(
    hub: HubServer, published: dict[str, PublishedRun], tmp_path: Path
) -> dict[str, CheckpointAnalysis]:
    run = published["pythia"]
    return process_all_checkpoints(
        run.repo_id, endpoint=hub.endpoint, cache_dir=tmp_path, include_weights=True
    )


def test_comprehensive_summary(
    pythia: dict[str, CheckpointAnalysis], published: dict[str, PublishedRun]
) -> None:
    run = published["pythia"]
    shuffled = list(reversed(list(pythia.values())))  # any order in, sorted by step out
    df = create_comprehensive_summary(shuffled)
    assert list(df.columns) == [f.name for f in dataclasses.fields(CheckpointSummaryRow)]
    assert list(df["branch"]) == ["step10", "step20", "step30", "step40", "step50"]
    assert str(df["step"].dtype) == "Int64" and list(df["step"]) == [10, 20, 30, 40, 50]
    assert list(df["has_optimizer"]) == [True, True, False, True, True]
    by_branch = df.set_index("branch")
    for branch in run.with_optimizer:
        assert by_branch.loc[branch, "lr"] == run.snapshots[branch].lrs[0]
        assert by_branch.loc[branch, "momentum"] == 0.9
        assert by_branch.loc[branch, "momentum_buffer_norm"] == pytest.approx(
            run.snapshots[branch].state_norm("momentum_buffer"), rel=1e-9
        )
    assert pd.isna(by_branch.loc["step30", "lr"]) and pd.isna(by_branch.loc["step30", "error"])
    assert "CheckpointFormatError" in by_branch.loc["step50", "error"]
    assert (df["model_type"] == "gpt_neox").all() and (df["total_parameters"] == 212).all()
    assert (
        df["estimated_parameters"].iloc[0]
        == 2 * 50 * 16 + 2 * (4 * 16 * 16 + 4 * 16 + 2 * 16 * 64 + 64 + 16 + 4 * 16) + 2 * 16
    )


def test_learning_rate_summary_has_one_row_per_group(
    pythia: dict[str, CheckpointAnalysis], published: dict[str, PublishedRun]
) -> None:
    run = published["pythia"]
    df = create_learning_rate_summary(pythia)
    assert list(df["branch"]) == ["step10", "step20", "step40"]
    assert list(df["lr"]) == [run.snapshots[b].lrs[0] for b in ("step10", "step20", "step40")]
    assert list(df["lr_ratio"]) == pytest.approx([0.5, 0.25, 0.0625])  # StepLR halving every 10 steps
    assert set(df["initial_lr"]) == {0.05} and set(df["num_parameters"]) == {4}


def test_empty_analyses_give_empty_tables_with_columns() -> None:
    assert create_comprehensive_summary({}).empty
    assert "lr" in create_learning_rate_summary([]).columns


def test_a_local_run_and_a_published_run_in_one_table(
    pythia: dict[str, CheckpointAnalysis], local_run: LocalRun
) -> None:
    local = process_all_checkpoints(local_run.root)
    df = create_learning_rate_summary({**pythia, **local})
    assert list(df["step"]) == sorted(df["step"])
    assert set(df["branch"]) == {"step10", "step20", "step40", *local}
    assert len(df) == 3 + 2 * len(local)  # the local AdamW has two param groups


def test_outputs_are_written_and_read_back(pythia: dict[str, CheckpointAnalysis], tmp_path: Path) -> None:
    out = save_all_analyses_outputs(pythia, tmp_path / "out", source="pythia-test/pythia-tiny")
    assert out.summary_csv == str(tmp_path / "out" / "summary.csv")
    assert tuple(out) == (out.summary_csv, out.learning_rates_csv, out.summary_json)  # the seed's 3-tuple
    assert set(out.checkpoint_jsons) == set(pythia)
    assert all(p.is_file() for p in out.paths())

    summary = pd.read_csv(out.summary_csv)
    assert list(summary["branch"]) == list(pythia)
    assert summary.loc[0, "lr"] == pythia["step10"].optimizer.learning_rate.lr  # type: ignore[union-attr]
    lrs = pd.read_csv(out.learning_rates_csv)
    assert list(lrs["step"]) == [10, 20, 40]

    meta = json.loads(Path(out.summary_json).read_text())
    assert (meta["format"], meta["source"], meta["checkpoints"], meta["failed"]) == (
        "weightslab.analysis/1", "pythia-test/pythia-tiny", 5, 1,
    )  # fmt: skip
    assert [r["branch"] for r in meta["rows"]] == list(pythia)

    detail = json.loads(Path(out.checkpoint_jsons["step20"]).read_text())
    assert detail["branch"] == "step20" and detail["revision"] == pythia["step20"].revision
    step20 = pythia["step20"].optimizer
    optimizer = detail["components"]["optimizer"]
    assert step20 is not None and optimizer["available"] is True
    assert optimizer["learning_rate"]["param_group_lrs"][0]["lr"] == step20.param_groups[0].lr
    assert detail["components"]["weights"]["total_parameters"] == 212
    assert {c["name"] for c in optimizer["components"]} == {"momentum_buffer"}
    step30 = json.loads(Path(out.checkpoint_jsons["step30"]).read_text())["components"]["optimizer"]
    assert (step30["available"], step30["error"]) == (False, None)  # no optimizer file on that branch


def test_save_checkpoint_analysis_makes_a_safe_file_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = CheckpointAnalysis(
        source="org/run", source_kind="hub", branch="refs/pr/1", revision=None, step=None,
        errors=("nan test",), metrics={"loss": float("nan")},
    )  # fmt: skip
    path = save_checkpoint_analysis(a, a.branch, tmp_path)
    assert path == str(tmp_path / "refs_pr_1.json")
    data = json.loads(Path(path).read_text())
    assert data["branch"] == "refs/pr/1" and data["metrics"] == {"loss": None}  # NaN is written as null

    monkeypatch.chdir(tmp_path)
    assert save_checkpoint_analysis(a, "step7") == "step7.json"  # no output_dir: the current directory
    assert json.loads((tmp_path / "step7.json").read_text())["branch"] == "refs/pr/1"
    with pytest.raises(ConfigError, match=r"branch must be the branch name \(a str\), got PosixPath"):
        save_checkpoint_analysis(a, tmp_path)  # type: ignore[arg-type]  # the old (analysis, dir) order
