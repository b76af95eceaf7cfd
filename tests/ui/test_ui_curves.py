"""The dashboard's learning-rate and weight-norm curves over a real local root, and their cache."""

from __future__ import annotations

import json
import math
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.analysis.analysis_runs import LocalRun, _model, _optimizer_and_scheduler, _train_step
from tests.analysis.conftest import local_run  # noqa: F401
from tests.s3.conftest import S3Server, s3_server, s3_url  # noqa: F401
from tests.ui.recorders import Calls
from weightslab.analysis import process_all_checkpoints
from weightslab.analysis.checkpoint import failed_analysis
from weightslab.components import AutomaticCheckpointSystem, CheckpointConfig
from weightslab.errors import AnalysisSourceError, ConfigError, UnknownExperimentError
from weightslab.format.layout import RootLayout
from weightslab.registry.ledger import Ledger
from weightslab.store.manager import CheckpointManager
from weightslab.ui.curves import TOTAL, CurveCache, Curves, Series, curves_from_analyses, experiment_curves

LR_NAMES = ["optimizer · group 0", "optimizer · group 1"]  # AdamW: a decay and a no-decay group


@pytest.fixture
def root_copy(local_run: LocalRun, tmp_path: Path) -> Path:  # noqa: F811
    """A copy of the shared root that a test may damage."""
    return Path(shutil.copytree(local_run.root, tmp_path / "root"))


def _saved_norms(root: Path, exp_hash: str, step: int) -> dict[str, float]:
    """The L2 norm of each layer's saved weights and of all of them, from the step file itself."""
    manager = CheckpointManager(root, mode="r")
    entry = next(e for e in manager.manifest(exp_hash).checkpoints if e.step == step)
    state = manager.load_entry(exp_hash, entry)["models"]["model"]
    layers: dict[str, list[torch.Tensor]] = {}
    for name, tensor in state.items():
        layers.setdefault(name.split(".")[0], []).append(tensor.double().reshape(-1))
    norms = {layer: float(torch.linalg.vector_norm(torch.cat(ts))) for layer, ts in layers.items()}
    norms[TOTAL] = float(
        torch.linalg.vector_norm(torch.cat([t.double().reshape(-1) for t in state.values()]))
    )
    return norms


def test_lr_and_weight_norm_curves_of_each_experiment(local_run: LocalRun) -> None:  # noqa: F811
    for exp_hash, steps in local_run.experiments.items():
        progress = Calls()
        curves = experiment_curves(local_run.root, exp_hash, progress=progress)
        assert curves.errors == [] and curves.checkpoints == len(steps)
        assert progress.calls[0] == (0, 3) and progress.calls[-1] == (3, 3)
        assert sorted(progress.calls) == [(0, 3), (1, 3), (2, 3), (3, 3)]

        # One lr series per param group, each value the optimizer's lr when the checkpoint was taken.
        assert [s.name for s in curves.lr] == LR_NAMES
        for group, series in enumerate(curves.lr):
            assert series.steps == steps and series.label == "learning rate"
            expected = [local_run.snapshots[f"{exp_hash[:8]}-step{s}"].lrs[group] for s in steps]
            assert series.values == expected

        # One weight-norm series per layer (Linear 0 and Linear 2 of the Sequential), then the total.
        assert [s.name for s in curves.weight_norm] == ["0", "2", TOTAL]
        saved = {s: _saved_norms(local_run.root, exp_hash, s) for s in steps}
        for series in curves.weight_norm:
            assert series.steps == steps and series.label == "L2 norm"
            assert series.values == pytest.approx([saved[s][series.name] for s in steps], rel=1e-9)

        encoded = json.loads(json.dumps(curves.to_dict(), allow_nan=False))
        assert encoded["lr"][0] == {
            "name": LR_NAMES[0],
            "steps": steps,
            "values": curves.lr[0].values,
            "label": "learning rate",
        }


def test_a_hash_prefix_selects_the_experiment_and_bad_ones_are_refused(
    local_run: LocalRun,  # noqa: F811
    tmp_path: Path,
) -> None:
    first, second = local_run.experiments
    curves = experiment_curves(local_run.root, second[:6])
    assert curves.lr[0].steps == local_run.experiments[second]
    with pytest.raises(UnknownExperimentError, match=r"no experiment in .* matches 'ffffffff'"):
        experiment_curves(local_run.root, "ffffffff")
    with pytest.raises(AnalysisSourceError, match="is not a weightslab root"):
        experiment_curves(tmp_path, first)
    with pytest.raises(ConfigError, match="max_workers must be an int >= 1, got 0"):
        CurveCache(max_workers=0)
    with pytest.raises(ConfigError, match="retry_failed_s must be a number of seconds >= 0, got -1"):
        CurveCache(retry_failed_s=-1)


