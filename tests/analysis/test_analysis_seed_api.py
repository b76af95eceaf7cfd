"""The seed tool's documented API, as its users call it: positional arguments, its model shapes, its example.

Everything runs through the real huggingface_hub client against the test Hub, which is named the way
the seed's users name a Hub: ``HF_ENDPOINT`` (and ``HF_HUB_CACHE``) in the environment.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from weightslab.analysis import (
    CheckpointAnalysis,
    CheckpointComponents,
    CheckpointSummaryRow,
    ConfigAnalysis,
    OptimizerAnalysis,
    WeightsAnalysis,
    analyze_complete_checkpoint,
    analyze_optimizer_checkpoint,
    create_comprehensive_summary,
    create_learning_rate_summary,
    download_optimizer_checkpoint,
    process_all_checkpoints,
    process_single_checkpoint,
    save_all_analyses_outputs,
    save_checkpoint_analysis,
)
from weightslab.errors import ConfigError

from ..hubserver import HubServer
from .analysis_runs import PublishedRun


@pytest.fixture
def seed_env(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test Hub as ``$HF_ENDPOINT``, a fresh ``$HF_HUB_CACHE``, and tmp_path as the working directory."""
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cache"


def test_the_seed_usage_example_runs_as_written(
    seed_env: Path,
    published: dict[str, PublishedRun],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = published["datadecide"]
    repo_id = run.repo_id  # the example's "org/model-checkpoints"

    # ---- the seed's usage example, verbatim but for the import (above) and the repo id ----
    analyses = process_all_checkpoints(repo_id, max_workers=8, include_weights=False)
    summary_df = create_comprehensive_summary(analyses)
    print(summary_df[["branch", "step", "current_lr", "model_type"]])
    for branch, analysis in sorted(analyses.items(), key=lambda x: x[1].step):  # noqa: B007
        opt = analysis.components.optimizer
        if opt.available and opt.learning_rate_info:
            lr = opt.learning_rate_info.param_group_lrs[0].current_lr
            print(f"Step {analysis.step}: LR = {lr}")
    csv_path, lr_path, json_path = save_all_analyses_outputs(analyses, "output/")
    # ---- end of the example ----

    printed = capsys.readouterr().out
    with_lr = [b for b in analyses if b in run.with_optimizer]  # analyses are in step order already
    assert with_lr == ["step20-seed-default", "step20-seed-large-aux", "step40-seed-default"]
    lines = re.findall(r"^Step (\d+): LR = (.+)$", printed, flags=re.MULTILINE)
    assert [(int(step), float(lr)) for step, lr in lines] == [
        (run.snapshots[b].step, run.snapshots[b].lrs[0]) for b in with_lr
    ]  # the exact learning rates the optimizers had, not approximations
    assert [line for line in printed.splitlines() if line.startswith("Step ")] == [
        f"Step {run.snapshots[b].step}: LR = {run.snapshots[b].lrs[0]}" for b in with_lr
    ]
    header = printed.splitlines()[0].split()
    assert header == ["branch", "step", "current_lr", "model_type"]
    assert printed.count("olmo2") == len(run.snapshots)

    by_branch = summary_df.set_index("branch")
    for b in run.snapshots:
        expected = run.snapshots[b].lrs[0] if b in run.with_optimizer else None
        got = by_branch.loc[b, "current_lr"]
        assert (pd.isna(got) and expected is None) or got == expected

    out = tmp_path / "output"
    assert (csv_path, lr_path, json_path) == tuple(
        str(Path("output/") / name) for name in ("summary.csv", "learning_rates.csv", "summary.json")
    )
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["branch"]) == list(analyses)
    assert list(summary["current_lr"].dropna()) == [run.snapshots[b].lrs[0] for b in with_lr]
    assert set(summary["model_type"]) == {"olmo2"}
    learning_rates = pd.read_csv(lr_path)
    assert list(
        zip(learning_rates["branch"], learning_rates["group"], learning_rates["lr"], strict=True)
    ) == [(b, g, lr) for b in with_lr for g, lr in enumerate(run.snapshots[b].lrs)]
    meta = json.loads(Path(json_path).read_text())
    assert (meta["source"], meta["checkpoints"], meta["failed"]) == (repo_id, len(run.snapshots), 0)
    assert [r["current_lr"] for r in meta["rows"] if r["optimizer_available"]] == [
        run.snapshots[b].lrs[0] for b in with_lr
    ]


