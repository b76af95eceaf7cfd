"""Importing checkpoints made by other tools: torch.save files, Lightning .ckpt files, Hugging Face
Trainer folders and safetensors files, each written by the real tool, then verified, loaded and resumed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import mlp, train_step
from weightslab.cli.main import main
from weightslab.errors import (
    ArchitectureMismatchError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    ConfigError,
    ImportConflictError,
    RootLockedError,
    UnsafePathError,
    UntrustedLoadError,
)
from weightslab.inspect.importing import import_checkpoint
from weightslab.registry.ledger import Ledger
from weightslab.store.manager import CheckpointManager
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.identity import ExperimentHashGenerator
from weightslab.util.canonical import canonicalize

MakeSystem = Callable[..., AutomaticCheckpointSystem]


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Equal trees: tensors by torch.equal, mappings by keys, sequences item by item, the rest by ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict) or isinstance(b, dict):
        assert set(a) == set(b), f"{where}: {sorted(map(str, a))} != {sorted(map(str, b))}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def trained(steps: int = 5) -> tuple[torch.nn.Sequential, torch.optim.Optimizer, Any]:
    """A small MLP after a few real AdamW steps, with its optimizer and StepLR scheduler."""
    model = mlp(seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    for _ in range(steps):
        train_step(model, opt)
        sched.step()
    return model, opt, sched


def loaded(root: Path, exp_hash: str, step: int) -> dict[str, Any]:
    manager = CheckpointManager(root, mode="r")
    return manager.load_entry(exp_hash, manager.entry(exp_hash, step))


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def verifies_without_trust(root: Path) -> bool:
    """``weightslab verify ROOT`` passes, and every checkpoint loads with weights_only (no trust)."""
    manager = CheckpointManager(root, mode="r")
    for h in manager.experiments():
        for entry in manager.checkpoints(h):
            manager.load_entry(h, entry)
    return main(["verify", str(root), "--json"]) == 0


def events(root: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in CheckpointManager(root, mode="r").events() if e["event"] == name]


# -- torch.save -----------------------------------------------------------------------------------------
def test_torch_dict_with_model_lands_in_the_experiment_a_run_resumes(
    tmp_path: Path, make_system: MakeSystem, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    model, opt, sched = trained()
    source = tmp_path / "run.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": 3,
            "step": 100,
            "metrics": {"val_loss": 0.5},
            "note": "kept by the user",
        },
        source,
    )
    root = tmp_path / "root"
    config = {"lr": 0.01, "batch_size": 16}
    result = import_checkpoint(root, source, model=mlp(seed=9), hyperparams={"config": config})
    expected = ExperimentHashGenerator().generate({"model": mlp()}, {"config": config})
    assert (result.exp_hash, result.step, result.format, result.identity) == (expected, 100, "torch", "model")
    assert (result.tensors, result.optimizers, result.schedulers, result.rng) == (4, 1, 1, False)
    assert result.metrics == {"val_loss": 0.5}
    assert any("note" in n for n in result.notes)

    assert cli(capsys, "verify", root)[0] == 0
    data = loaded(root, expected, 100)
    assert data["trigger"] == "import" and data["imported"]["format"] == "torch"
    assert data["imported"]["epoch"] == 3 and data["imported"]["source"] == str(source)
    assert_same(data["models"]["model"], model.state_dict())
    assert_same(data["optimizers"]["optimizer"], opt.state_dict())
    (event,) = events(root, "imported")
    assert (event["exp_hash"], event["step"], event["format"], event["source"]) == (
        expected,
        100,
        "torch",
        str(source),
    )

    # a run with the same model and hyperparameters resumes it, and keeps saving into that experiment
    fresh = mlp(seed=5)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.01)
    fresh_sched = torch.optim.lr_scheduler.StepLR(fresh_opt, step_size=2)
    ledger.register_model("model", fresh)
    ledger.register_optimizer("optimizer", fresh_opt)
    ledger.register_scheduler("scheduler", fresh_sched)
    ledger.register_hyperparams("config", dict(config))
    system = make_system(root_log_dir=root)
    assert system.resume() == 101
    assert_same(fresh.state_dict(), model.state_dict())
    assert_same(fresh_opt.state_dict(), opt.state_dict())
    assert_same(fresh_sched.state_dict(), sched.state_dict())
    for step in range(101, 111):
        train_step(fresh, fresh_opt)
        system.checkpoint_on_step(step)
    system.flush()
    assert system.exp_hash == expected
    assert system.manager.experiments() == [expected]
    assert [e.step for e in system.manager.checkpoints(expected)] == [100, 110]


def test_state_dict_without_model_resumes_then_continues_in_a_child(
    tmp_path: Path, make_system: MakeSystem, ledger: Ledger
) -> None:
    model, _, _ = trained()
    source = tmp_path / "weights.pt"
    torch.save(model.state_dict(), source)
    root = tmp_path / "root"
    result = import_checkpoint(root, source, tags=["baseline"], description="from the old repo")
    assert (result.step, result.identity, result.optimizers, result.hyperparams) == (0, "state_dict", 0, {})
    manager = CheckpointManager(root, mode="r")
    entry = manager.entry(result.exp_hash, 0)
    assert (entry.trigger, entry.tags, entry.description) == ("import", ("baseline",), "from the old repo")
    summary = manager.architecture_summary(result.exp_hash)
    assert summary is not None
    assert [p["name"] for p in summary["models"][0]["parameters"]] == list(model.state_dict())

    fresh = mlp(seed=7)
    ledger.register_model("model", fresh)
    system = make_system(root_log_dir=root)
    assert system.resume() == 1
    assert_same(fresh.state_dict(), model.state_dict())
    for step in range(1, 11):
        system.checkpoint_on_step(step)
    system.flush()
    child = system.exp_hash
    assert child is not None and child != result.exp_hash
    parent = system.manager.manifest(child).parent
    assert parent is not None
    assert (parent.exp_hash, parent.checkpoint, parent.reason) == (result.exp_hash, 0, "model_change")


def test_keys_name_an_unusual_layout_and_wrapper_prefixes_go(tmp_path: Path) -> None:
    model, opt, _ = trained()
    ddp_names = {f"module.{k}": v for k, v in model.state_dict().items()}  # as DDP's state_dict names them
    source = tmp_path / "gan.pt"
    torch.save({"generator": ddp_names, "it": 12, "opt_g": opt.state_dict()}, source)
    with pytest.raises(CheckpointFormatError, match=r"--key model=KEY"):
        import_checkpoint(tmp_path / "root", source)
    assert not (tmp_path / "root").exists()
    result = import_checkpoint(
        tmp_path / "root", source, keys={"model": "generator", "step": "it", "optimizer": "opt_g"}
    )
    assert (result.step, result.optimizers) == (12, 1)
    assert_same(loaded(tmp_path / "root", result.exp_hash, 12)["models"]["model"], model.state_dict())
    with pytest.raises(ConfigError, match="not a key of the checkpoint"):
        import_checkpoint(tmp_path / "other", source, keys={"model": "discriminator"})


class TiedLM(torch.nn.Module):
    """A tiny language model whose output layer shares the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def test_tied_weights_saved_once_are_filled_in_from_the_model(
    tmp_path: Path, make_system: MakeSystem, ledger: Ledger
) -> None:
    torch.manual_seed(4)
    model = TiedLM()
    source = tmp_path / "model.safetensors"
    save_file({"emb.weight": model.emb.weight.detach()}, str(source))  # one name per tensor, as HF saves
    root = tmp_path / "root"
    result = import_checkpoint(root, source, model=TiedLM())
    saved = loaded(root, result.exp_hash, 0)["models"]["model"]
    assert set(saved) == {"emb.weight", "head.weight"}
    assert torch.equal(saved["head.weight"], model.emb.weight.detach())
    fresh = TiedLM()
    ledger.register_model("model", fresh)
    assert make_system(root_log_dir=root).resume() == 1
    assert fresh.head.weight is fresh.emb.weight and torch.equal(fresh.emb.weight, model.emb.weight)