def test_a_damaged_or_missing_step_file_is_reported_not_raised(
    root_copy: Path,
    local_run: LocalRun,  # noqa: F811
) -> None:
    first = next(iter(local_run.experiments))
    exp = RootLayout(root_copy).experiment(first)
    data = bytearray(exp.step_file(20).read_bytes())
    data[len(data) // 2] ^= 0xFF
    exp.step_file(20).write_bytes(bytes(data))
    exp.step_file(30).unlink()

    curves = experiment_curves(root_copy, first)
    assert len(curves.errors) == 2
    damaged, missing = curves.errors
    assert damaged.startswith(f"{first[:8]}-step20: CheckpointCorruptedError")
    assert missing.startswith(f"{first[:8]}-step30: CheckpointNotFoundError") and "is missing" in missing
    # The damaged checkpoints leave gaps; the good one keeps its values.
    snap10 = local_run.snapshots[f"{first[:8]}-step10"]
    assert [s.values for s in curves.lr] == [[snap10.lrs[0], None, None], [snap10.lrs[1], None, None]]
    total = next(s for s in curves.weight_norm if s.name == TOTAL)
    assert total.steps == [10, 20, 30] and total.values[1:] == [None, None]
    assert total.values[0] == pytest.approx(_saved_norms(root_copy, first, 10)[TOTAL], rel=1e-9)


def test_the_cache_analyses_a_checkpoint_once_and_failures_again_later(
    root_copy: Path,
    local_run: LocalRun,  # noqa: F811
) -> None:
    first, second = local_run.experiments
    cache = CurveCache()
    once = cache.curves(root_copy, first)
    assert cache.analysed == 3
    progress = Calls()
    again = cache.curves(root_copy, first, progress=progress)
    assert progress.calls == [(0, 0)] and cache.analysed == 3
    assert again == once
    cache.curves(root_copy, second)
    assert cache.analysed == 6  # another experiment is analysed on its own

    # A damaged file is analysed again only once its failure is old enough to retry.
    exp = RootLayout(root_copy).experiment(second)
    exp.step_file(40).write_bytes(b"not a step file")
    patient, eager = CurveCache(retry_failed_s=3600.0), CurveCache(retry_failed_s=0.0)
    for c in (patient, eager):
        assert len(c.curves(root_copy, second).errors) == 1
    for c in (patient, eager):
        progress = Calls()
        assert len(c.curves(root_copy, second, progress=progress).errors) == 1
        assert progress.calls[0] == ((0, 0) if c is patient else (0, 1))


def test_concurrent_polls_analyse_each_checkpoint_once(local_run: LocalRun) -> None:  # noqa: F811
    first = next(iter(local_run.experiments))
    cache = CurveCache()
    results: list[Curves] = []
    failures: list[BaseException] = []

    def poll() -> None:
        try:
            results.append(cache.curves(local_run.root, first))
        except BaseException as exc:  # reported to the test thread below
            failures.append(exc)

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures and len(results) == 4
    assert cache.analysed == 3 and all(r == results[0] for r in results)


@dataclass
class LiveRun:
    """A training run whose checkpoint system stays open between the test's reads."""

    root: str | Path
    storage_options: dict[str, Any] | None = None
    ledger: Ledger = field(default_factory=Ledger)
    model: torch.nn.Module = field(default_factory=lambda: _model(21))
    lrs: dict[int, list[float]] = field(default_factory=dict)
    states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    next_step: int = 0

    def __post_init__(self) -> None:
        self.optimizer, self.scheduler = _optimizer_and_scheduler("adamw", self.model, peak_lr=1e-2, total=40)
        self.system = AutomaticCheckpointSystem(
            CheckpointConfig(
                root_log_dir=self.root,
                checkpoint_frequency=10,
                async_save=False,
                storage_options=self.storage_options,
            ),
            ledger=self.ledger,
        )
        self.ledger.register_model("model", self.model)
        self.ledger.register_optimizer("optimizer", self.optimizer)
        self.ledger.register_scheduler("scheduler", self.scheduler)
        self.ledger.register_hyperparams("config", {"lr": 1e-2, "batch_size": 32})
        self.gen = torch.Generator().manual_seed(22)

    def train_to(self, last: int) -> None:
        for step in range(self.next_step, last + 1):
            loss = _train_step(self.model, self.optimizer, self.scheduler, self.gen) if step > 0 else 0.0
            self.system.checkpoint_on_step(step, metrics={"train/loss": loss})
            self.lrs[step] = [float(g["lr"]) for g in self.optimizer.param_groups]
            self.states[step] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.next_step = last + 1


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveRun]:
    run = LiveRun(tmp_path / "live")
    try:
        yield run
    finally:
        run.system.close()


