"""The ``weightslab`` command, run for real in subprocesses on roots made by real training loops.

The lineage root is trained twice: a first run (keep_last=3, keep_best=1 by val/loss) goes through a
config change and a model change, and a second run resumes with a keep-everything policy, so the
newest experiment holds more checkpoints than its recorded policy keeps and ``gc`` has work to do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from weightslab.cli.main import main
from weightslab.inspect.export import standalone_tensors
from weightslab.policy.retention import CheckpointRecord, RetentionPolicy
from weightslab.registry.ledger import Ledger
from weightslab.store.manager import CheckpointManager
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig

# -- roots made by real training loops ----------------------------------------------------------------


class TiedLM(torch.nn.Module):
    """A tiny language model whose output layer shares the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def first_mlp() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def grown_mlp(model: torch.nn.Sequential | None = None) -> torch.nn.Sequential:
    """The model after surgery: layer 2 widened to 12 outputs, then a new ReLU and Linear(12, 4)."""
    model = model if model is not None else first_mlp()
    model[2] = torch.nn.Linear(16, 12)
    model.append(torch.nn.ReLU())
    model.append(torch.nn.Linear(12, 4))
    return model


@dataclass
class LineageRoot:
    """A root with three experiments: a -(config_change@20)-> b -(model_change@30)-> c."""

    path: Path
    a: str
    b: str
    c: str


class Trainer:
    """A real loop: SGD on a regression target, validation loss as the monitored metric."""

    def __init__(self, system: AutomaticCheckpointSystem, ledger: Ledger, model: torch.nn.Sequential) -> None:
        self.system, self.ledger, self.model = system, ledger, model
        gen = torch.Generator().manual_seed(1)
        self.val_x = torch.randn(32, 8, generator=gen)
        self.val_y = torch.randn(32, 4, generator=gen)
        self.set_model(model)

    def set_model(self, model: torch.nn.Sequential) -> None:
        self.model = model
        self.opt = torch.optim.SGD(model.parameters(), lr=self.ledger.get("hyperparams", "config")["lr"])
        self.ledger.register_model("model", model)
        self.ledger.register_optimizer("optimizer", self.opt)

    def run(self, start: int, stop: int) -> None:
        for step in range(start, stop):
            x = torch.randn(16, 8)
            loss = (self.model(x) - x[:, :4]).pow(2).mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            with torch.no_grad():
                val = (self.model(self.val_x) - self.val_y).pow(2).mean().item()
            self.system.checkpoint_on_step(step, {"train/loss": loss.item(), "val/loss": val})


def build_lineage_root(path: Path) -> LineageRoot:
    """Two real training runs on ``path``: a -> b (lr change at 20) -> c (layer surgery at 30), then a resume."""
    torch.manual_seed(0)
    ledger = Ledger()
    config = {"lr": 0.1, "batch_size": 16, "optimizer": {"name": "sgd", "momentum": 0.0}}
    ledger.register_hyperparams("config", config)
    ledger.register_model("lm", TiedLM())
    options: dict[str, Any] = {
        "root_log_dir": path,
        "checkpoint_frequency": 5,
        "async_save": False,
        "durable": False,  # throwaway roots: skip the fsyncs
    }
    system = AutomaticCheckpointSystem(
        CheckpointConfig(**options, keep_last=3, keep_best=1, monitor="val/loss"), ledger=ledger
    )
    trainer = Trainer(system, ledger, first_mlp())
    trainer.run(0, 21)
    a = system.exp_hash
    config["lr"] = 0.05
    for group in trainer.opt.param_groups:
        group["lr"] = 0.05
    system.checkpoint_on_config_change(step=20)  # saved at once, at the step just trained
    b = system.exp_hash
    trainer.run(21, 31)
    trainer.set_model(grown_mlp(trainer.model))
    system.checkpoint_on_model_change(step=30)
    c = system.exp_hash
    trainer.run(31, 41)
    system.close()

    # a second run on the same root resumes c and keeps everything it saves
    ledger = Ledger()
    ledger.register_hyperparams(
        "config", {"lr": 0.05, "batch_size": 16, "optimizer": {"name": "sgd", "momentum": 0.0}}
    )
    ledger.register_model("lm", TiedLM())
    system = AutomaticCheckpointSystem(CheckpointConfig(**options), ledger=ledger)
    trainer = Trainer(system, ledger, grown_mlp())
    start = system.resume()
    assert start == 41 and system.exp_hash == c
    trainer.run(start, 61)
    system.close()
    # the second run recorded its keep-everything policy for c; record the first run's strict one
    # again (as a later run applying it would), so that gc and "kept because" have work to show
    strict = {"keep_last": 3, "keep_best": 1, "monitor": "val/loss", "mode": "min", "keep_every": None}
    with CheckpointManager(path) as writer:
        writer.record_retention(c, strict)
    assert a is not None and b is not None and c is not None and len({a, b, c}) == 3
    return LineageRoot(path, a, b, c)