def test_same_source_twice_is_already_there_and_conflicts_are_refused(tmp_path: Path) -> None:
    model, _, _ = trained()
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"model": model.state_dict(), "step": 20}, first)
    torch.save({"model": mlp(seed=11).state_dict(), "step": 20}, second)
    root = tmp_path / "root"
    done = import_checkpoint(root, first)
    again = import_checkpoint(root, first)
    assert (again.exp_hash, again.step, again.already, again.file) == (done.exp_hash, 20, True, done.file)
    assert len(events(root, "imported")) == 1
    assert len(CheckpointManager(root, mode="r").checkpoints(done.exp_hash)) == 1
    with pytest.raises(ImportConflictError, match="already holds a checkpoint at step 20"):
        import_checkpoint(root, second)
    with pytest.raises(ImportConflictError, match="after step 5"):
        import_checkpoint(root, second, step=5)
    later = import_checkpoint(root, second, step=21)
    assert later.exp_hash == done.exp_hash
    assert [e.step for e in CheckpointManager(root, mode="r").checkpoints(done.exp_hash)] == [20, 21]


WRITER = """
import sys
from weightslab.system.automatic import AutomaticCheckpointSystem
from weightslab.system.config import CheckpointConfig
system = AutomaticCheckpointSystem(CheckpointConfig(root_log_dir=sys.argv[1]))
print("ready", flush=True)
sys.stdin.read()
system.close()
"""