def test_while_a_run_trains_only_new_checkpoints_are_analysed(live: LiveRun) -> None:
    live.train_to(20)
    (exp_hash,) = CheckpointManager(live.root, mode="r").experiments()
    cache = CurveCache()
    progress = Calls()
    before = cache.curves(live.root, exp_hash, progress=progress)
    assert progress.calls[0] == (0, 2) and cache.analysed == 2
    assert before.lr[0].steps == [10, 20]

    live.train_to(30)  # the writer still holds the root: the cache reads beside it
    progress = Calls()
    after = cache.curves(live.root, exp_hash, progress=progress)
    assert progress.calls == [(0, 1), (1, 1)] and cache.analysed == 3
    for group, series in enumerate(after.lr):
        assert series.steps == [10, 20, 30]
        assert series.values == [live.lrs[s][group] for s in (10, 20, 30)]
    totals = next(s for s in after.weight_norm if s.name == TOTAL)
    assert totals.values == pytest.approx([_saved_norms(live.root, exp_hash, s)[TOTAL] for s in (10, 20, 30)])


def test_curves_from_analyses_sorts_leaves_gaps_and_keeps_json_strict(
    local_run: LocalRun,  # noqa: F811
) -> None:
    first = next(iter(local_run.experiments))
    analyses = process_all_checkpoints(local_run.root, steps={10, 30}, include_weights=True)
    mine = {b: a for b, a in analyses.items() if b.startswith(first[:8])}
    broken = failed_analysis(
        local_run.root, f"{first[:8]}-step20", "CheckpointCorruptedError: bad bytes", local=True
    )
    manifest = failed_analysis(
        local_run.root, f"{first[:8]}-manifest", "ManifestError: unreadable", local=True
    )
    shuffled = [mine[f"{first[:8]}-step30"], manifest, broken, mine[f"{first[:8]}-step10"]]

    curves = curves_from_analyses(shuffled)
    assert curves.checkpoints == 4
    assert curves.errors == [
        f"{first[:8]}-step20: CheckpointCorruptedError: bad bytes",
        f"{first[:8]}-manifest: ManifestError: unreadable",
    ]
    lrs = [local_run.snapshots[f"{first[:8]}-step{s}"].lrs[0] for s in (10, 30)]
    assert curves.lr[0].steps == [10, 20, 30] and curves.lr[0].values == [lrs[0], None, lrs[1]]
    assert [s.name for s in curves.weight_norm] == ["0", "2", TOTAL]
    assert curves_from_analyses({}) == Curves()

    odd = Series(name="x", steps=[1, 2, 3], values=[math.nan, math.inf, 1.5])
    assert json.dumps(odd.to_dict(), allow_nan=False) == (
        '{"name": "x", "steps": [1, 2, 3], "values": [null, null, 1.5], "label": ""}'
    )


@pytest.mark.s3
def test_the_curves_of_an_s3_root(
    s3_server: S3Server,  # noqa: F811
    s3_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = LiveRun(s3_url, storage_options=s3_server.storage_options())
    try:
        run.train_to(20)
    finally:
        run.system.close()
    for name, value in s3_server.env().items():  # the dashboard reads the root with the AWS variables
        monkeypatch.setenv(name, value)
    (exp_hash,) = CheckpointManager(s3_url, mode="r").experiments()
    curves = experiment_curves(s3_url, exp_hash)
    assert curves.errors == []
    for group, series in enumerate(curves.lr):
        assert series.steps == [10, 20] and series.values == [run.lrs[s][group] for s in (10, 20)]
    total = next(s for s in curves.weight_norm if s.name == TOTAL)
    expected = [
        float(torch.linalg.vector_norm(torch.cat([t.double().reshape(-1) for t in s.values()])))
        for s in (run.states[10], run.states[20])
    ]
    assert total.values == pytest.approx(expected, rel=1e-9)
