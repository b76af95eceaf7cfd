"""WeightslabCallback on real Hugging Face Trainer runs (tiny GPT-2 from a config, CPU, no Hub).

The runs are those of ``hf_worker.py``: 60 update steps over 64 shuffled samples (16 steps per epoch,
dropout on, evaluation every 10 steps). A run resumed through ``resume_path()`` in a new process, after
a clean stop or a SIGKILL, must end bit for bit where the uninterrupted run ends: every parameter,
every optimizer state tensor, the logged losses, the best metric and the early-stopping counter.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.integrations import hf_worker
from weightslab.errors import ConfigError
from weightslab.format.manifest import Manifest
from weightslab.store.manager import CheckpointManager

pytestmark = pytest.mark.integrations

WORKER = Path(__file__).with_name("hf_worker.py")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Every run of this module on one intra-op thread: the same float sums in this process and in the
    workers (which get the same count), and no spinning threads on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(
    one_thread: None, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The uninterrupted 60-step run, without weightslab: its final state and its result."""
    out = tmp_path_factory.mktemp("reference")
    result = hf_worker.run(None, out)
    return torch.load(out / "final.pt", weights_only=True), result


def worker(root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run hf_worker.py in a new process (same thread count as this one, so the same float sums)."""
    cmd = [sys.executable, str(WORKER), str(root), str(out), "--threads", str(torch.get_num_threads())]
    proc = subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def only_manifest(root: Path) -> tuple[str, Manifest]:
    mgr = CheckpointManager(root, mode="r")
    exps = mgr.experiments()
    assert len(exps) == 1, exps
    return exps[0], mgr.manifest(exps[0])


def committed_steps(root: Path) -> list[int]:
    """The committed steps of every experiment of ``root`` (none before the first manifest)."""
    if not (root / "checkpoints").is_dir():
        return []
    mgr = CheckpointManager(root, mode="r")
    return [e.step for h in mgr.experiments() for e in mgr.manifest(h).checkpoints]


def assert_same_final_state(
    out: Path,
    reference: tuple[dict[str, torch.Tensor], dict[str, Any]],
    result: dict[str, Any],
    resumed_at: int | None = None,
) -> None:
    """Bit-exact equality with the uninterrupted run (the difference is reported if it is not).

    The Trainer restarts its loss-averaging window when it resumes, so a logged ``loss`` whose window
    holds ``resumed_at`` averages fewer steps than in the uninterrupted run; those are left out.
    """
    ref_state, ref_result = reference
    state = torch.load(out / "final.pt", weights_only=True)
    assert state.keys() == ref_state.keys()
    assert any(k.endswith(".exp_avg_sq") for k in state)  # the optimizer state is in the comparison
    worst = max((state[k].double() - ref_state[k].double()).abs().max().item() for k in state)
    assert all(torch.equal(state[k], ref_state[k]) for k in state), f"max abs difference {worst}"
    for key in ("global_step", "eval_losses", "best_metric", "early_stopping_counter"):
        assert result[key] == ref_result[key], key
    window = hf_worker.LOGGING_STEPS
    straddled = {
        str(s)
        for s in map(int, ref_result["losses"])
        if resumed_at is not None and s - window < resumed_at < s
    }
    assert result["losses"].keys() == ref_result["losses"].keys()
    assert {s: v for s, v in result["losses"].items() if s not in straddled} == {
        s: v for s, v in ref_result["losses"].items() if s not in straddled
    }


def test_stop_at_40_then_resume_in_a_new_process_matches_the_uninterrupted_run(
    tmp_path: Path, reference: tuple[dict[str, torch.Tensor], dict[str, Any]]
) -> None:
    root = tmp_path / "root"
    hf_worker.run(root, tmp_path / "first", stop_at=40, callback_options={"checkpoint_frequency": 20})
    exp, manifest = only_manifest(root)
    assert [(e.step, e.trigger) for e in manifest.checkpoints] == [(20, "step"), (40, "step")]

    worker(root, tmp_path / "second", "--resume", "--frequency", "20")
    result = json.loads((tmp_path / "second" / "result.json").read_text())
    # mid-epoch (40 = 2 epochs + 8 steps): the Trainer skipped 8 batches of the shuffled epoch
    assert Path(result["resume_path"]).name == "checkpoint-40"
    assert not result["resume_path_exists_after"]
    assert_same_final_state(tmp_path / "second", reference, result, resumed_at=40)
    same_exp, manifest = only_manifest(root)
    assert same_exp == exp
    assert [e.step for e in manifest.checkpoints] == [20, 40, 60]
    resumed = [e for e in CheckpointManager(root, mode="r").events() if e["event"] == "resumed"]
    assert [(e["exp_hash"], e["step"]) for e in resumed] == [(exp, 40)]


def test_sigkill_after_a_commit_then_resume_matches_the_uninterrupted_run(
    tmp_path: Path, reference: tuple[dict[str, torch.Tensor], dict[str, Any]]
) -> None:
    root = tmp_path / "root"
    cmd = [sys.executable, str(WORKER), str(root), str(tmp_path / "killed"), "--block-at", "36"]
    cmd += ["--frequency", "16", "--threads", str(torch.get_num_threads())]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:  # wait on the commit record: step 32 (an epoch boundary) committed
            steps = committed_steps(root)
            if 32 in steps:
                break
            assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
            assert time.monotonic() < deadline, f"no commit of step 32 (committed: {steps})"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()

    # the resume in a new process is the test above; this one resumes here
    result = hf_worker.run(
        root, tmp_path / "resumed", resume=True, callback_options={"checkpoint_frequency": 16}
    )
    # at an epoch boundary the Trainer restores the RNG before the epoch's first batch instead
    assert Path(result["resume_path"]).name == "checkpoint-32"
    assert_same_final_state(tmp_path / "resumed", reference, result, resumed_at=32)
    _, manifest = only_manifest(root)
    assert [e.step for e in manifest.checkpoints] == [16, 32, 48, 60]


def test_keep_last_and_keep_best_keep_exactly_those_steps(
    tmp_path: Path, reference: tuple[dict[str, torch.Tensor], dict[str, Any]]
) -> None:
    root = tmp_path / "root"
    options = {"checkpoint_frequency": 10, "keep_last": 2, "keep_best": 1, "monitor": "eval_loss"}
    result = hf_worker.run(root, tmp_path / "run", callback_options=options)
    evals = {int(s): v for s, v in result["eval_losses"].items()}
    best = min(evals, key=lambda s: evals[s])
    _, manifest = only_manifest(root)
    assert {e.step for e in manifest.checkpoints} == {best, 50, 60}
    for entry in manifest.checkpoints:  # each checkpoint carries the evaluation of its own step
        assert entry.metrics["eval_loss"] == evals[entry.step]
        assert entry.metrics["loss"] == result["losses"][str(entry.step)]
    assert_same_final_state(tmp_path / "run", reference, result)  # the callback changes no result


def test_every_n_epochs_saves_at_each_epoch_end(tmp_path: Path) -> None:
    root = tmp_path / "root"
    hf_worker.run(
        root, tmp_path / "run", callback_options={"checkpoint_frequency": 1000, "every_n_epochs": 1}
    )
    _, manifest = only_manifest(root)
    # 16 steps per epoch; the fourth epoch is cut at step 60 by max_steps, and ends there
    assert [(e.step, e.trigger) for e in manifest.checkpoints] == [
        (16, "epoch"),
        (32, "epoch"),
        (48, "epoch"),
        (60, "epoch"),
    ]


def test_a_learning_rate_change_opens_a_child_and_output_options_do_not(tmp_path: Path) -> None:
    root = tmp_path / "root"
    cb_options = {"checkpoint_frequency": 10}
    hf_worker.run(root, tmp_path / "a", stop_at=20, max_steps=40, callback_options=cb_options)
    first, _ = only_manifest(root)
    # another output folder and logging interval: the same experiment goes on
    hf_worker.run(
        root,
        tmp_path / "b",
        resume=True,
        stop_at=30,
        max_steps=40,
        logging_steps=5,
        output_dir=str(tmp_path / "elsewhere"),
        callback_options=cb_options,
    )
    same, manifest = only_manifest(root)
    assert same == first and [e.step for e in manifest.checkpoints] == [10, 20, 30]
    # another learning rate: a child of the first, branched from the checkpoint it resumed (30)
    hf_worker.run(
        root, tmp_path / "c", resume=True, max_steps=40, learning_rate=1e-3, callback_options=cb_options
    )
    mgr = CheckpointManager(root, mode="r")
    (child,) = [h for h in mgr.experiments() if h != first]
    parent = mgr.manifest(child).parent
    assert parent is not None
    assert (parent.exp_hash, parent.checkpoint, parent.reason) == (first, 30, "config_change")
    assert [e.step for e in mgr.manifest(child).checkpoints] == [31, 40]
    change = [e for e in mgr.events() if e["event"] == "change_detected"]
    assert [(e["previous"], e["exp_hash"], e["changed_keys"]) for e in change] == [
        (first, child, ["training_args.learning_rate"])
    ]
    assert mgr.read_config(child)["training_args"]["learning_rate"] == 1e-3


def test_resume_path_is_none_on_a_fresh_root_and_a_mismatched_start_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, spool = tmp_path / "root", tmp_path / "spool"
    trainer, cb, _ = hf_worker.build(root, tmp_path / "out", max_steps=10)
    assert cb is not None and cb.resume_path() is None
    trainer.train(resume_from_checkpoint=None)
    _, manifest = only_manifest(root)
    assert [(e.step, e.trigger) for e in manifest.checkpoints] == [(10, "last")]  # save_on_train_end

    trainer, cb, _ = hf_worker.build(
        root, tmp_path / "out", max_steps=20, callback_options={"resume_dir": spool}
    )
    assert cb is not None
    with caplog.at_level(logging.WARNING, logger="weightslab"):
        path = cb.resume_path()
    assert not [r for r in caplog.records if "not restored" in r.getMessage()]  # the Trainer loads them
    assert path is not None and Path(path).parent.parent == spool and Path(path).name == "checkpoint-10"
    assert sorted(p.name for p in Path(path).iterdir()) == [
        "model.safetensors",
        "optimizer.pt",
        "rng_state.pth",
        "scheduler.pt",
        "trainer_state.json",
    ]
    with pytest.raises(ConfigError, match=r"resume_from_checkpoint=callback\.resume_path"):
        trainer.train()  # forgot to pass the folder: the Trainer would start again at step 0
    trainer.train(resume_from_checkpoint=path)
    assert trainer.state.global_step == 20
    assert list(spool.iterdir()) == []  # deleted once the Trainer had read it
