"""A local weightslab root written by the real checkpoint system, analysed: one checkpoint, one branch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from weightslab.analysis import list_local_checkpoints, process_all_checkpoints, process_single_checkpoint
from weightslab.errors import CheckpointNotFoundError
from weightslab.format.layout import RootLayout

from .analysis_runs import LocalRun


@pytest.fixture
def root_copy(local_run: LocalRun, tmp_path: Path) -> Path:
    """A copy of the shared root that a test may damage."""
    return Path(shutil.copytree(local_run.root, tmp_path / "root"))


def test_every_committed_checkpoint_is_a_branch(local_run: LocalRun) -> None:
    (first, first_steps), (second, second_steps) = local_run.experiments.items()
    assert (first_steps, second_steps) == ([10, 20, 30], [31, 40, 50])  # the batch-size change at step 31

    analyses = process_all_checkpoints(local_run.root, max_workers=2)
    assert list(analyses) == [f"{first[:8]}-step{s}" for s in first_steps] + [
        f"{second[:8]}-step{s}" for s in second_steps
    ]
    for branch, a in analyses.items():
        snap = local_run.snapshots[branch]
        assert a.ok, a.errors
        assert a.source == str(local_run.root) and a.source_kind == "local" and a.step == snap.step
        assert a.optimizer is not None and a.optimizer.layout == "weightslab"
        assert a.optimizer.optimizer_name == "optimizer" and a.optimizer.optimizer_type == "adamw"
        # The learning rates are the ones the optimizer had at that step.
        assert [g.lr for g in a.optimizer.param_groups] == snap.lrs
        assert a.optimizer.state_step == snap.optimizer_step == snap.step
        assert a.optimizer.scheduler is not None and a.optimizer.scheduler.last_epoch == snap.step
        exp_avg = a.optimizer.component("exp_avg")
        assert exp_avg is not None and exp_avg.stats.norm == pytest.approx(
            snap.state_norm("exp_avg"), rel=1e-9
        )
        assert a.metrics == {"train/loss": pytest.approx(local_run.losses[snap.step])}
        assert a.config is not None
        assert a.config.values["config.batch_size"] == (32 if branch.startswith(first[:8]) else 64)
        assert (a.config.hidden_size, a.config.num_layers, a.config.estimated_parameters) == (16, 2, None)
        assert a.components is not None and a.components.has_optimizer and a.components.has_weights
        assert a.weights is None

    manifest = json.loads(RootLayout(local_run.root).experiment(second).manifest.read_text())
    assert analyses[f"{second[:8]}-step40"].revision == manifest["checkpoints"][1]["xxh3_128"]


def test_weights_of_local_checkpoints(local_run: LocalRun) -> None:
    analyses = process_all_checkpoints(local_run.root, include_weights=True, steps={20})
    (a,) = analyses.values()
    state = local_run.snapshots[a.branch].model_state
    assert a.weights is not None and a.weights.total_parameters == 212
    expected = float(torch.cat([t.double().reshape(-1) for t in state.values()]).norm())
    assert a.weights.stats.norm == pytest.approx(expected, rel=1e-9)
    assert [t.name for t in a.weights.tensors] == list(state)


def test_damaged_and_uncommitted_files(root_copy: Path, local_run: LocalRun) -> None:
    first, second = local_run.experiments
    layout = RootLayout(root_copy)
    damaged = layout.experiment(first).step_file(20)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    layout.experiment(first).step_file(30).unlink()
    shutil.copyfile(
        layout.experiment(second).step_file(50), layout.experiment(second).step_file(60)
    )  # no entry

    analyses = process_all_checkpoints(root_copy)
    assert f"{second[:8]}-step60" not in analyses  # a file without a manifest entry is not a checkpoint
    unverified = process_all_checkpoints(root_copy, verify=False, steps={20})
    assert "CheckpointCorruptedError" not in " ".join(unverified[f"{first[:8]}-step20"].errors)
    corrupted = analyses[f"{first[:8]}-step20"]
    assert corrupted.optimizer is None and corrupted.step == 20
    assert (
        corrupted.errors[0].startswith("CheckpointCorruptedError: checkpoint ")
        and "is corrupted" in corrupted.errors[0]
    )
    missing = analyses[f"{first[:8]}-step30"]
    assert "CheckpointNotFoundError" in missing.errors[0] and "is missing" in missing.errors[0]
    assert [b for b, a in analyses.items() if a.ok] == [
        f"{first[:8]}-step10", f"{second[:8]}-step31", f"{second[:8]}-step40", f"{second[:8]}-step50",
    ]  # fmt: skip


def test_unreadable_manifest_is_reported_not_fatal(root_copy: Path, local_run: LocalRun) -> None:
    first, second = local_run.experiments
    RootLayout(root_copy).experiment(first).manifest.write_text("{truncated")
    analyses = process_all_checkpoints(root_copy)
    problem = analyses[f"{first[:8]}-manifest"]
    assert problem.step is None and problem.errors[0].startswith("ManifestError: manifest ")
    assert "is invalid: not valid JSON" in problem.errors[0]
    assert [a.step for a in analyses.values()] == [31, 40, 50, None]


def test_experiments_sharing_a_hash_prefix_get_full_hash_names(root_copy: Path, local_run: LocalRun) -> None:
    first, _ = local_run.experiments
    twin = first[:8] + "ffffffff"
    twin_dir = Path(
        shutil.copytree(
            RootLayout(root_copy).experiment(first).dir, RootLayout(root_copy).checkpoints_dir / twin
        )
    )
    # A real experiment carries its own hash in its file names and manifest: give the copy the twin's.
    for f in [*twin_dir.rglob(f"{first}_*")]:
        f.rename(f.with_name(f.name.replace(first, twin)))
    manifest = twin_dir / "manifest.json"
    manifest.write_text(manifest.read_text().replace(first, twin))
    names = [c.branch for c in list_local_checkpoints(root_copy).checkpoints]
    assert f"{first}-step10" in names and f"{twin}-step10" in names
    analyses = process_all_checkpoints(root_copy, steps={10})
    assert set(analyses) == {f"{first}-step10", f"{twin}-step10"}
    assert all(a.ok for a in analyses.values())


def test_process_single_local_checkpoint(local_run: LocalRun) -> None:
    branch = next(iter(local_run.snapshots))
    name, a = process_single_checkpoint(local_run.root, branch, include_weights=True)
    assert name == branch and a.ok and a.weights is not None and a.optimizer is not None
    _, unknown = process_single_checkpoint(local_run.root, "deadbeef-step10")
    assert unknown.step == 10 and "has no committed checkpoint named 'deadbeef-step10'" in unknown.errors[0]


def test_a_path_that_does_not_exist_is_never_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match=r"local root .*/runs/quickstart does not exist"):
        process_all_checkpoints(tmp_path / "runs" / "quickstart")


def test_a_directory_that_is_not_a_root(tmp_path: Path) -> None:
    with pytest.raises(
        CheckpointNotFoundError, match="is not a weightslab root: it has no checkpoints/ directory"
    ):
        process_all_checkpoints(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    assert process_all_checkpoints(tmp_path) == {}
