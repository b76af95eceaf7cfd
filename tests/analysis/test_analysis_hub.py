"""The analysis of published runs, through the real huggingface_hub client and the test Hub."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
from rich.console import Console

from weightslab.analysis import (
    analyze_complete_checkpoint,
    analyze_optimizer_checkpoint,
    create_learning_rate_summary,
    download_optimizer_checkpoint,
    process_all_checkpoints,
    process_single_checkpoint,
)
from weightslab.errors import CheckpointNotFoundError, ConfigError

from ..hubserver import HubServer
from .analysis_runs import PublishedRun, train

SHA = re.compile(r"^[0-9a-f]{40}$")


def _blobs(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("blobs/*") if p.is_file()]


def test_download_optimizer_checkpoint(
    hub: HubServer, published: dict[str, PublishedRun], tmp_path: Path
) -> None:
    run = published["datadecide"]
    path, ok, error = download_optimizer_checkpoint(
        run.repo_id, "step20-seed-default", endpoint=hub.endpoint, cache_dir=tmp_path
    )
    assert ok and error == "" and isinstance(path, str)
    assert Path(path).name == "optim.pt" and run.commits["step20-seed-default"] in Path(path).parts
    a = analyze_optimizer_checkpoint(path)
    assert [g.lr for g in a.param_groups] == run.snapshots["step20-seed-default"].lrs
    # Revision-safe: the branch was resolved once (refs), the file fetched by commit sha.
    resolves = [r.path for r in hub.requests if "/resolve/" in r.path]
    assert resolves and all(run.commits["step20-seed-default"] in p for p in resolves)


def test_download_into_a_local_dir(
    hub: HubServer, published: dict[str, PublishedRun], tmp_path: Path
) -> None:
    run = published["pythia"]
    path, ok, _ = download_optimizer_checkpoint(
        run.repo_id, "step10", tmp_path / "here", endpoint=hub.endpoint, cache_dir=tmp_path / "cache"
    )
    assert ok and path is not None and Path(path) == (tmp_path / "here" / "training" / "optim.pt").resolve()
    assert not _blobs(tmp_path / "cache")


@pytest.mark.parametrize(
    ("repo", "branch", "message"),
    [
        (
            "allenai-test/DataDecide-tiny",
            "step10-seed-default",
            "has no training/optim.pt: this checkpoint does not",
        ),
        ("allenai-test/DataDecide-tiny", "step99-seed-default", "has no branch or tag 'step99-seed-default'"),
        (
            "allenai-test/absent",
            "main",
            "'allenai-test/absent' is neither a local directory nor a repository",
        ),
    ],
)
def test_download_failures_are_data_not_exceptions(
    hub: HubServer, published: dict[str, PublishedRun], tmp_path: Path, repo: str, branch: str, message: str
) -> None:
    path, ok, error = download_optimizer_checkpoint(repo, branch, endpoint=hub.endpoint, cache_dir=tmp_path)
    assert (path, ok) == (None, False)
    assert error is not None and message in error


@pytest.mark.parametrize("key", ["datadecide", "olmo", "pythia"])
def test_process_all_checkpoints(
    hub: HubServer, published: dict[str, PublishedRun], tmp_path: Path, key: str
) -> None:
    run = published[key]
    analyses = process_all_checkpoints(run.repo_id, max_workers=3, endpoint=hub.endpoint, cache_dir=tmp_path)

    steps = {b: s.step for b, s in run.snapshots.items()}
    assert list(analyses) == sorted(
        run.snapshots, key=lambda b: (steps[b], b)
    )  # sorted by step; main skipped
    assert not run.other_branches & set(analyses)
    for branch, a in analyses.items():
        snap = run.snapshots[branch]
        assert a.source == run.repo_id and a.source_kind == "hub"
        assert a.revision == run.commits[branch] and a.step == snap.step
        assert a.components is not None and a.components.config_file == "config.json"
        assert a.components.has_optimizer == (branch in run.with_optimizer | run.corrupt_optimizer)
        assert a.config is not None and a.config.model_type == run.config["model_type"]
        assert a.weights is None  # weights only on request
        if branch in run.corrupt_optimizer:
            assert a.optimizer is None and len(a.errors) == 1
            assert "optimizer (training/optim.pt): CheckpointFormatError" in a.errors[0]
            continue
        assert a.errors == ()
        if branch not in run.with_optimizer:
            assert a.optimizer is None
            continue
        assert a.optimizer is not None
        # The learning rates are exactly the ones the optimizer had when the checkpoint was saved.
        assert [g.lr for g in a.optimizer.param_groups] == snap.lrs
        assert a.optimizer.learning_rate.lr == snap.lrs[0]
        assert a.optimizer.state_step == snap.optimizer_step
        moment = "exp_avg" if run.kind == "adamw" else "momentum_buffer"
        component = a.optimizer.component(moment)
        assert component is not None
        assert component.stats.norm == pytest.approx(snap.state_norm(moment), rel=1e-9)

    lr = create_learning_rate_summary(analyses)
    expected = [
        (b, run.snapshots[b].step, i, lr_value)
        for b in analyses
        if b in run.with_optimizer
        for i, lr_value in enumerate(run.snapshots[b].lrs)
    ]
    assert list(zip(lr["branch"], lr["step"], lr["group"], lr["lr"], strict=True)) == expected
    assert list(lr["step"]) == sorted(lr["step"])


def test_branch_names_become_step_tokens_and_seed(
    hub: HubServer, published: dict[str, PublishedRun], tmp_path: Path
) -> None:
    olmo = process_all_checkpoints(published["olmo"].repo_id, endpoint=hub.endpoint, cache_dir=tmp_path)
    assert [(a.step, a.tokens, a.tokens_label) for a in olmo.values()] == [
        (10, 1_000_000, "1M"), (20, 2_000_000, "2M"), (30, 3_000_000, "3M"),
    ]  # fmt: skip
    dd = process_all_checkpoints(
        published["datadecide"].repo_id, endpoint=hub.endpoint, cache_dir=tmp_path, steps={20}
    )
    assert {b: a.seed for b, a in dd.items()} == {
        "step20-seed-default": "default",
        "step20-seed-large-aux": "large-aux",
    }


def test_every_download_is_by_commit_sha(
    hub: HubServer, published: dict[str, PublishedRun], tmp_path: Path
) -> None:
    run = published["olmo"]
    process_all_checkpoints(run.repo_id, endpoint=hub.endpoint, cache_dir=tmp_path, include_weights=True)
    refs = [r for r in hub.requests if r.path.endswith("/refs")]
    assert len(refs) == 1  # the branches were resolved once, together
    for r in hub.requests:
        if "/resolve/" in r.path or "/tree/" in r.path:
            revision = (
                r.path.split("/resolve/" if "/resolve/" in r.path else "/tree/")[1]
                .split("/")[0]
                .split("?")[0]
            )
            assert SHA.match(revision), r.path


def test_weights_are_analysed_and_removed_after(
    hub: HubServer, published: dict[str, PublishedRun], tmp_path: Path
) -> None:
    run = published["olmo"]
    branch = "step20-tokens2M"
    cache = tmp_path / "cache"
    a = analyze_complete_checkpoint(
        run.repo_id, branch, include_weights=True, delete_weights_after=True, endpoint=hub.endpoint,
        cache_dir=cache,
    )  # fmt: skip
    state = run.snapshots[branch].model_state
    assert a.weights is not None and a.errors == ()
    assert a.components is not None and len(a.components.weight_files) == 2  # both shards, not the index
    assert a.weights.total_parameters == sum(t.numel() for t in state.values()) == 212
    expected = float(torch.cat([t.double().reshape(-1) for t in state.values()]).norm())
    assert a.weights.stats.norm == pytest.approx(expected, rel=1e-9)
    assert {g.name for g in a.weights.layer_groups} == {"0", "2"}
    remaining = {p.name for p in cache.rglob("*") if p.is_file() or p.is_symlink()}
    assert not any(n.endswith(".safetensors") for n in remaining)  # pointers removed
    blob_sizes = sorted(p.stat().st_size for p in _blobs(cache))
    assert len(blob_sizes) == 2  # config.json and optim.pt stay; the two weight blobs are gone

    kept = analyze_complete_checkpoint(
        run.repo_id, branch, include_weights=True, delete_weights_after=False, delete_optimizer_after=True,
        endpoint=hub.endpoint, cache_dir=tmp_path / "kept",
    )  # fmt: skip
    assert kept.weights is not None and kept.optimizer is not None
    names = {p.name for p in (tmp_path / "kept").rglob("*") if p.is_symlink()}
    assert names == {"config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}


def test_weights_already_in_the_cache_are_kept(
    hub: HubServer, published: dict[str, PublishedRun], tmp_path: Path
) -> None:
    run = published["pythia"]
    from huggingface_hub import hf_hub_download

    commit = run.commits["step20"]
    hf_hub_download(
        run.repo_id, "model.safetensors", revision=commit, endpoint=hub.endpoint, cache_dir=tmp_path
    )
    a = analyze_complete_checkpoint(
        run.repo_id, "step20", include_weights=True, endpoint=hub.endpoint, cache_dir=tmp_path
    )
    assert a.weights is not None
    assert (
        tmp_path / "models--pythia-test--pythia-tiny" / "snapshots" / commit / "model.safetensors"
    ).is_file()


def test_a_branch_analysed_by_its_commit_is_not_affected_by_a_later_push(
    hub: HubServer, tmp_path: Path
) -> None:
    repo = "moving/run"
    old, new = train("sgd", [10], seed=1, peak_lr=0.1)[10], train("sgd", [10], seed=1, peak_lr=0.4)[10]
    buf = io.BytesIO()
    torch.save(old.optimizer_state, buf)
    old_commit = hub.commit(repo, "step10", {"training/optim.pt": buf.getvalue()})
    buf = io.BytesIO()
    torch.save(new.optimizer_state, buf)
    hub.commit(repo, "step10", {"training/optim.pt": buf.getvalue()})  # the branch moves on

    pinned = analyze_complete_checkpoint(
        repo, "step10", revision=old_commit, endpoint=hub.endpoint, cache_dir=tmp_path
    )
    latest = analyze_complete_checkpoint(repo, "step10", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert pinned.optimizer is not None and latest.optimizer is not None
    assert pinned.optimizer.learning_rate.lr == old.lrs[0] == pytest.approx(0.05)
    assert latest.optimizer.learning_rate.lr == new.lrs[0] == pytest.approx(0.2)
    assert pinned.revision == old_commit != latest.revision


def test_environment_supplies_endpoint_and_cache(
    hub: HubServer, published: dict[str, PublishedRun], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "env-cache"))
    analyses = process_all_checkpoints(published["pythia"].repo_id, steps={10})
    assert list(analyses) == ["step10"] and analyses["step10"].optimizer is not None
    assert (tmp_path / "env-cache" / "models--pythia-test--pythia-tiny").is_dir()


def test_process_single_checkpoint_records_failures(
    hub: HubServer, published: dict[str, PublishedRun], tmp_path: Path
) -> None:
    branch, missing = process_single_checkpoint(
        published["pythia"].repo_id, "step70", endpoint=hub.endpoint, cache_dir=tmp_path
    )
    assert branch == "step70" and missing.step == 70 and missing.optimizer is None
    assert len(missing.errors) == 1 and "has no branch or tag 'step70'" in missing.errors[0]
    _, gone = process_single_checkpoint(
        "nobody/none", "step1-tokens2B", endpoint=hub.endpoint, cache_dir=tmp_path
    )
    assert (gone.step, gone.tokens) == (1, 2_000_000_000)
    assert "AnalysisSourceError" in gone.errors[0]
    _, ok = process_single_checkpoint(
        published["pythia"].repo_id, "step40", endpoint=hub.endpoint, cache_dir=tmp_path
    )
    assert ok.ok and ok.optimizer is not None and ok.revision == published["pythia"].commits["step40"]


def test_bad_sources_and_arguments(hub: HubServer, tmp_path: Path) -> None:
    with pytest.raises(
        CheckpointNotFoundError, match="'nobody/none' is neither a local directory nor a repository"
    ):
        process_all_checkpoints("nobody/none", endpoint=hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="max_workers must be an int >= 1, got 0"):
        process_all_checkpoints("nobody/none", 0, endpoint=hub.endpoint)


def test_progress_is_quiet_off_a_terminal_and_shown_on_one(
    hub: HubServer, published: dict[str, PublishedRun], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = published["pythia"].repo_id
    process_all_checkpoints(repo, endpoint=hub.endpoint, cache_dir=tmp_path / "a")
    assert capsys.readouterr() == ("", "")
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=120)
    process_all_checkpoints(repo, endpoint=hub.endpoint, cache_dir=tmp_path / "b", console=terminal)
    assert f"analysing {repo}" in screen.getvalue() and "5/5" in screen.getvalue()