def test_a_root_held_by_a_running_writer_is_refused(tmp_path: Path) -> None:
    model, _, _ = trained()
    source = tmp_path / "w.pt"
    torch.save(model.state_dict(), source)
    root = tmp_path / "root"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        with pytest.raises(RootLockedError, match=rf"already open for writing by pid {writer.pid}"):
            import_checkpoint(root, source)
        assert not list((root / "checkpoints").iterdir())  # nothing written
    finally:
        assert writer.stdin is not None
        writer.stdin.close()
        assert writer.wait(timeout=120) == 0
    assert import_checkpoint(root, source).step == 0


def _pickle_needing_trust(tmp_path: Path) -> Path:
    path = tmp_path / "with_args.pt"
    torch.save({"model": mlp().state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    return path


def _plain_sd(tmp_path: Path) -> Path:
    path = tmp_path / "plain.pt"
    torch.save(mlp().state_dict(), path)
    return path


def _not_hf(tmp_path: Path) -> Path:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "README.md").write_text("not a checkpoint\n")
    return folder


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    return path


def _escaping_symlink(tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    save_file(mlp().state_dict(), str(folder / "model.safetensors"))
    (tmp_path / "secret.json").write_text("{}")
    (folder / "config.json").symlink_to(tmp_path / "secret.json")
    return folder


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], dict[str, Any], type[Exception], list[str]]] = {
    "unknown format": (_plain_sd, {"format": "onnx"}, ConfigError, ["'onnx'", "safetensors"]),
    "missing file": (lambda p: p / "nope.pt", {}, CheckpointNotFoundError, ["nope.pt", "does not exist"]),
    "not a checkpoint": (_text, {}, CheckpointFormatError, ["notes.txt", "Lightning", "checkpoint-N/"]),
    "folder not hf": (_not_hf, {}, CheckpointFormatError, ["not a Hugging Face Trainer", "README.md"]),
    "needs trust": (_pickle_needing_trust, {}, UntrustedLoadError, ["with_args.pt", "--trust", "Namespace"]),
    "wrong format": (_plain_sd, {"format": "safetensors"}, CheckpointFormatError, ["not safetensors"]),
    "model mismatch": (
        _plain_sd,
        {"model": mlp((8, 32, 4))},
        ArchitectureMismatchError,
        ["shapes differ", "0.weight"],
    ),
    "escaping symlink": (_escaping_symlink, {}, UnsafePathError, ["config.json", "outside the checkpoint"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_are_clear_errors_and_write_nothing(tmp_path: Path, case: str) -> None:
    make, options, error, fragments = BAD_INPUTS[case]
    source = make(tmp_path)
    root = tmp_path / "root"
    with pytest.raises(error) as caught:
        import_checkpoint(root, source, **options)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)
    assert not root.exists()


def test_trust_imports_a_pickle_with_objects(tmp_path: Path) -> None:
    result = import_checkpoint(tmp_path / "root", _pickle_needing_trust(tmp_path), trust=True)
    assert result.tensors == 4 and any("args" in n for n in result.notes)
    assert verifies_without_trust(tmp_path / "root")
    # an object inside a state that must be restored is refused: the step file would need trust to open
    source = tmp_path / "odd_optimizer.pt"
    state = {"state": {}, "param_groups": [{"params": [0], "lr": argparse.Namespace(value=0.1)}]}
    torch.save({"model": mlp().state_dict(), "optimizer": state}, source)
    with pytest.raises(CheckpointFormatError, match=r"optimizers\.optimizer\.param_groups\[0\]\.lr"):
        import_checkpoint(tmp_path / "other", source, trust=True)
    assert not (tmp_path / "other").exists()


# -- safetensors and the command ------------------------------------------------------------------------
def test_safetensors_file_and_an_export_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _, _ = trained()
    source = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(source), metadata={"format": "pt", "note": "hand-made"})
    root = tmp_path / "root"
    result = import_checkpoint(root, source, step=7)
    assert (result.format, result.step, result.optimizers, result.rng) == ("safetensors", 7, 0, False)
    data = loaded(root, result.exp_hash, 7)
    assert data["imported"]["metadata"] == {"format": "pt", "note": "hand-made"}
    assert_same(data["models"]["model"], load_file(str(source)))
    code, out, _ = cli(capsys, "show", root, result.exp_hash[:8], "--json")
    assert code == 0 and json.loads(out)["checkpoints"][0]["trigger"] == "import"

    # weightslab's own export carries the step and model name, which an import takes back
    assert cli(capsys, "export", root, result.exp_hash, "--to", tmp_path / "out")[0] == 0
    back = import_checkpoint(tmp_path / "root2", tmp_path / "out" / "model.safetensors")
    assert (back.step, back.model_name, back.exp_hash) == (7, "model", result.exp_hash)
    assert_same(loaded(tmp_path / "root2", back.exp_hash, 7)["models"]["model"], model.state_dict())


def test_the_import_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, opt, _ = trained()
    source = tmp_path / "ckpt.pt"
    torch.save({"net": model.state_dict(), "opt": opt.state_dict(), "global_step": 30}, source)
    root = tmp_path / "root"
    done = subprocess.run(
        [sys.executable, "-m", "weightslab.cli", "import", str(root), str(source), "--tag", "t1", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert (record["step"], record["optimizers"], record["identity"], record["already"]) == (
        30,
        1,
        "state_dict",
        False,
    )
    assert cli(capsys, "verify", root)[0] == 0
    code, out, _ = cli(capsys, "import", root, source)
    assert code == 0 and out.startswith("already imported")
    code, out, _ = cli(capsys, "import", "--help")
    assert code == 0 and out.startswith("usage: weightslab import ")
    assert all(option in out for option in ("--json", "--trust", "--format", "--step", "--key", "--tag"))
    code, out, err = cli(capsys, "import", root, tmp_path / "missing.pt")
    assert code == 2 and err.startswith("weightslab: error: import source") and err.count("\n") == 1
    code, out, err = cli(capsys, "import", tmp_path / "r3", source, "--key", "model")
    assert code == 2 and "ROLE=KEY" in err and not (tmp_path / "r3").exists()


# -- Lightning ------------------------------------------------------------------------------------------
def _lit_class() -> type:
    lightning = pytest.importorskip("lightning")

    class TinyLit(lightning.LightningModule):
        def __init__(self, lr: float = 0.1, hidden: int = 16) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(8, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 4)
            )

        def training_step(self, batch: Any, index: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, index: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self) -> Any:
            opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 2)}

    return TinyLit