def test_the_seed_model_shapes(seed_env: Path, published: dict[str, PublishedRun]) -> None:
    run = published["datadecide"]
    branch, a = process_single_checkpoint(run.repo_id, "step40-seed-default", False, False)
    assert branch == "step40-seed-default" and isinstance(a, CheckpointAnalysis)
    assert (a.branch, a.step) == (branch, 40) and isinstance(a.components, CheckpointComponents)

    opt = a.components.optimizer
    assert opt.available and opt.error is None and opt.checkpoint_keys == ("state", "param_groups")
    assert opt.learning_rate_info is not None
    groups = opt.learning_rate_info.param_group_lrs
    assert [(g.group_index, g.current_lr, g.weight_decay, g.momentum) for g in groups] == [
        (0, run.snapshots[branch].lrs[0], 0.1, None), (1, run.snapshots[branch].lrs[1], 0.0, None),
    ]  # fmt: skip
    assert groups[0].initial_lr == 0.01 and opt.learning_rate_info.lr_scheduler_present is False
    param_groups, state = opt.optimizer_info["param_groups"], opt.optimizer_info["state"]
    assert (param_groups.type, param_groups.size, param_groups.num_param_groups) == ("list", 2, 2)
    assert param_groups.learning_rate == run.snapshots[branch].lrs[0]
    assert {"lr", "betas", "params", "initial_lr"} <= set(param_groups.param_group_keys)
    assert (state.type, state.num_parameters, state.state_keys) == (
        "dict", 4, ("step", "exp_avg", "exp_avg_sq"),
    )  # fmt: skip
    cfg = a.components.config
    assert cfg.available and cfg.model_type == "olmo2" and a.components.config_file == "config.json"
    weights = a.components.weights
    assert not weights.available and weights.error is None  # not asked for: absent, but an object
    assert a.components.weight_files == ("model.safetensors",)  # the file listing is kept beside

    row = CheckpointSummaryRow.from_analysis(a)
    assert (row.optimizer_available, row.config_available, row.weights_available) == (True, True, False)
    assert row.current_lr == row.lr == run.snapshots[branch].lrs[0] and row.model_type == "olmo2"

    _, without = process_single_checkpoint(run.repo_id, "step10-seed-default")
    assert not without.components.optimizer.available and without.components.optimizer.error is None
    assert without.components.optimizer.learning_rate_info is None and without.ok

    _, missing = process_single_checkpoint(run.repo_id, "step99-seed-default")
    for part in (missing.components.optimizer, missing.components.config, missing.components.weights):
        assert not part.available and part.error is not None
        assert "has no branch or tag 'step99-seed-default'" in part.error
    assert missing.error == missing.errors[0]

    empty = CheckpointComponents()  # what an analysis holds before anything is read
    assert isinstance(empty.optimizer, OptimizerAnalysis) and not empty.optimizer.available
    assert isinstance(empty.config, ConfigAnalysis) and not empty.config.available
    assert isinstance(empty.weights, WeightsAnalysis) and not empty.weights.available


def test_the_seed_functions_positionally(
    seed_env: Path, published: dict[str, PublishedRun], tmp_path: Path
) -> None:
    run = published["datadecide"]
    path, ok, error = download_optimizer_checkpoint(run.repo_id, "step20-seed-default")
    assert ok and error == "" and isinstance(path, str) and Path(path).is_file()
    assert str(seed_env) in path  # $HF_HUB_CACHE was used
    opt = analyze_optimizer_checkpoint(checkpoint_path=path)
    assert [g.current_lr for g in opt.param_groups] == run.snapshots["step20-seed-default"].lrs
    none, failed, message = download_optimizer_checkpoint(run.repo_id, "step10-seed-default", None)
    assert (none, failed) == (None, False) and "has no training/optim.pt" in message

    # repo_id, branch, include_weights, weight_files, delete_weights_after
    a = analyze_complete_checkpoint(run.repo_id, "step30-seed-default", True, ["model.safetensors"], True)
    assert a.components.weights.available and a.components.weights.total_parameters == 212
    assert not any(p.name == "model.safetensors" for p in seed_env.rglob("*"))  # deleted after, as asked
    kept = analyze_complete_checkpoint(run.repo_id, "step30-seed-default", True)
    assert kept.components.weights.available
    assert any(p.name == "model.safetensors" for p in seed_env.rglob("*"))  # the seed's default: kept

    wrong = analyze_complete_checkpoint(run.repo_id, "step30-seed-default", True, ["model.bin"])
    assert not wrong.components.weights.available and wrong.components.weights.error is not None
    assert "has no file 'model.bin'; its weight files are ['model.safetensors']" in wrong.errors[0]
    with pytest.raises(ConfigError, match=r"got the str 'model.safetensors'; pass \['model.safetensors'\]"):
        analyze_complete_checkpoint(run.repo_id, "step30-seed-default", True, "model.safetensors")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="include_weights is False; pass include_weights=True"):
        analyze_complete_checkpoint(run.repo_id, "step30-seed-default", False, ["model.safetensors"])

    analyses = process_all_checkpoints(run.repo_id, 2, False, False)
    assert list(create_comprehensive_summary(all_analyses=analyses)["branch"]) == list(analyses)
    assert len(create_learning_rate_summary(all_analyses=analyses)) == 2 * len(run.with_optimizer)
    saved = save_checkpoint_analysis(analyses["step40-seed-default"], "step40-seed-default", "one")
    assert saved == str(Path("one") / "step40-seed-default.json")
    detail = json.loads((tmp_path / saved).read_text())
    assert detail["components"]["optimizer"]["available"] is True
    assert detail["components"]["weights"]["available"] is False

    csv_path, lr_path, json_path = save_all_analyses_outputs(analyses)  # no output_dir: here
    assert (csv_path, lr_path, json_path) == ("summary.csv", "learning_rates.csv", "summary.json")
    assert all((tmp_path / p).is_file() for p in (csv_path, lr_path, json_path))
    assert (tmp_path / csv_path).read_text() == create_comprehensive_summary(analyses).to_csv(index=False)