def build_sweep_root(path: Path, runs: int = 17) -> list[str]:
    """A learning-rate sweep with one experiment per value: 17 hashes, so two share a first digit."""
    ledger = Ledger()
    config = {"lr": 1.0}
    ledger.register_hyperparams("config", config)
    model = torch.nn.Linear(2, 1)
    ledger.register_model("model", model)
    system = AutomaticCheckpointSystem(
        CheckpointConfig(root_log_dir=path, checkpoint_frequency=1000, async_save=False, durable=False),
        ledger=ledger,
    )
    hashes = []
    for i in range(runs):
        config["lr"] = 1.0 / (i + 1)
        system.checkpoint_on_step(i)
        if i:
            system.checkpoint_on_config_change(i)
        hashes.append(system.exp_hash)
    system.close()
    return [h for h in hashes if h is not None]


@pytest.fixture(scope="module")
def lineage_root(tmp_path_factory: pytest.TempPathFactory) -> LineageRoot:
    return build_lineage_root(tmp_path_factory.mktemp("lineage") / "root")


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    path = tmp_path_factory.mktemp("sweep") / "root"
    return path, build_sweep_root(path)


@pytest.fixture
def root_copy(lineage_root: LineageRoot, tmp_path: Path) -> Path:
    """A private copy of the lineage root that a test may damage or collect."""
    dest = tmp_path / "copy"
    shutil.copytree(lineage_root.path, dest)
    return dest


# -- running the command --------------------------------------------------------------------------------
_ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in {"COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR"}
}


