"""WeightslabCheckpoint on real Lightning runs (CPU, a tiny module, a shuffled seeded dataset).

The reference is one uninterrupted 60-step run; every interrupted run (stopped, resumed in a new
process, killed with SIGKILL, on two DDP ranks) must end with the same parameters, optimizer and
scheduler states and RNG state, compared with ``torch.equal``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.utilities.warnings import PossibleUserWarning

from tests.integrations.lightning_worker import TinyModule, fit, loaders, trainer
from weightslab.components import CheckpointManager
from weightslab.errors import ConfigError, RootError
from weightslab.integrations.lightning import WeightslabCheckpoint

pytestmark = pytest.mark.integrations

WORKER = Path(__file__).with_name("lightning_worker.py")
DEADLINE = 240.0  # seconds a worker may take to reach a point (the machine may be 5x slower)


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two saved states differ (tensors with ``torch.equal``), with the largest difference."""
    if isinstance(a, torch.Tensor):
        if isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b):
            return []
        if not isinstance(b, torch.Tensor) or a.shape != b.shape:
            return [f"{path}: {b!r} is not a tensor of shape {tuple(a.shape)}"]
        return [f"{path}: max |diff| {(a.double() - b.double()).abs().max().item():.3g}"]
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return [f"{path}: keys differ"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return [f"{path}: lengths differ"]
        return [
            d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((x.double() - b[k].double()).abs().max().item() for k, x in a.items())


def steps(root: Path) -> dict[str, list[tuple[int, str]]]:
    """Each experiment's committed checkpoints (step, trigger), as its manifest lists them."""
    manager = CheckpointManager(root, mode="r")
    return {h: [(e.step, e.trigger) for e in manager.checkpoints(h)] for h in manager.experiments()}


def events(root: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in CheckpointManager(root, mode="r").events() if e["event"] == name]


def committed(root: Path) -> set[int]:
    try:
        return {s for ckpts in steps(root).values() for s, _ in ckpts}
    except (RootError, OSError):  # the worker has not created the root yet
        return set()


def worker(*args: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def wait_until(done: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not done():
        if proc.poll() is not None:
            raise AssertionError(
                f"worker exited with {proc.returncode}: {proc.stderr and proc.stderr.read()!r}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"worker did not get there in {DEADLINE} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run: 60 steps (6 epochs of 10 batches), saving every 20."""
    state, _ = fit(tmp_path_factory.mktemp("reference"), 60)
    return state


def test_stop_at_40_then_resume_in_a_new_process_is_bit_exact(tmp_path: Path, reference: dict) -> None:
    root = tmp_path / "root"
    stopped, _ = fit(root, 40)
    assert stopped["global_step"] == 40
    out = tmp_path / "resumed.pt"
    proc = worker("fit", root, out, 60)
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err.decode()[-3000:]
    resumed = torch.load(out, weights_only=True)
    assert differences(reference, resumed) == []  # parameters, SGD momentum, StepLR, torch RNG
    [exp] = steps(root).values()
    assert exp == [(20, "step"), (40, "step"), (60, "step")]
    [event] = events(root, "resumed")
    assert (event["step"], event["mode"], event["skipped"]) == (40, "lightning", [])
    assert "Restoring states from the checkpoint path at" in err.decode()  # Lightning's own restore


def test_sigkill_mid_run_then_resume_reaches_the_same_state(tmp_path: Path, reference: dict) -> None:
    root, ready = tmp_path / "root", tmp_path / "ready"
    proc = worker("fit", root, tmp_path / "never.pt", 60, "--gate", 45, "--ready", ready)
    wait_until(lambda: ready.exists() and {20, 40} <= committed(root), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=DEADLINE)
    assert proc.returncode == -signal.SIGKILL
    [h] = steps(root)
    offered = WeightslabCheckpoint(root_log_dir=root).resume_path()
    assert offered == str(root.resolve() / "checkpoints" / h / "model" / f"{h}_step_000040.pt")
    resumed, _ = fit(root, 60)
    assert differences(reference, resumed) == []
    [exp] = steps(root).values()
    assert exp == [(20, "step"), (40, "step"), (60, "step")]


def test_a_corrupt_newest_step_file_falls_back_to_the_one_before(tmp_path: Path, reference: dict) -> None:
    root = tmp_path / "root"
    cb = WeightslabCheckpoint(root_log_dir=root, checkpoint_frequency=20)
    assert cb.resume_path() is None  # no root yet
    root.mkdir()
    assert cb.resume_path() is None  # an empty folder
    fit(root, 60)
    newest = Path(cb.resume_path() or "")
    assert newest.name.endswith("_step_000060.pt")
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    assert Path(cb.resume_path() or "").name.endswith("_step_000040.pt")
    resumed, _ = fit(root, 60)  # from 40 again: the same 20 steps, so the same end state
    assert differences(reference, resumed) == []
    [event] = events(root, "resumed")
    assert event["step"] == 40 and event["skipped"] == [f"{newest.parent.parent.name}/model/{newest.name}"]
    assert [s for s, _ in next(iter(steps(root).values()))] == [20, 40, 60]  # 60 saved again, verified
    assert CheckpointManager(root, mode="r").verify().problems == []


def test_mid_epoch_stop_restarts_the_epoch_as_lightning_does(tmp_path: Path, reference: dict) -> None:
    """Lightning restarts a plain DataLoader's epoch from its first batch (and warns): not exact."""
    root = tmp_path / "root"
    fit(root, 35)  # epoch 3, batch 5 of 10: the last step is saved at its batch end
    with pytest.warns(PossibleUserWarning, match="dataloader is not resumable"):
        resumed, _ = fit(root, 60)
    assert resumed["global_step"] == 60
    diff = max_difference(reference["params"], resumed["params"])
    print(f"mid-epoch resume at 35: max |param diff| after 60 steps {diff:.3g}")
    assert diff > 0
    # the same stop on an epoch boundary, without the RNG states, shows what restoring them does
    control = tmp_path / "control"
    fit(control, 40, save_rng=False)
    unseeded, _ = fit(control, 60, save_rng=False)
    assert max_difference(reference["params"], unseeded["params"]) > 0


def test_best_k_and_last_are_kept_exactly(tmp_path: Path) -> None:
    root = tmp_path / "root"
    seen: dict[int, float] = {}

    class Record(pl.Callback):
        def on_validation_end(self, trainer: Any, module: Any) -> None:
            seen[trainer.global_step] = float(trainer.callback_metrics["val_loss"])

    _, cb = fit(root, 60, checkpoint_frequency=10, monitor="val_loss", keep_best=2, extra=[Record()])
    best = sorted(seen, key=seen.__getitem__)[:2]
    [exp] = steps(root).values()
    assert {s for s, _ in exp} == {*best, 60}
    # each save at an epoch's last batch waited for that epoch's validation: fresh val_loss
    manager = CheckpointManager(root, mode="r")
    [h] = manager.experiments()
    assert {e.step: e.metrics["val_loss"] for e in manager.checkpoints(h)} == {
        s: seen[s] for s in {*best, 60}
    }
    assert cb.best_model_path.endswith(f"_step_{best[0]:06d}.pt")
    # ckpt_path="best" goes to this callback's best_model_path, and the step file loads for validate too
    module = TinyModule()
    trainer(60, [cb]).validate(module, loaders()[1], ckpt_path="best", verbose=False)
    saved = manager.load(h, best[0])["models"]["model"]
    assert all(torch.equal(v, saved[k]) for k, v in module.state_dict().items())


def test_every_n_epochs_and_the_last_step(tmp_path: Path) -> None:
    fit(tmp_path / "a", 45, checkpoint_frequency=1000, every_n_epochs=2)
    assert list(steps(tmp_path / "a").values()) == [[(20, "epoch"), (40, "epoch"), (45, "last")]]
    fit(tmp_path / "b", 45, checkpoint_frequency=1000, every_n_epochs=2, save_on_train_end=False)
    assert list(steps(tmp_path / "b").values()) == [[(20, "epoch"), (40, "epoch")]]


def test_an_epoch_schedule_without_validation_resumes_exactly(tmp_path: Path) -> None:
    """Step 40 ends epoch 3 at its batch end (no validation follows): the epoch's LR step is not lost."""
    options: dict[str, Any] = {"val": False, "interval": "epoch"}
    full, _ = fit(tmp_path / "full", 60, **options)
    fit(tmp_path / "resumed", 40, **options)
    resumed, _ = fit(tmp_path / "resumed", 60, **options)
    assert differences(full, resumed) == []
    assert full["schedulers"][0]["last_epoch"] == 6  # the lr changed after every epoch


def test_gradient_accumulation_resumes_exactly(tmp_path: Path) -> None:
    """Two batches an optimizer step: the first batch after the resume ends on the resumed step again."""
    accumulate = {"trainer_options": {"accumulate_grad_batches": 2}, "checkpoint_frequency": 10}
    full, _ = fit(tmp_path / "full", 30, **accumulate)
    fit(tmp_path / "resumed", 20, **accumulate)  # 5 steps an epoch: step 20 ends epoch 3
    resumed, _ = fit(tmp_path / "resumed", 30, **accumulate)
    assert differences(full, resumed) == []
    assert list(steps(tmp_path / "resumed").values()) == [[(10, "step"), (20, "step"), (30, "step")]]


def test_an_lr_change_in_a_new_run_opens_a_child_experiment(tmp_path: Path) -> None:
    root = tmp_path / "root"
    fit(root, 40)
    fit(root, 60, lr=0.02)
    manager = CheckpointManager(root, mode="r")
    first, child = manager.experiments()
    assert manager.manifest(first).parent is None
    parent = manager.manifest(child).parent
    assert parent is not None
    assert (parent.exp_hash, parent.checkpoint, parent.step, parent.reason) == (
        first,
        40,
        41,
        "config_change",
    )
    assert steps(root) == {first: [(20, "step"), (40, "step")], child: [(41, "config_change"), (60, "step")]}
    [change] = events(root, "change_detected")
    assert change["changed_keys"] == ["hparams.lr"]
    assert manager.read_config(child)["hparams"]["lr"] == 0.02


def test_pytorch_lightning_trainer_works_too(tmp_path: Path) -> None:
    ptl = pytest.importorskip("pytorch_lightning")

    class Linear(ptl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(6, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    for max_steps in (20, 30):
        cb = WeightslabCheckpoint(root_log_dir=tmp_path, checkpoint_frequency=10)
        options = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False}
        # pytorch_lightning does not know it as a Checkpoint: it would add a ModelCheckpoint of its own
        tr = ptl.Trainer(max_steps=max_steps, callbacks=[cb], enable_checkpointing=False, **options)
        tr.fit(Linear(), loaders()[0], ckpt_path=cb.resume_path())
        assert tr.global_step == max_steps
    assert list(steps(tmp_path).values()) == [[(10, "step"), (20, "step"), (30, "step")]]
    assert [e["step"] for e in events(tmp_path, "resumed")] == [20]


def test_a_plain_lightning_ckpt_still_resumes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = TinyModule()
    first = trainer(30, [WeightslabCheckpoint(root_log_dir=tmp_path / "a", checkpoint_frequency=20)])
    first.fit(module, *loaders())
    first.save_checkpoint(tmp_path / "plain.ckpt")
    cb = WeightslabCheckpoint(root_log_dir=tmp_path / "b", checkpoint_frequency=20)
    second = trainer(60, [cb])
    second.fit(TinyModule(), *loaders(), ckpt_path=tmp_path / "plain.ckpt")
    assert second.global_step == 60
    assert [s for s, _ in next(iter(steps(tmp_path / "b").values()))] == [40, 60]
    assert events(tmp_path / "b", "resumed") == []  # not a weightslab checkpoint: nothing to adopt


@pytest.mark.distributed
def test_ddp_on_two_cpu_ranks_resumes_bit_exact(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = worker("ddp", tmp_path / "runs", out, 60, "--stop", 40)
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err.decode()[-3000:]
    full = [torch.load(out / f"full_rank{r}.pt", weights_only=True) for r in (0, 1)]
    resumed = [torch.load(out / f"resumed_rank{r}.pt", weights_only=True) for r in (0, 1)]
    for rank in (0, 1):
        assert differences(full[rank], resumed[rank]) == [], f"rank {rank}"
    assert differences(full[0]["params"], full[1]["params"]) == []  # DDP keeps the replicas equal
    assert not torch.equal(full[0]["rng"], full[1]["rng"])  # each rank's own stream came back
    [exp] = steps(tmp_path / "runs" / "resumed").values()
    assert exp == [(20, "step"), (40, "step"), (60, "step")]


def test_a_due_step_before_the_first_validation_is_saved_at_its_own_batch(tmp_path: Path) -> None:
    """Validation every 2 epochs: step 10 ends epoch 0 with no validation and no val_loss yet.

    It is a step save, an epoch save, and (in the 10-step run) the last step: all three land on step
    10's batch end, and a resume from there continues exactly. (A save once waited for the monitored
    metric instead: then 10 was never saved in the 30-step run, and saved as "last" at on_train_end
    in the 10-step one. The sanity check is on: it is what set the validation loader up early.)
    """
    options: dict[str, Any] = {
        "checkpoint_frequency": 10,
        "every_n_epochs": 1,
        "monitor": "val_loss",
        "trainer_options": {"check_val_every_n_epoch": 2, "num_sanity_val_steps": 1},
    }
    with pytest.warns(UserWarning, match="monitor='val_loss' is not among the metrics"):
        full, _ = fit(tmp_path / "full", 30, **options)
    assert list(steps(tmp_path / "full").values()) == [[(10, "step"), (20, "step"), (30, "step")]]
    manager = CheckpointManager(tmp_path / "full", mode="r")
    [h] = manager.experiments()
    assert [e.metric("val_loss") is not None for e in manager.checkpoints(h)] == [False, True, True]
    with pytest.warns(UserWarning, match="monitor='val_loss'"):
        fit(tmp_path / "resumed", 10, **options)
    assert list(steps(tmp_path / "resumed").values()) == [[(10, "step")]]  # not "last" at on_train_end
    resumed, _ = fit(tmp_path / "resumed", 30, **options)
    assert differences(full, resumed) == []
    assert list(steps(tmp_path / "resumed").values()) == [[(10, "step"), (20, "step"), (30, "step")]]


def test_an_optimizer_that_shards_its_state_is_refused_before_training(tmp_path: Path) -> None:
    """ZeroRedundancyOptimizer holds its full state only after a collective that rank 0 cannot call alone."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    class Zero(TinyModule):
        def configure_optimizers(self) -> Any:
            return ZeroRedundancyOptimizer(self.parameters(), optimizer_class=torch.optim.SGD, lr=0.05)

    init = f"file://{tmp_path / 'rdzv'}"
    torch.distributed.init_process_group("gloo", init_method=init, rank=0, world_size=1)
    try:
        tr = trainer(20, [WeightslabCheckpoint(root_log_dir=tmp_path / "root", checkpoint_frequency=5)])
        with pytest.raises(ConfigError, match="ZeroRedundancyOptimizer, which shards its state"):
            tr.fit(Zero(), loaders()[0])
        assert tr.global_step == 0
    finally:
        torch.distributed.destroy_process_group()
    assert committed(tmp_path / "root") == set()
