"""adopt(): a trainer restored the state itself; the system continues that checkpoint's experiment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from weightslab.errors import CheckpointNotFoundError
from weightslab.registry.ledger import Ledger

from .conftest import train_step
from .test_system import setup_run, steps_and_triggers


def test_adopt_continues_the_experiment_and_abandons_what_came_after(
    make_system: Any, tmp_path: Path
) -> None:
    first = make_system(checkpoint_frequency=10, save_last=False, ledger=Ledger())
    model, opt, _ = setup_run(first.ledger)
    for step in range(1, 31):
        train_step(model, opt)
        first.checkpoint_on_step(step)
    h = first.exp_hash
    first.close()

    ledger = Ledger()
    second = make_system(checkpoint_frequency=10, save_last=False, ledger=ledger)
    model, opt, _ = setup_run(ledger)  # as if a trainer had loaded step 20 into them itself
    second.adopt(h or "", 20, {}, skipped=["x.pt"], mode="mytrainer")
    abandoned = [e.step for e in second.manager.manifest(h or "").checkpoints if e.abandoned]
    assert abandoned == [30]  # the future the old run had after 20; the continued run saves 30 again
    for step in range(21, 41):
        train_step(model, opt)
        second.checkpoint_on_step(step)
    second.flush()
    assert second.exp_hash == h
    manifest = second.manager.manifest(h or "")
    assert [e.step for e in manifest.checkpoints if not e.abandoned] == [10, 20, 30, 40]
    assert [e.step for e in manifest.checkpoints if e.abandoned] == []  # 30 was saved again
    assert steps_and_triggers(second)[-2:] == [(30, "step"), (40, "step")]
    events = [
        json.loads(line) for line in (tmp_path / "root" / "logs" / "events.jsonl").read_text().splitlines()
    ]
    resumed = [e for e in events if e["event"] == "resumed"]
    assert (resumed[-1]["mode"], resumed[-1]["step"], resumed[-1]["skipped"]) == ("mytrainer", 20, ["x.pt"])


def test_adopt_of_a_step_that_is_not_committed_names_it(make_system: Any, ledger: Ledger) -> None:
    system = make_system(checkpoint_frequency=10)
    model, opt, _ = setup_run(ledger)
    for step in range(1, 11):
        train_step(model, opt)
        system.checkpoint_on_step(step)
    system.flush()
    with pytest.raises(CheckpointNotFoundError, match="15"):
        system.adopt(system.exp_hash or "", 15)


def test_find_resume_finds_what_resume_would_restore_and_restores_nothing(
    make_system: Any, tmp_path: Path
) -> None:
    first = make_system(checkpoint_frequency=10, save_last=False, ledger=Ledger())
    model, opt, _ = setup_run(first.ledger)
    assert first.find_resume("latest") is None  # a fresh root
    for step in range(1, 36):
        train_step(model, opt)
        first.checkpoint_on_step(step)
    h = first.exp_hash
    assert h is not None
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    found = first.find_resume("latest")
    assert found is not None
    data, entry, exp_hash, skipped = found
    assert (entry.step, exp_hash, skipped, data["step"]) == (30, h, [], 30)
    saved = data["models"]["model"]
    assert any(not torch.equal(saved[k], weights[k]) for k in weights)  # five steps were trained since
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # nothing restored
    assert (first.exp_hash, first.last_step) == (h, 35)
    first.close()

    newest = tmp_path / "root" / "checkpoints" / h / "model" / f"{h}_step_000030.pt"
    flipped = bytearray(newest.read_bytes())
    flipped[len(flipped) // 2] ^= 0x10  # same size: only the checksum tells
    newest.write_bytes(bytes(flipped))
    second = make_system(checkpoint_frequency=10, save_last=False, ledger=Ledger())
    setup_run(second.ledger)
    found = second.find_resume("latest")
    assert found is not None
    data, entry, exp_hash, skipped = found
    assert (entry.step, exp_hash, data["step"]) == (20, h, 20)
    assert skipped == [second.manager.entry(h, 30).file]
