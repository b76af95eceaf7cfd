"""The ``weightslab`` command on roots that are damaged, hand-edited or received from elsewhere.

Every root here is made by a real training loop through :class:`AutomaticCheckpointSystem`, then
changed the way a copied or tampered root would be; the command runs for real in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash
import yaml
from safetensors.torch import load_file
from torch.nn.utils import prune

from weightslab.errors import RetentionRefusedError, UnsafePathError
from weightslab.inspect.overview import parse_architecture_text
from weightslab.policy.retention import RetentionPolicy
from weightslab.registry.ledger import Ledger
from weightslab.store.manager import CheckpointManager
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig

from .test_cli import _ENV, ok_json, ok_text, squash, wl, wl_many


# -- roots made by real training loops ----------------------------------------------------------------
@dataclass
class Run:
    """A root trained by :func:`train`, and the live objects of its last state."""

    root: Path
    hashes: list[str]  # every experiment, in the order the run made them
    model: torch.nn.Module
    config: dict[str, Any]


def mlp() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def train(
    root: Path,
    steps: range,
    *,
    model: torch.nn.Module | None = None,
    frequency: int = 1,
    freeze_first_layer_at: int | None = None,
    change_lr_at: int | None = None,
    save_architecture: bool = True,
) -> Run:
    """SGD on a regression target, a checkpoint every ``frequency`` steps (keep everything).

    ``freeze_first_layer_at``: from that step on, layer 0 of the model no longer trains (a freeze
    stays in the same experiment); ``change_lr_at``: the learning rate halves there (a new experiment).
    """
    torch.manual_seed(0)
    model = model if model is not None else mlp()
    config: dict[str, Any] = {"lr": 0.1, "batch_size": 8}
    ledger = Ledger()
    ledger.register_hyperparams("config", config)
    ledger.register_model("model", model)
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    ledger.register_optimizer("optimizer", opt)
    system = AutomaticCheckpointSystem(
        CheckpointConfig(
            root_log_dir=root,
            checkpoint_frequency=frequency,
            async_save=False,
            durable=False,  # throwaway roots: skip the fsyncs
            save_architecture=save_architecture,
        ),
        ledger=ledger,
    )
    hashes: list[str] = []
    inputs = next(m for m in model.modules() if isinstance(m, torch.nn.Linear)).in_features
    for step in steps:
        if step == freeze_first_layer_at:
            for p in model[0].parameters():  # type: ignore[index]
                p.requires_grad_(False)
        if step == change_lr_at:
            config["lr"] = config["lr"] / 2
            for group in opt.param_groups:
                group["lr"] = config["lr"]
        x = torch.randn(8, inputs)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        system.checkpoint_on_step(step, {"train/loss": loss.item()})
        if system.exp_hash is not None and system.exp_hash not in hashes:
            hashes.append(system.exp_hash)
    system.close()
    return Run(root, hashes, model, config)


def edit_manifest(root: Path, exp_hash: str, change: Any) -> None:
    """Rewrite ``checkpoints/<hash>/manifest.json`` through ``change(raw dict)``, as a hand edit would."""
    path = root / "checkpoints" / exp_hash / "manifest.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw, indent=2))


def fake_entry(step: int, file: str, target: Path) -> dict[str, Any]:
    """A manifest entry naming ``file`` whose size and checksum match ``target``: it "verifies"."""
    data = target.read_bytes()
    return {
        "step": step,
        "seq": 0,
        "file": file,
        "bytes": len(data),
        "xxh3_128": xxhash.xxh3_128(data).hexdigest(),
        "created": 0.0,
        "trigger": "step",
        "metrics": {},
        "tags": [],
        "description": "",
    }


def prepend_entries(raw: dict[str, Any], entries: list[dict[str, Any]], retention: dict[str, Any]) -> None:
    """Put ``entries`` first in commit order (so retention drops them) and record ``retention``."""
    raw["checkpoints"] = [*entries, *raw["checkpoints"]]
    for seq, e in enumerate(raw["checkpoints"], start=1):
        e["seq"] = seq
    raw["retention"] = retention


def contents(paths: list[Path]) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


KEEP_LAST_1 = {"keep_last": 1, "keep_best": 0, "monitor": None, "mode": "min", "keep_every": None}


# -- 1. nothing outside an experiment folder, and no file but a step file, is ever deleted ------------------
def test_gc_and_retention_never_delete_through_a_symlinked_model_folder(tmp_path: Path) -> None:
    run = train(tmp_path / "root", range(1, 4))
    (h,) = run.hashes
    exp = run.root / "checkpoints" / h
    # the root as received: its model folder is a symlink to a folder elsewhere, which holds a file
    # of the receiver's, and a manifest entry names that file
    outside = tmp_path / "outside"
    shutil.move(exp / "model", outside)
    (exp / "model").symlink_to(outside, target_is_directory=True)
    precious = outside / "precious.db"
    precious.write_bytes(b"the receiver's data, not a checkpoint")
    edit_manifest(
        run.root,
        h,
        lambda raw: prepend_entries(raw, [fake_entry(0, "model/precious.db", precious)], KEEP_LAST_1),
    )
    kept = contents(sorted(outside.iterdir()))

    gc_run, dry_run, verify_run = wl_many(
        ("gc", run.root), ("gc", run.root, "--dry-run"), ("verify", run.root, "--json")
    )
    for result in (gc_run, dry_run):
        assert result.returncode == 2, (result.stdout, result.stderr)
        (line,) = result.stderr.splitlines()
        assert line.startswith("weightslab: error: refused ") and f"checkpoints/{h}/model" in line
        assert "symlink" in line and str(outside) in line
    assert contents(sorted(outside.iterdir())) == kept
    report = ok_json(verify_run, 1)
    unsafe = {p["path"]: p["detail"] for p in report["problems"] if p["kind"] == "unsafe"}
    model_dir = f"checkpoints/{h}/model"
    assert sorted(unsafe) == [
        model_dir,
        *(f"{model_dir}/{h}_step_00000{step}.pt" for step in (1, 2, 3)),
        f"{model_dir}/precious.db",
    ]
    assert all(
        f"a symlink leads it to {outside}" in d and "outside the experiment folder" in d
        for d in unsafe.values()
    )
    assert not any(p["kind"] == "orphaned" for p in report["problems"])  # the files elsewhere are not ours

    # retention through the manager refuses each entry that leads out, deletes nothing, and says which
    with CheckpointManager(run.root) as writer:
        with pytest.raises(RetentionRefusedError, match=r"'model/precious\.db'") as caught:
            writer.apply_retention(h, RetentionPolicy(keep_last=1))
        assert caught.value.deleted == [] and sorted(caught.value.refused) == [0, 1, 2]
        for step in (0, 3):
            with pytest.raises(UnsafePathError, match="outside the experiment folder"):
                writer.delete(h, step)
        assert [e.step for e in writer.checkpoints(h)] == [0, 1, 2, 3]
    assert contents(sorted(outside.iterdir())) == kept


def test_a_step_file_symlinked_elsewhere_is_kept_by_gc_and_reported(tmp_path: Path) -> None:
    run = train(tmp_path / "root", range(1, 4))
    (h,) = run.hashes
    model_dir = run.root / "checkpoints" / h / "model"
    precious = tmp_path / "precious.pt"
    shutil.copyfile(model_dir / f"{h}_step_000001.pt", precious)
    (model_dir / f"{h}_step_000001.pt").unlink()
    (model_dir / f"{h}_step_000001.pt").symlink_to(precious)  # same bytes: size and checksum still match
    edit_manifest(run.root, h, lambda raw: raw.update(retention=KEEP_LAST_1))

    result = wl("gc", run.root, "--json")
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert [(i["step"], i["kind"]) for i in data["removed"]] == [(2, "checkpoint")]
    (note,) = data["refused"]
    assert (
        note.startswith(f"{h} step 1: manifest entry 'model/{h}_step_000001.pt' kept")
        and str(precious) in note
    )
    assert precious.is_file() and (model_dir / f"{h}_step_000001.pt").is_symlink()
    assert [e.step for e in CheckpointManager(run.root, mode="r").checkpoints(h)] == [1, 3]


@pytest.mark.parametrize(
    "target",
    [
        "manifest.json",
        "hp/{h}_config.yaml",
        "model/{h}_architecture.pkl",
        "model/{h}_architecture.txt",
        "model/{h}_architecture.json",
    ],
)
def test_manifest_entries_naming_the_manifest_config_or_architecture_are_refused(
    tmp_path: Path, target: str
) -> None:
    run = train(tmp_path / "root", range(1, 4))
    (h,) = run.hashes
    exp = run.root / "checkpoints" / h
    file = target.format(h=h)
    protected = [
        exp / "manifest.json",
        exp / "hp" / f"{h}_config.yaml",
        *sorted((exp / "model").glob(f"{h}_architecture.*")),
    ]
    assert len(protected) == 5  # the pickle, the summary record and the text were all written
    edit_manifest(
        run.root, h, lambda raw: prepend_entries(raw, [fake_entry(0, file, exp / file)], KEEP_LAST_1)
    )
    before = contents([p for p in protected if p.name != "manifest.json"])

    # the real gc deletes what retention drops: it runs after the readers (the read-only commands no
    # longer import torch, so a concurrent verify would see its deletions)
    verify_run, dry_run = wl_many(("verify", run.root, "--json"), ("gc", run.root, "--dry-run"))
    (gc_text,) = wl_many(("gc", run.root))
    (problem,) = ok_json(verify_run, 1)["problems"]
    assert (problem["kind"], problem["step"], problem["path"]) == ("unsafe", 0, f"checkpoints/{h}/{file}")
    assert "only a step file" in problem["detail"]
    what = {"manifest.json": "the manifest itself", "hp": "the config YAML"}.get(
        file.split("/")[0],
        {".pkl": "the architecture pickle", ".json": "the architecture summary"}.get(
            Path(file).suffix, "the architecture text"
        ),
    )
    assert what in problem["detail"]

    for result in (dry_run, gc_text):
        text = squash(ok_text(result, 1, narrow=False))  # a refusal is one long line, never cut
        assert f"refused {h} step 0: manifest entry {file!r} kept, only a step file" in text
    # the real run deleted what retention drops among the step files, and nothing else
    assert contents([p for p in protected if p.name != "manifest.json"]) == before
    manifest = json.loads((exp / "manifest.json").read_text())
    assert [(e["step"], e["file"]) for e in manifest["checkpoints"]] == [
        (0, file),
        (3, f"model/{h}_step_000003.pt"),
    ]
    assert sorted(p.name for p in (exp / "model").glob("*_step_*")) == [f"{h}_step_000003.pt"]


# -- 2. a config YAML that cannot be read: one line naming it, exit 2; export does not need it -----------
@pytest.mark.parametrize("damage", ["invalid utf-8", "python tag"])
def test_show_diff_and_export_with_an_unreadable_config_yaml(tmp_path: Path, damage: str) -> None:
    run = train(tmp_path / "root", range(1, 7), change_lr_at=4)
    a, b = run.hashes
    yaml_a = run.root / "checkpoints" / a / "hp" / f"{a}_config.yaml"
    marker = tmp_path / "code-ran"
    if damage == "invalid utf-8":
        yaml_a.write_bytes(b"format: weightslab.config/1\nhyperparams:\n  config: {lr: \xff\xfe}\n")
    else:  # what unsafe loading would construct and run
        yaml_a.write_text(f'hyperparams: !!python/object/apply:os.system ["touch {marker}"]\n')
    out = tmp_path / "export"
    show, show_json, diff, diff_json, export = wl_many(
        ("show", run.root, a),
        ("show", run.root, a, "--json"),
        ("diff", run.root, a, b),
        ("diff", run.root, a, b, "--json"),
        ("export", run.root, a, "--to", out, "--json"),
    )
    for result in (show, show_json, diff, diff_json):
        assert result.returncode == 2, (result.stdout, result.stderr)
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"weightslab: error: config file {yaml_a} cannot be read: ")
        assert "Traceback" not in result.stderr
    reason = "not valid UTF-8" if damage == "invalid utf-8" else "YAML tag that safe loading refuses"
    assert reason in show.stderr
    # what could be shown is shown, with a note where the config would be
    text = squash(show.stdout)
    assert f"experiment {a}" in text and "model 'model'" in text
    assert "config: cannot be read: it " in text and reason in text.split("config: cannot be read:")[1]
    assert (
        json.loads(show_json.stdout)["config"] is None
        and reason in json.loads(show_json.stdout)["config_error"]
    )
    assert f"{a} -> {b}" in diff.stdout and "architecture: no changes" in diff.stdout
    assert "hyperparameters: not compared, a config file cannot be read" in diff.stdout
    assert (
        json.loads(diff_json.stdout)["config_errors"] and json.loads(diff_json.stdout)["identical"] is False
    )
    # export reads the hyperparameters from the step file
    assert export.returncode == 0, export.stderr
    assert yaml.safe_load((out / "config.yaml").read_text()) == {"config": {"lr": 0.1, "batch_size": 8}}
    assert json.loads((out / "checkpoint.json").read_text())["hyperparams_source"] == "step file"
    assert not marker.exists()  # yaml.safe_load only: a tag never runs code


# -- 3. verify lists an unreadable step file and checks the rest ------------------------------------------
def test_verify_reports_an_unreadable_step_file_and_checks_the_rest(tmp_path: Path) -> None:
    run = train(tmp_path / "root", range(1, 5))
    (h,) = run.hashes
    step_file = run.root / "checkpoints" / h / "model" / f"{h}_step_000002.pt"
    # Tests run as root, which chmod 000 does not stop. A directory in the step file's place fails the
    # same way at the read (open() raises IsADirectoryError: an OSError, not FileNotFoundError); the
    # manifest's size is set to the directory's so that verify gets past the size check to the read.
    step_file.unlink()
    step_file.mkdir()
    size = step_file.stat().st_size

    def set_size(raw: dict[str, Any]) -> None:
        next(e for e in raw["checkpoints"] if e["step"] == 2)["bytes"] = size

    edit_manifest(run.root, h, set_size)
    text_run, json_run = wl_many(("verify", run.root), ("verify", run.root, "--json"))
    report = ok_json(json_run, 1)
    assert (report["checked"], report["ok"]) == (4, 3)
    (problem,) = report["problems"]
    assert (problem["kind"], problem["step"]) == ("unreadable", 2)
    assert problem["path"] == f"checkpoints/{h}/model/{h}_step_000002.pt"
    assert "IsADirectoryError" in problem["detail"]
    text = squash(ok_text(text_run, 1))
    assert f"unreadable {h[:8]} 2 {h}_step_000002.pt cannot be read" in text and "IsADirectoryError" in text
    assert "1 problem (1 unreadable); 3 of 4 checkpoints verify" in text


# -- 4. show: trainable counts of the newest checkpoint, not of the experiment's creation -------------------
def test_show_reports_the_trainable_count_after_a_freeze(tmp_path: Path) -> None:
    run = train(tmp_path / "root", range(1, 7), freeze_first_layer_at=4)
    (h,) = run.hashes  # a freeze stays in the same experiment
    text_run, json_run = wl_many(("show", run.root, h), ("show", run.root, h, "--json"))
    (model,) = ok_json(json_run)["architecture"]
    # Linear(4, 8) (40 parameters) frozen, Linear(8, 2) (18) still trains
    assert (model["total_parameters"], model["trainable_parameters"], model["trainable_step"]) == (58, 18, 6)
    assert [p["name"] for p in model["parameters"] if not p["trainable"]] == ["0.weight", "0.bias"]
    assert "58 parameters (18 trainable at step 6)" in ok_text(text_run)
    # the architecture text, written when the experiment was created, still has every parameter training
    created = (run.root / "checkpoints" / h / "model" / f"{h}_architecture.txt").read_text()
    assert [(m.total, m.trainable) for m in parse_architecture_text(created)] == [(58, 58)]


# -- 5. exported files get the mode any new file gets ----------------------------------------------------
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_exported_files_honour_the_umask(tmp_path: Path, umask: int, mode: int, fmt: str) -> None:
    run = train(tmp_path / "root", range(1, 3))
    out = tmp_path / "export"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "weightslab.cli",
            "export",
            str(run.root),
            run.hashes[0],
            "--to",
            str(out),
            "--format",
            fmt,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=_ENV,
        check=False,
        preexec_fn=lambda: os.umask(umask),  # the child's umask, as a shell's would be
    )
    assert result.returncode == 0, result.stderr
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    expected = {"safetensors": "model.safetensors", "pt": "checkpoint.pt"}[fmt]
    assert sorted(modes) == sorted([expected, "config.yaml", "checkpoint.json"])
    assert modes == dict.fromkeys(modes, mode), {n: oct(m) for n, m in modes.items()}


# -- 6. counts with a noun are pluralised --------------------------------------------------------------
def test_one_experiment_with_one_checkpoint_is_counted_in_the_singular(tmp_path: Path) -> None:
    run = train(tmp_path / "root", range(0, 6), frequency=5, model=torch.nn.Linear(1, 1, bias=False))
    (h,) = run.hashes
    assert [e.step for e in CheckpointManager(run.root, mode="r").checkpoints(h)] == [5]
    damaged = tmp_path / "damaged"
    shutil.copytree(run.root, damaged)
    step_file = damaged / "checkpoints" / h / "model" / f"{h}_step_000005.pt"
    data = bytearray(step_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    step_file.write_bytes(bytes(data))
    ls, show, tree, verify, bad = (
        squash(ok_text(r, code, narrow=False))  # the root path is long
        for r, code in zip(
            wl_many(
                ("ls", run.root),
                ("show", run.root, h),
                ("tree", run.root),
                ("verify", run.root),
                ("verify", damaged),
            ),
            (0, 0, 0, 0, 1),
            strict=True,
        )
    )
    assert f"{run.root}: 1 experiment, 1 checkpoint, " in ls
    assert " in 1 checkpoint\n" in show
    assert "1 parameter (1 trainable at step 5)" in show
    assert f"{h} (1 checkpoint, latest step 5)" in tree
    assert "OK: 1 checkpoint verified, no problems" in verify
    assert "1 problem (1 corrupt); 0 of 1 checkpoint verifies" in bad


# -- 7. export of a pruned model writes the effective weights under the plain names ------------------------
def test_export_of_a_pruned_model_loads_into_the_unpruned_model(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    prune.l1_unstructured(model[0], "weight", amount=0.4)
    prune.l1_unstructured(model[2], "bias", amount=1.0)
    # the architecture pickle is another engineer's fix for pruned models; this test needs only the steps
    run = train(tmp_path / "root", range(1, 6), model=model, frequency=5, save_architecture=False)
    (h,) = run.hashes
    saved = CheckpointManager(run.root, mode="r").load(h, 5)["models"]["model"]
    assert {"0.weight_orig", "0.weight_mask", "2.bias_orig", "2.bias_mask"} <= set(
        saved
    ) and "0.weight" not in saved
    out = tmp_path / "export"
    json_run = wl("export", run.root, h, "--to", out, "--json")
    result = ok_json(json_run)
    assert result["pruned"] == {"model": ["0.weight", "2.bias"]}

    fresh = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    fresh.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    assert torch.equal(fresh[0].weight, saved["0.weight_orig"] * saved["0.weight_mask"])
    assert torch.equal(fresh[0].weight, run.model[0].weight_orig * run.model[0].weight_mask)
    assert int((fresh[0].weight == 0).sum()) == 12  # 40% of 30 weights pruned
    assert torch.equal(fresh[2].bias, torch.zeros(3)) and torch.equal(fresh[2].weight, saved["2.weight"])
    x = torch.randn(4, 6)
    assert torch.allclose(fresh(x), run.model(x))  # the same function as the pruned model
    record = json.loads((out / "checkpoint.json").read_text())
    assert record["pruned"] == {
        "model": {"0.weight": "0.weight_orig * 0.weight_mask", "2.bias": "2.bias_orig * 2.bias_mask"}
    }

    text = squash(ok_text(wl("export", run.root, h, "--to", out, "--force"), narrow=False))
    assert "pruned weights in model written as <name> = <name>_orig * <name>_mask: 0.weight, 2.bias" in text