def wl(*args: object) -> subprocess.CompletedProcess[str]:
    """Run ``python -m weightslab.cli ARGS`` with pipes (not a terminal), as a script would."""
    return subprocess.run(
        [sys.executable, "-m", "weightslab.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_ENV,
        check=False,
    )


def wl_many(*commands: Sequence[object]) -> list[subprocess.CompletedProcess[str]]:
    """Run several commands at once (each starts a Python with torch: this keeps the suite quick)."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda c: wl(*c), commands))


def ok_json(result: subprocess.CompletedProcess[str], code: int = 0) -> Any:
    assert result.returncode == code, result.stderr
    assert "\x1b[" not in result.stdout
    return json.loads(result.stdout)


def ok_text(result: subprocess.CompletedProcess[str], code: int = 0, *, narrow: bool = True) -> str:
    """The output of a successful text run; tables fit in 100 columns (``narrow``)."""
    assert result.returncode == code, result.stderr
    assert result.stderr == ""  # no progress bar, no log noise when not on a terminal
    assert "\x1b[" not in result.stdout  # no colour codes in a pipe
    if narrow:
        assert max(len(line) for line in result.stdout.splitlines()) <= 100, result.stdout
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("weightslab: error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def squash(text: str) -> str:
    """``text`` with runs of spaces collapsed, so assertions do not depend on column widths."""
    return "\n".join(" ".join(line.split()) for line in text.splitlines())


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


# -- ls, show, tree -------------------------------------------------------------------------------------
def test_ls_lists_every_experiment_with_parent_reason_and_active_mark(lineage_root: LineageRoot) -> None:
    r = lineage_root
    text_run, json_run = wl_many(("ls", r.path), ("ls", r.path, "--json"))
    text = ok_text(text_run)
    rows = {h: next(line for line in text.splitlines() if h in line) for h in (r.a, r.b, r.c)}
    assert rows[r.a].startswith(f"  {r.a}  -  ")
    assert f"{r.a[:7]}@20 config_change" in rows[r.b]
    assert f"{r.b[:7]}@30 model_change" in rows[r.c]
    assert rows[r.c].startswith(f"* {r.c}") and not rows[r.b].startswith("*")
    assert f"* active: {r.c}" in text
    assert "val/loss" in text and "3 experiments" in text

    data = ok_json(json_run)
    manager = CheckpointManager(r.path, mode="r")
    assert data["active"] == r.c
    assert [e["exp_hash"] for e in data["experiments"]] == [r.a, r.b, r.c]
    by_hash = {e["exp_hash"]: e for e in data["experiments"]}
    assert by_hash[r.a]["parent"] is None
    assert by_hash[r.b]["parent"] == {
        "exp_hash": r.a,
        "step": 20,
        "reason": "config_change",
        "checkpoint": 20,
    }
    assert by_hash[r.c]["parent"] == {
        "exp_hash": r.b,
        "step": 30,
        "reason": "model_change",
        "checkpoint": 30,
    }
    for h, row in by_hash.items():
        entries = manager.checkpoints(h)
        assert row["checkpoints"] == len(entries)
        assert row["latest_step"] == max(e.step for e in entries)
        assert row["size_bytes"] == sum(
            p.stat().st_size for p in manager.experiment(h).dir.rglob("*") if p.is_file()
        )
        best = min(entries, key=lambda e: (e.metrics.get("val/loss", float("inf")), -e.step))
        assert row["best"] == {
            "monitor": "val/loss",
            "mode": "min",
            "value": best.metrics["val/loss"],
            "step": best.step,
        }
        assert row["active"] is (h == r.c)
    assert by_hash[r.c]["latest_step"] == 60 and by_hash[r.c]["checkpoints"] == 7


def test_show_prints_checkpoints_architecture_and_config_by_prefix(lineage_root: LineageRoot) -> None:
    r = lineage_root
    text_run, json_run = wl_many(("show", r.path, r.c[:6]), ("show", r.path, r.c[:6], "--json"))
    raw = ok_text(text_run)
    text = squash(raw)
    assert f"experiment {r.c} * active" in text
    assert f"parent {r.b} at step 30 (model_change)" in text
    assert "keep_last=3, keep_best=1 by val/loss (min)" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line[:1].isdigit()}
    assert list(rows) == ["30", "35", "40", "45", "50", "55", "60"]
    assert rows["30"].startswith("30 model_change - ") and rows["30"].endswith("not kept: gc removes it")
    assert (
        rows["55"].startswith("55 step train/loss=")
        and "val/loss=" in rows["55"]
        and rows["55"].endswith(" last")
    )
    assert rows["60"].endswith("newest") and " last, " in rows["60"]
    assert (
        "model 'model': torch.nn.modules.container.Sequential, 400 parameters (400 trainable at step 60)"
        in text
    )
    assert "  (4): Linear(in_features=12, out_features=4, bias=True)" in raw
    assert "model 'lm': tests.test_cli.TiedLM, 40 parameters (40 trainable at step 60)" in text
    assert "config:\n  batch_size: 16\n  lr: 0.05\n" in raw

    data = ok_json(json_run)
    assert data["experiment"]["exp_hash"] == r.c and data["experiment"]["active"] is True
    assert [c["step"] for c in data["checkpoints"]] == [30, 35, 40, 45, 50, 55, 60]
    kept = {c["step"]: c["kept"] for c in data["checkpoints"]}
    assert kept[60] in (["last", "newest"], ["last", "best", "newest"])
    assert kept[55] in (["last"], ["last", "best"]) and kept[50] in (["last"], ["last", "best"])
    best = min(data["checkpoints"], key=lambda c: (c["metrics"].get("val/loss", float("inf")), -c["step"]))
    assert "best" in kept[best["step"]]
    dropped = {s for s, why in kept.items() if not why}
    assert dropped == {30, 35, 40, 45} - {best["step"]}
    models = {m["name"]: m for m in data["architecture"]}
    assert [p["name"] for p in models["model"]["parameters"]] == [
        "0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias",
    ]  # fmt: skip
    assert models["model"]["parameters"][2]["shape"] == [12, 16]
    assert models["lm"]["total_parameters"] == 40  # the tied weight is listed once
    assert data["config"] == {
        "config": {"lr": 0.05, "batch_size": 16, "optimizer": {"name": "sgd", "momentum": 0.0}}
    }


def test_tree_shows_each_branch_with_step_and_reason(lineage_root: LineageRoot) -> None:
    r = lineage_root
    text_run, json_run = wl_many(("tree", r.path), ("tree", r.path, "--json"))
    lines = ok_text(text_run).splitlines()
    assert lines[0] == str(r.path)
    assert lines[1] == f"└── {r.a}  (3 checkpoints, latest step 20)"
    assert lines[2] == f"    └── config_change at step 20 -> {r.b}  (3 checkpoints, latest step 30)"
    assert (
        lines[3] == f"        └── model_change at step 30 -> {r.c}  (7 checkpoints, latest step 60)  * active"
    )

    (node,) = ok_json(json_run)["lineage"]
    assert (node["exp_hash"], node["parent"], node["reason"]) == (r.a, None, None)
    (child,) = node["children"]
    assert (child["exp_hash"], child["parent"], child["step"], child["reason"]) == (
        r.b,
        r.a,
        20,
        "config_change",
    )
    (grandchild,) = child["children"]
    assert (grandchild["exp_hash"], grandchild["step"], grandchild["reason"]) == (r.c, 30, "model_change")
    assert grandchild["active"] is True and grandchild["children"] == []


# -- verify ---------------------------------------------------------------------------------------------
def test_verify_healthy_root_exits_0(lineage_root: LineageRoot) -> None:
    r = lineage_root
    text_run, json_run = wl_many(("verify", r.path), ("verify", r.path, r.b[:4], "--json"))
    assert ok_text(text_run) == "OK: 13 checkpoints verified, no problems\n"
    data = ok_json(json_run)
    assert data == {"root": str(r.path), "healthy": True, "checked": 3, "ok": 3, "problems": []}


def test_verify_damaged_root_exits_1_with_a_table_of_problems(
    lineage_root: LineageRoot, root_copy: Path
) -> None:
    r = lineage_root
    manager = CheckpointManager(root_copy, mode="r")
    corrupt = manager.experiment(r.a).step_file(20)
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    missing = manager.experiment(r.b).step_file(25)
    missing.unlink()
    orphan = manager.experiment(r.c).step_file(65)
    shutil.copyfile(manager.experiment(r.c).step_file(60), orphan)
    temp = manager.experiment(r.c).model_dir / f".{r.c}_step_000070.pt.tmp-123-abcd"
    temp.write_bytes(b"half a checkpoint")

    text_run, json_run = wl_many(("verify", root_copy), ("verify", root_copy, "--json"))
    text = squash(ok_text(text_run, code=1))
    rows = {
        line.split()[0]: line
        for line in text.splitlines()
        if line.split()[:1] and line.split()[0] in {"corrupt", "missing", "orphaned"}
    }
    assert set(rows) == {"corrupt", "missing", "orphaned"}
    assert f" {corrupt.name} " in rows["corrupt"] and rows["corrupt"].endswith("checksum mismatch")
    assert f" {missing.name} " in rows["missing"] and rows["missing"].endswith("file missing")
    assert f"orphaned {r.c[:8]} 65 {orphan.name} no manifest entry" in text
    assert f"orphaned {r.c[:8]} - {temp.name} interrupted write" in text
    assert "4 problems (1 corrupt, 1 missing, 2 orphaned); 11 of 13 checkpoints verify" in text

    report = ok_json(json_run, code=1)
    assert report["healthy"] is False and (report["checked"], report["ok"]) == (13, 11)
    found = {(p["kind"], p["exp_hash"], p["step"], p["path"]) for p in report["problems"]}
    assert found == {
        ("corrupt", r.a, 20, f"checkpoints/{r.a}/model/{corrupt.name}"),
        ("missing", r.b, 25, f"checkpoints/{r.b}/model/{missing.name}"),
        ("orphaned", r.c, 65, f"checkpoints/{r.c}/model/{orphan.name}"),
        ("orphaned", r.c, None, f"checkpoints/{r.c}/model/{temp.name}"),
    }
    # the command finds exactly what the manager's own verify finds
    own = {
        (p.kind, p.exp_hash, p.step, str(Path(p.path).relative_to(manager.root)))
        for p in manager.verify().problems
    }
    assert own == found


# -- diff -----------------------------------------------------------------------------------------------
def test_diff_reports_hyperparameters_and_layers(lineage_root: LineageRoot) -> None:
    r = lineage_root
    ab_text, bc_text, ca_json = wl_many(
        ("diff", r.path, r.a[:5], r.b[:5]),
        ("diff", r.path, r.b, r.c),
        ("diff", r.path, r.c, r.a, "--json"),
    )
    text = ok_text(ab_text)
    assert f"{r.a} -> {r.b}" in text
    (row,) = [line for line in text.splitlines() if line.startswith("config.lr")]
    assert row.split() == ["config.lr", "0.1", "0.05"]
    assert "architecture: no changes" in text

    text = squash(ok_text(bc_text))
    assert "hyperparameters: no changes" in text
    assert "model.2 reshaped weight 4x16, bias 4 weight 12x16, bias 12" in text
    assert "model.4 added - weight 4x12, bias 4" in text

    data = ok_json(ca_json)
    assert (data["a"], data["b"], data["architecture_source"]) == (r.c, r.a, "checkpoints")
    assert data["hyperparams"] == [{"key": "config.lr", "change": "changed", "old": 0.05, "new": 0.1}]
    assert data["architecture"] == [
        {
            "model": "model",
            "layer": "2",
            "change": "reshaped",
            "old": {"weight": "12x16 float32", "bias": "12 float32"},
            "new": {"weight": "4x16 float32", "bias": "4 float32"},
        },
        {
            "model": "model",
            "layer": "4",
            "change": "removed",
            "old": {"weight": "4x12 float32", "bias": "4 float32"},
            "new": {},
        },
    ]


# -- gc -------------------------------------------------------------------------------------------------
def test_gc_dry_run_removes_nothing_and_gc_removes_exactly_that(
    lineage_root: LineageRoot, root_copy: Path
) -> None:
    r = lineage_root
    manager = CheckpointManager(root_copy, mode="r")
    leftover = manager.experiment(r.c).model_dir / f".{r.c}_step_000065.pt.tmp-99-beef"
    leftover.write_bytes(b"x" * 1000)
    orphan = manager.experiment(r.a).step_file(25)
    shutil.copyfile(manager.experiment(r.a).step_file(20), orphan)
    broken = manager.experiment(r.b).manifest
    broken.write_text(broken.read_text()[:40])  # a torn manifest: gc rebuilds it from the step files
    before = files_of(root_copy)

    text_run, json_run = wl_many(("gc", root_copy, "--dry-run"), ("gc", root_copy, "--dry-run", "--json"))
    text = ok_text(text_run)
    plan = ok_json(json_run)
    assert files_of(root_copy) == before  # a dry run touches nothing

    entries = manager.checkpoints(r.c)
    policy = RetentionPolicy(keep_last=3, keep_best=1, monitor="val/loss")
    doomed = policy.to_delete([CheckpointRecord(e.step, e.metrics) for e in entries])
    best = min(entries, key=lambda e: (e.metrics.get("val/loss", float("inf")), -e.step)).step
    assert doomed == sorted({30, 35, 40, 45} - {best})  # 7 checkpoints; keeps the last 3 and the best
    expected = {("checkpoint", r.c, s) for s in doomed} | {("leftover", r.c, None), ("leftover", r.a, 25)}
    assert {(i["kind"], i["exp_hash"], i["step"]) for i in plan["removed"]} == expected
    assert plan["dry_run"] is True and plan["freed_bytes"] == 1000 + orphan.stat().st_size + sum(
        e.bytes for e in entries if e.step in doomed
    )
    assert plan["rebuilt"] == [r.b] and plan["skipped"] == []
    assert f"would rebuild the manifest of {r.b} from its step files that verify" in squash(text)
    assert "dry run: nothing was removed" in text
    assert f"would remove {len(doomed)} checkpoints and 2 leftovers" in text and leftover.name in text

    run = wl("gc", root_copy, "--json")
    done = ok_json(run)
    assert "rebuilding it from the step files" in run.stderr  # the manager's own log line
    assert done["dry_run"] is False and done["rebuilt"] == [r.b]
    assert sorted(done["removed"], key=json.dumps) == sorted(plan["removed"], key=json.dumps)
    assert done["freed_bytes"] == plan["freed_bytes"]
    after = files_of(root_copy)
    assert {i["path"] for i in plan["removed"]} == before.keys() - after.keys()
    assert [e.step for e in CheckpointManager(root_copy, mode="r").checkpoints(r.b)] == [20, 25, 30]
    assert [e.step for e in CheckpointManager(root_copy, mode="r").checkpoints(r.c)] == sorted(
        {e.step for e in entries} - set(doomed)
    )
    # a second collection finds nothing, and the root verifies
    again, verify = wl_many(("gc", root_copy), ("verify", root_copy))
    assert "nothing to remove" in ok_text(again)
    assert ok_text(verify).startswith(f"OK: {13 - len(doomed)} checkpoints verified")


def test_gc_overrides_and_the_writer_lock(lineage_root: LineageRoot, root_copy: Path) -> None:
    r = lineage_root
    plan = ok_json(
        wl(
            "gc",
            root_copy,
            "--dry-run",
            "--json",
            "--keep-last",
            "1",
            "--keep-best",
            "1",
            "--monitor",
            "val/loss",
        )
    )
    removed = {(i["exp_hash"], i["step"]) for i in plan["removed"]}
    assert (r.a, 20) not in removed and (r.b, 30) not in removed  # branch points are always kept
    assert (r.c, 60) not in removed and (r.c, 55) in removed
    before = files_of(root_copy)
    holder = CheckpointManager(root_copy, mode="w")  # as a running training would
    try:
        message = one_line_error(wl("gc", root_copy))
    finally:
        holder.close()
    assert "already open for writing" in message
    assert files_of(root_copy).keys() == before.keys()


# -- export ---------------------------------------------------------------------------------------------
def test_export_safetensors_loads_into_the_model(lineage_root: LineageRoot, tmp_path: Path) -> None:
    r = lineage_root
    out = tmp_path / "export"
    result = ok_json(wl("export", r.path, r.c[:5], "--to", out, "--json"))
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.json",
        "config.yaml",
        "lm.safetensors",
        "model.safetensors",
    ]
    assert result["step"] == 60 and result["format"] == "safetensors"

    step = torch.load(CheckpointManager(r.path, mode="r").experiment(r.c).step_file(60), weights_only=True)
    model = grown_mlp()
    model.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, step["models"]["model"][name])
    lm = TiedLM()
    lm.load_state_dict(load_file(out / "lm.safetensors"), strict=True)
    assert torch.equal(lm.emb.weight, step["models"]["lm"]["emb.weight"])
    # the step file keeps the tie when saving shares storage; export then writes a copy and says so
    saved = step["models"]["lm"]
    tied = saved["emb.weight"].data_ptr() == saved["head.weight"].data_ptr()
    assert result["tied"] == ({"lm": {"head.weight": "emb.weight"}} if tied else {})
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata() == {
            "format": "pt",
            "weightslab.exp_hash": r.c,
            "weightslab.step": "60",
            "weightslab.model": "model",
        }
    record = json.loads((out / "checkpoint.json").read_text())
    assert (record["exp_hash"], record["step"], record["trigger"]) == (r.c, 60, "step")
    assert record["metrics"] == step["metrics"] and record["parent"] == {
        "exp_hash": r.b,
        "step": 30,
        "reason": "model_change",
        "checkpoint": 30,
    }
    assert yaml.safe_load((out / "config.yaml").read_text()) == {
        "config": {"lr": 0.05, "batch_size": 16, "optimizer": {"name": "sgd", "momentum": 0.0}}
    }

    # existing files are not overwritten without --force
    message = one_line_error(wl("export", r.path, r.c, "--to", out, "--step", "45"))
    assert "already holds" in message and "--force" in message
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 60
    text = ok_text(wl("export", r.path, r.c, "--to", out, "--step", "45", "--force"), narrow=False)
    assert f"exported {r.c} step 45 (safetensors) to {out}" in text
    assert "model.safetensors" in text
    assert ("tied weights in lm written as copies: head.weight = emb.weight" in squash(text)) is tied
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 45


def test_export_pt_writes_the_whole_step(lineage_root: LineageRoot, tmp_path: Path) -> None:
    r = lineage_root
    out = tmp_path / "pt"
    result = ok_json(wl("export", r.path, r.b, "--step", "25", "--to", out, "--format", "pt", "--json"))
    assert result["format"] == "pt" and result["step"] == 25
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.json", "checkpoint.pt", "config.yaml"]
    data = torch.load(out / "checkpoint.pt", weights_only=True)
    manager = CheckpointManager(r.path, mode="r")
    original = manager.load(r.b, 25)
    assert data["step"] == 25 and data["exp_hash"] == r.b and set(data) == set(original)
    assert data["optimizers"]["optimizer"]["param_groups"][0]["lr"] == 0.05
    for name, tensor in original["models"]["model"].items():
        assert torch.equal(data["models"]["model"][name], tensor)
    assert yaml.safe_load((out / "config.yaml").read_text()) == manager.read_config(r.b)


def test_standalone_tensors_copies_tied_weights_for_safetensors(tmp_path: Path) -> None:
    lm = TiedLM()
    tensors, tied, skipped = standalone_tensors(lm.state_dict())
    assert tied == {"head.weight": "emb.weight"} and skipped == []
    save_file(tensors, tmp_path / "lm.safetensors")  # shared storage would make safetensors refuse
    fresh = TiedLM()
    fresh.load_state_dict(load_file(tmp_path / "lm.safetensors"))
    assert torch.equal(fresh.emb.weight, lm.emb.weight) and fresh.head.weight is fresh.emb.weight


# -- errors, help, version ------------------------------------------------------------------------------
def test_errors_print_one_line_and_exit_2(
    lineage_root: LineageRoot, sweep_root: tuple[Path, list[str]], tmp_path: Path
) -> None:
    r = lineage_root
    sweep, hashes = sweep_root
    firsts = [h[0] for h in hashes]
    shared = next(c for c in firsts if firsts.count(c) > 1)
    (tmp_path / "empty").mkdir()
    runs = wl_many(
        ("ls", tmp_path / "nowhere"),
        ("tree", tmp_path / "empty"),
        ("show", r.path, "0123abcd"),
        ("show", sweep, shared),
        ("export", r.path, r.c, "--step", "999", "--to", tmp_path / "x"),
    )
    messages = [one_line_error(run) for run in runs]
    assert "no such root" in messages[0] and "does not exist" in messages[0]
    assert "not a weightslab root" in messages[1]
    assert "no experiment" in messages[2] and "0123abcd" in messages[2]
    assert "ambiguous" in messages[3] and sum(h in messages[3] for h in hashes) >= 2
    assert "no checkpoint at step 999" in messages[4]
    assert not (tmp_path / "x").exists()


def test_help_on_every_subcommand_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    version = wl("--version")
    assert version.returncode == 0 and version.stdout.strip().startswith("weightslab 0.")
    for command in ("ls", "show", "tree", "verify", "diff", "gc", "export"):
        assert main([command, "--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: weightslab {command} ") and "--json" in out
    assert main(["gc", "--help"]) == 0 and "--dry-run" in capsys.readouterr().out
    assert main(["ls"]) == 2  # usage error: ROOT is required
    assert "required: ROOT" in capsys.readouterr().err


def test_analyze_is_mounted_when_the_analysis_package_is_present(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("weightslab.cli.analyze")
    assert main(["--help"]) == 0
    assert "analyze" in capsys.readouterr().out
    assert main(["analyze", "--help"]) == 0
    assert "REPO_OR_ROOT" in capsys.readouterr().out
