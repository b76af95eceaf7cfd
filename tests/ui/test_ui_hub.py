"""The dashboard's view of a Hub run, through the real huggingface_hub client and the test Hub."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.analysis.analysis_runs import PublishedRun
from tests.analysis.conftest import hub, hub_server, published  # noqa: F401
from tests.hubserver import HubServer
from tests.ui.recorders import Calls
from weightslab.analysis import estimate_parameter_count
from weightslab.errors import AnalysisSourceError, ConfigError, HubUnavailableError
from weightslab.ui.hub import analyse_hub_run, parse_hub_source


def test_parse_hub_source() -> None:
    assert parse_hub_source("hf://EleutherAI/pythia-160m") == "EleutherAI/pythia-160m"
    assert parse_hub_source("HF://org/repo/") == "org/repo"
    assert parse_hub_source("hf://gpt2") == "gpt2"
    assert parse_hub_source("runs/quickstart") is None
    assert parse_hub_source("s3://bucket/runs") is None
    with pytest.raises(ConfigError, match=r"'hf://datasets/org/data' names a dataset .* hf://<org>/<repo>"):
        parse_hub_source("hf://datasets/org/data")
    with pytest.raises(ConfigError, match=r"'hf://spaces/org/app' names a space"):
        parse_hub_source("hf://spaces/org/app")
    for bad in (
        "hf://",
        "hf://org/repo/sub/file.pt",
        "hf://org/repo@step10",
        "hf://org/-repo",
        "hf://a--b/c",
    ):
        with pytest.raises(
            ConfigError, match=rf"{bad!r} is not a Hub model repository: pass hf://<org>/<repo>"
        ):
            parse_hub_source(bad)


def test_a_pythia_style_run_one_row_per_branch(
    hub: HubServer,  # noqa: F811
    published: dict[str, PublishedRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    run = published["pythia"]
    progress = Calls()
    result = analyse_hub_run(run.repo_id, endpoint=hub.endpoint, cache_dir=tmp_path, progress=progress)
    assert result.repo_id == run.repo_id and result.endpoint == hub.endpoint
    assert progress.calls[0] == (0, 5) and progress.calls[-1] == (5, 5) and len(progress.calls) == 6

    rows = result.branches
    assert [r.branch for r in rows] == ["step10", "step20", "step30", "step40", "step50"]  # main skipped
    parameters = estimate_parameter_count(run.config)
    for row in rows:
        snap = run.snapshots[row.branch]
        assert row.step == snap.step and row.revision == run.commits[row.branch]
        assert row.has_config and row.has_weights and row.parameters == parameters
        assert row.has_optimizer == (row.branch in run.with_optimizer | run.corrupt_optimizer)
        if row.branch in run.with_optimizer:
            assert row.lr == snap.lrs[0] and row.group_lrs == snap.lrs and row.errors == []
            assert row.optimizer_type == "sgd"
        else:
            assert row.lr is None and row.group_lrs == []
    (corrupt,) = [r for r in rows if r.errors]
    assert corrupt.branch == "step50" and "CheckpointFormatError" in corrupt.errors[0]
    assert result.errors == [f"step50: {corrupt.errors[0]}"]

    (series,) = result.curves.lr
    assert series.name == "optimizer · group 0" and series.steps == [10, 20, 30, 40, 50]
    lr = {b: run.snapshots[b].lrs[0] for b in run.with_optimizer}
    assert series.values == [lr["step10"], lr["step20"], None, lr["step40"], None]
    assert result.curves.weight_norm == []
    # No weight file was downloaded: they are the large files.
    assert not [r.path for r in hub.requests if r.path.endswith(".safetensors")]

    encoded = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert [b["branch"] for b in encoded["branches"]] == [r.branch for r in rows]
    assert encoded["curves"]["lr"][0]["values"] == series.values and encoded["errors"] == result.errors


def test_seeds_get_their_own_curves_and_tokens_their_rows(
    hub: HubServer,  # noqa: F811
    published: dict[str, PublishedRun],  # noqa: F811
    tmp_path: Path,
) -> None:
    dd = published["datadecide"]
    result = analyse_hub_run(dd.repo_id, endpoint=hub.endpoint, cache_dir=tmp_path, max_workers=2)
    assert [(r.branch, r.seed) for r in result.branches] == [
        ("step0-seed-default", "default"),
        ("step10-seed-default", "default"),
        ("step20-seed-default", "default"),
        ("step20-seed-large-aux", "large-aux"),
        ("step30-seed-default", "default"),
        ("step40-seed-default", "default"),
    ]
    by_name = {s.name: s for s in result.curves.lr}
    assert sorted(by_name) == [
        "seed default · optimizer · group 0",
        "seed default · optimizer · group 1",
        "seed large-aux · optimizer · group 0",
        "seed large-aux · optimizer · group 1",
    ]
    default = by_name["seed default · optimizer · group 1"]
    snaps = dd.snapshots
    assert default.steps == [0, 10, 20, 30, 40]
    assert default.values == [
        None,
        None,
        snaps["step20-seed-default"].lrs[1],
        None,
        snaps["step40-seed-default"].lrs[1],
    ]
    aux = by_name["seed large-aux · optimizer · group 0"]
    assert aux.steps == [20] and aux.values == [snaps["step20-seed-large-aux"].lrs[0]]

    olmo = published["olmo"]
    result = analyse_hub_run(olmo.repo_id, endpoint=hub.endpoint, cache_dir=tmp_path)
    assert [(r.branch, r.step, r.tokens) for r in result.branches] == [
        ("step10-tokens1M", 10, 1_000_000),
        ("step20-tokens2M", 20, 2_000_000),
        ("step30-tokens3M", 30, 3_000_000),
    ]
    assert [r.group_lrs for r in result.branches] == [olmo.snapshots[r.branch].lrs for r in result.branches]
    assert [s.name for s in result.curves.lr] == ["optimizer · group 0", "optimizer · group 1"]


def test_the_environment_names_the_hub(
    hub: HubServer,  # noqa: F811
    published: dict[str, PublishedRun],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "env-cache"))
    result = analyse_hub_run(published["olmo"].repo_id)
    assert result.endpoint == hub.endpoint and len(result.branches) == 3
    assert list((tmp_path / "env-cache").iterdir())


def test_a_missing_repo_or_an_unreachable_hub_is_a_clear_error(
    hub: HubServer,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(
        AnalysisSourceError, match=r"'nobody/missing' is neither a local directory nor a repository"
    ):
        analyse_hub_run("nobody/missing", endpoint=hub.endpoint, cache_dir=tmp_path)

    with socket.socket() as s:  # a port nothing listens on once this socket closes
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(HubUnavailableError, match=rf"listing it as a repository at {closed} failed"):
        analyse_hub_run("org/repo", endpoint=closed, cache_dir=tmp_path)

    (tmp_path / "org" / "repo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"'org/repo' is a Hub repository and also a folder"):
        analyse_hub_run("org/repo", endpoint=hub.endpoint)