@dataclass
class LightningRun:
    """A real three-epoch Lightning fit whose ModelCheckpoint kept every epoch's .ckpt."""

    lit: type
    ckpts: Path
    fit: Callable[..., Any]  # fit(module, callbacks, ckpt_path=None) -> the Trainer, 3 epochs


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LightningRun]:
    lightning = pytest.importorskip("lightning")
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    lit = _lit_class()
    folder = tmp_path_factory.mktemp("lightning")
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 8, generator=gen), torch.randn(64, 4, generator=gen))

    def fit(module: Any, callbacks: list[Any], ckpt_path: str | None = None) -> Any:
        trainer = lightning.Trainer(
            max_epochs=3,
            accelerator="cpu",
            devices=1,
            callbacks=callbacks,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=folder,
        )
        trainer.fit(
            module, DataLoader(data, batch_size=16), DataLoader(data, batch_size=32), ckpt_path=ckpt_path
        )
        return trainer

    torch.manual_seed(0)
    fit(lit(), [ModelCheckpoint(dirpath=folder / "ckpts", monitor="val_loss", save_top_k=-1)])
    yield LightningRun(lit, folder / "ckpts", fit)


def _score(ckpt: dict[str, Any], name: str) -> float:
    (state,) = (v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint"))
    return float(next(v for k, v in state["best_k_models"].items() if Path(k).name == name))


@pytest.mark.integrations
def test_lightning_ckpt_from_a_real_fit(
    tmp_path: Path,
    lightning_run: LightningRun,
    make_system: MakeSystem,
    ledger: Ledger,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lit, source = lightning_run.lit, lightning_run.ckpts / "epoch=1-step=8.ckpt"
    ckpt = torch.load(source, weights_only=True)
    root = tmp_path / "root"
    result = import_checkpoint(root, source, model=lit())
    hparams = {"lr": 0.1, "hidden": 16}
    assert result.exp_hash == ExperimentHashGenerator().generate({"model": lit()}, {"hparams": hparams})
    assert (result.format, result.step, result.optimizers, result.schedulers) == ("lightning", 8, 1, 1)
    assert result.metrics == {"val_loss": pytest.approx(_score(ckpt, source.name))}
    assert cli(capsys, "verify", root)[0] == 0
    data = loaded(root, result.exp_hash, 8)
    assert_same(data["models"]["model"], dict(ckpt["state_dict"]))
    assert data["imported"]["monitor"] == "val_loss"
    assert set(data["extra"]["lightning"]) >= {"loops", "callbacks", "epoch", "global_step"}
    assert CheckpointManager(root, mode="r").manifest(result.exp_hash).retention["monitor"] == "val_loss"

    inner = import_checkpoint(tmp_path / "inner", source, model={"net": lit().net})  # the plain module inside
    assert any("'net.'" in n for n in inner.notes)
    assert inner.exp_hash == ExperimentHashGenerator().generate({"net": lit().net}, {"hparams": hparams})
    assert_same(
        loaded(tmp_path / "inner", inner.exp_hash, 8)["models"]["net"]["0.weight"],
        ckpt["state_dict"]["net.0.weight"],
    )

    fresh = lit()
    opt = torch.optim.AdamW(fresh.parameters(), lr=fresh.hparams.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    ledger.register_model("model", fresh)
    ledger.register_optimizer("optimizer", opt)
    ledger.register_scheduler("scheduler", sched)
    ledger.register_hyperparams("hparams", dict(fresh.hparams))
    system = make_system(root_log_dir=root)
    assert system.resume() == 9
    assert system.exp_hash == result.exp_hash
    assert_same(fresh.state_dict(), dict(ckpt["state_dict"]))
    assert_same(opt.state_dict(), ckpt["optimizer_states"][0])
    assert_same(sched.state_dict(), ckpt["lr_schedulers"][0])


@pytest.mark.integrations
def test_lightning_import_continues_through_weightslab_checkpoint(
    tmp_path: Path, lightning_run: LightningRun
) -> None:
    from weightslab.integrations.lightning import WeightslabCheckpoint

    root = tmp_path / "root"
    result = import_checkpoint(root, lightning_run.ckpts / "epoch=1-step=8.ckpt", model=lightning_run.lit())
    callback = WeightslabCheckpoint(root_log_dir=root, checkpoint_frequency=2)
    module = lightning_run.lit()
    trainer = lightning_run.fit(module, [callback], ckpt_path=callback.resume_path())
    assert (trainer.global_step, trainer.current_epoch) == (12, 3)
    manager = CheckpointManager(root, mode="r")
    assert manager.experiments() == [result.exp_hash]  # the run continued the imported experiment
    assert [e.step for e in manager.checkpoints(result.exp_hash)][:3] == [8, 10, 12]
    # the epochs after the import trained exactly as in the uninterrupted fit
    uninterrupted = torch.load(lightning_run.ckpts / "epoch=2-step=12.ckpt", weights_only=True)
    assert_same(dict(module.state_dict()), dict(uninterrupted["state_dict"]))


@pytest.mark.integrations
def test_lightning_ckpt_with_objects_needs_trust(tmp_path: Path, lightning_run: LightningRun) -> None:
    ckpt = torch.load(lightning_run.ckpts / "epoch=1-step=8.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["args"] = argparse.Namespace(
        dropout=0.1, name="tiny"
    )  # save_hyperparameters(args)
    source = tmp_path / "objects.ckpt"
    torch.save(ckpt, source)
    with pytest.raises(UntrustedLoadError, match=r"objects\.ckpt.*--trust"):
        import_checkpoint(tmp_path / "root", source)
    assert not (tmp_path / "root").exists()
    result = import_checkpoint(tmp_path / "root", source, trust=True)
    assert result.hyperparams == {
        "hparams": {"args": {"dropout": 0.1, "name": "tiny"}, "hidden": 16, "lr": 0.1}
    }
    assert verifies_without_trust(tmp_path / "root")


# -- Hugging Face Trainer -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, Path]]:
    """(transformers, (config, make TrainingArguments, dataset), output_dir) of a real 4-step Trainer run on a tiny BERT
    built from a config, saving every 2 steps."""
    transformers = pytest.importorskip("transformers")

    class Pairs(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 32

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            gen = torch.Generator().manual_seed(i)
            return {"input_ids": torch.randint(0, 50, (8,), generator=gen), "labels": torch.tensor(i % 2)}

    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
    )
    out = tmp_path_factory.mktemp("hf") / "out"

    def training_args(output_dir: Path, save_strategy: str = "steps") -> Any:
        return transformers.TrainingArguments(
            output_dir=str(output_dir),
            save_strategy=save_strategy,
            save_steps=2,
            max_steps=4,
            per_device_train_batch_size=8,
            logging_steps=1,
            learning_rate=1e-3,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )

    args = training_args(out)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    transformers.Trainer(model=model, args=args, train_dataset=Pairs()).train()
    yield transformers, (config, training_args, Pairs()), out


@pytest.mark.integrations
def test_hf_checkpoint_folders_from_a_real_trainer_run(
    tmp_path: Path,
    hf_run: tuple[Any, Any, Path],
    make_system: MakeSystem,
    ledger: Ledger,
    capsys: pytest.CaptureFixture[str],
) -> None:
    transformers, (config, training_args, _), out = hf_run
    args = training_args(out)
    root = tmp_path / "root"
    with pytest.raises(CheckpointFormatError, match="checkpoint-4"):  # the output_dir, not one checkpoint
        import_checkpoint(root, out)
    first = import_checkpoint(
        root, out / "checkpoint-2", model=transformers.BertForSequenceClassification(config)
    )
    result = import_checkpoint(
        root, out / "checkpoint-4", model=transformers.BertForSequenceClassification(config)
    )
    assert result.exp_hash == first.exp_hash
    assert (result.format, result.step, result.optimizers, result.schedulers, result.rng) == (
        "hf",
        4,
        1,
        1,
        True,
    )
    # the set the transformers integration registers, read from training_args.bin without unpickling it
    from weightslab.integrations import transformers_state

    assert result.hyperparams == {
        "training_args": canonicalize(transformers_state.training_hyperparams(args))
    }
    assert result.hyperparams["training_args"]["lr_scheduler_type"] == "linear"
    assert loaded(root, result.exp_hash, 4)["imported"]["config"]["hidden_size"] == 16
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert result.metrics["loss"] == pytest.approx(state["log_history"][-1]["loss"])
    assert cli(capsys, "verify", root)[0] == 0
    weights = load_file(str(out / "checkpoint-4" / "model.safetensors"))
    assert_same(loaded(root, result.exp_hash, 4)["models"]["model"], weights)

    fresh = transformers.BertForSequenceClassification(config)
    trainer = transformers.Trainer(model=fresh, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    ledger.register_model("model", fresh)
    ledger.register_optimizer("optimizer", trainer.optimizer)
    ledger.register_scheduler("scheduler", trainer.lr_scheduler)
    for name, values in result.hyperparams.items():
        ledger.register_hyperparams(name, dict(values))
    system = make_system(root_log_dir=root)
    assert system.resume() == 5
    assert system.exp_hash == result.exp_hash
    assert_same(dict(fresh.state_dict()), weights)
    saved = out / "checkpoint-4"
    assert_same(trainer.optimizer.state_dict(), torch.load(saved / "optimizer.pt", weights_only=True))
    assert_same(trainer.lr_scheduler.state_dict(), torch.load(saved / "scheduler.pt", weights_only=True))
    rng = torch.load(saved / "rng_state.pth", weights_only=False)  # the test's own file
    assert torch.equal(torch.get_rng_state(), rng["cpu"])


@pytest.mark.integrations
def test_hf_import_continues_through_weightslab_callback(
    tmp_path: Path, hf_run: tuple[Any, Any, Path]
) -> None:
    from weightslab.integrations.transformers import WeightslabCallback

    transformers, (config, training_args, dataset), out = hf_run
    root = tmp_path / "root"
    result = import_checkpoint(
        root, out / "checkpoint-2", model=transformers.BertForSequenceClassification(config)
    )
    assert result.step == 2
    callback = WeightslabCallback(root_log_dir=root, checkpoint_frequency=1)
    again = training_args(tmp_path / "out", save_strategy="no")  # the same training, saved by weightslab
    model = transformers.BertForSequenceClassification(config)
    trainer = transformers.Trainer(model=model, args=again, train_dataset=dataset, callbacks=[callback])
    trainer.train(resume_from_checkpoint=callback.resume_path())
    assert trainer.state.global_step == 4
    manager = CheckpointManager(root, mode="r")
    assert manager.experiments() == [result.exp_hash]  # the run continued the imported experiment
    assert [e.step for e in manager.checkpoints(result.exp_hash)] == [2, 3, 4]
    # steps 3 and 4 trained exactly as in the uninterrupted run (its checkpoint-4)
    assert_same(dict(model.state_dict()), load_file(str(out / "checkpoint-4" / "model.safetensors")))


@pytest.mark.parametrize("form", ["torch.save zip", "bare pickle"])
def test_hostile_training_args_bin_runs_nothing(tmp_path: Path, form: str) -> None:
    import pickle
    import shlex

    marker, field_marker = tmp_path / "ran-os-system", tmp_path / "ran-exec"
    touch = f"{shlex.quote(sys.executable)} -c 'import sys; open(sys.argv[1], \"w\").close()' {marker}"
    field_code = f"open({str(field_marker)!r}, 'w').close()"

    class Shell:  # unpickled for real, this runs os.system
        def __reduce__(self) -> Any:
            return os.system, (touch,)

    class Exec:  # and this a builtin that writes a file
        def __reduce__(self) -> Any:
            return exec, (field_code,)

    class FakeArgs:  # a TrainingArguments look-alike, its state set by BUILD; two fields are hostile
        def __reduce__(self) -> Any:
            state = {"learning_rate": 1e-3, "seed": 7, "lr_scheduler_kwargs": Exec(), "report_to": Shell()}
            return argparse.Namespace, (), {**state, "hub_token": "hf_secret"}

    folder = tmp_path / "out" / "checkpoint-3"
    folder.mkdir(parents=True)
    save_file(mlp().state_dict(), str(folder / "model.safetensors"))
    state = {"global_step": 3, "epoch": 1.0, "log_history": [{"step": 3, "loss": 0.5, "epoch": 1.0}]}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    args_bin = folder / "training_args.bin"
    if form == "torch.save zip":  # how the Trainer writes it
        torch.save(FakeArgs(), args_bin)
    else:
        args_bin.write_bytes(pickle.dumps(FakeArgs()))

    for trust in (False, True):  # trust covers torch files; training_args.bin is never unpickled
        result = import_checkpoint(tmp_path / f"root-{trust}", folder, trust=trust)
        assert not marker.exists() and not field_marker.exists()
        assert (result.format, result.step, result.metrics) == ("hf", 3, {"loss": 0.5})
        if form == "torch.save zip":  # read as data: the allowlisted fields kept, a call as its argument
            expected = {"learning_rate": 1e-3, "seed": 7, "lr_scheduler_kwargs": field_code}
            assert result.hyperparams == {"training_args": expected}
            written = [f.read_bytes() for f in (tmp_path / f"root-{trust}").rglob("*") if f.is_file()]
            assert written and not any(b"hf_secret" in raw for raw in written)  # tokens are never kept
        else:  # not the zip torch.save writes: not read at all
            assert result.hyperparams == {}
            assert "training_args.bin could not be read (BadZipFile); used trainer_state.json" in result.notes
        assert verifies_without_trust(tmp_path / f"root-{trust}")
    # control: the same file unpickled the ordinary way does run both payloads
    if form == "torch.save zip":
        torch.load(args_bin, weights_only=False)
    else:
        pickle.loads(args_bin.read_bytes())
    assert marker.exists() and field_marker.exists()
