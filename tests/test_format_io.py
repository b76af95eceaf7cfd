"""The format layer's readers: the one safe ``torch.load`` (step files and analysed files) and the journal.

``load_torch_file`` names what it opens and says why it cannot; ``load_step_file`` builds on it and
speaks of a root's step file (a vanished file was removed by retention, anything else is not one
of ours). The journal writes strict JSON: non-finite floats become null, unknown objects their repr.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from weightslab.errors import CheckpointFormatError, CheckpointNotFoundError
from weightslab.format.journal import Journal, read_events
from weightslab.format.layout import CHECKPOINT_FORMAT
from weightslab.format.stepfile import load_step_file, load_torch_file
from weightslab.storage.local import LocalStorage


def test_load_torch_file_reads_tensors_memory_mapped(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    torch.save({"w": torch.arange(4.0)}, path)
    data = load_torch_file(path)
    assert torch.equal(data["w"], torch.arange(4.0))


@pytest.mark.parametrize("where", ["missing.pt", ".", "file.pt/inside.pt"])
def test_load_torch_file_names_a_path_that_is_not_a_file(tmp_path: Path, where: str) -> None:
    (tmp_path / "file.pt").write_bytes(b"x")
    with pytest.raises(CheckpointNotFoundError, match=r"^weight file .* does not exist or is not a file"):
        load_torch_file(tmp_path / where, what="weight file")


def test_load_torch_file_refuses_damaged_files(tmp_path: Path) -> None:
    path = tmp_path / "truncated.pt"
    torch.save({"w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointFormatError, match="truncated or damaged"):
        load_torch_file(path)


def test_step_file_that_vanished_is_reported_as_gone(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match=r"is gone \(a writer's retention may have removed it"):
        load_step_file(tmp_path / "abc_step_000001.pt")


def test_step_file_errors_keep_torch_s_reason(tmp_path: Path) -> None:
    with pytest.raises(
        CheckpointFormatError, match=r"cannot be read as a weightslab checkpoint \(IsADirectoryError"
    ):
        load_step_file(tmp_path)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointFormatError, match="cannot be read as a weightslab checkpoint") as info:
        load_step_file(damaged)
    assert not isinstance(info.value.__cause__, CheckpointFormatError)  # torch's own error is the cause


def test_step_file_through_a_storage(tmp_path: Path) -> None:
    path = tmp_path / "step.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "models": {}}, path)
    assert load_step_file(path, storage=LocalStorage(durable=False))["format"] == CHECKPOINT_FORMAT


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


def test_journal_lines_are_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    journal = Journal(path, durable=False)
    record = journal.append(
        "probe", loss=math.nan, best=math.inf, obj=Opaque(), nested={1: (2.5, -math.inf)}, ok=True
    )
    assert record["loss"] is None and record["best"] is None
    assert record["obj"] == "<Opaque>"
    assert record["nested"] == {"1": [2.5, None]}
    line = path.read_text().splitlines()[0]
    assert json.loads(line) == record
    assert list(read_events(path)) == [record]
