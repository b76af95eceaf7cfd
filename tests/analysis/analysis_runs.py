"""Training runs for the analysis tests, published on the test Hub or written as a local weightslab root.

The runs are real: small models trained for a few dozen steps with real torch optimizers (AdamW with a
warmup + cosine schedule, SGD with momentum and a step schedule), saved at several steps the way research
groups publish them (one branch per checkpoint, ``training/optim.pt`` on some branches only).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from weightslab.components import AutomaticCheckpointSystem, CheckpointConfig
from weightslab.format.layout import RootLayout
from weightslab.format.manifest import read_manifest
from weightslab.registry.ledger import Ledger

from ..hubserver import HubServer

OptimizerKind = Literal["adamw", "sgd"]


@dataclass
class Snapshot:
    """What a training run looked like at one saved step: the truth the analysis must report."""

    step: int
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    lrs: list[float]
    optimizer_step: int | None

    def state_norm(self, key: str) -> float:
        tensors = [s[key].reshape(-1).double() for s in self.optimizer_state["state"].values() if key in s]
        return float(torch.cat(tensors).norm()) if tensors else 0.0

    def state_mean(self, key: str) -> float:
        tensors = [s[key].reshape(-1).double() for s in self.optimizer_state["state"].values() if key in s]
        return float(torch.cat(tensors).mean())


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def _optimizer_and_scheduler(
    kind: OptimizerKind, model: torch.nn.Module, *, peak_lr: float, total: int
) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW (decay / no-decay groups, warmup + cosine) or SGD with momentum (halved every 10 steps)."""
    if kind == "sgd":
        sgd = torch.optim.SGD(model.parameters(), lr=peak_lr, momentum=0.9, weight_decay=1e-4)
        return sgd, torch.optim.lr_scheduler.StepLR(sgd, step_size=10, gamma=0.5)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    adamw = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=peak_lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    warmup = 5

    def schedule(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / warmup
        progress = (epoch - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return adamw, torch.optim.lr_scheduler.LambdaLR(adamw, schedule)


def _train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, gen: torch.Generator
) -> float:
    x = torch.randn(32, 8, generator=gen)
    y = torch.randn(32, 4, generator=gen)
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


def _snapshot(
    step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> Snapshot:
    state = optimizer.state_dict()
    steps = [int(s["step"]) for s in state["state"].values() if "step" in s]
    return Snapshot(
        step=step,
        optimizer_state=copy.deepcopy(state),
        scheduler_state=copy.deepcopy(scheduler.state_dict()),
        model_state={k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
        lrs=[float(g["lr"]) for g in optimizer.param_groups],
        optimizer_step=max(steps) if steps else None,
    )


def train(
    kind: OptimizerKind, save_at: list[int], *, seed: int = 0, peak_lr: float = 1e-2
) -> dict[int, Snapshot]:
    """Train a small MLP and snapshot optimizer, scheduler and weights after each step in ``save_at``."""
    model = _model(seed)
    optimizer, scheduler = _optimizer_and_scheduler(kind, model, peak_lr=peak_lr, total=max(save_at))
    gen = torch.Generator().manual_seed(seed + 1)
    snapshots: dict[int, Snapshot] = {}
    for step in range(0, max(save_at) + 1):
        if step > 0:
            _train_step(model, optimizer, scheduler, gen)
        if step in save_at:
            snapshots[step] = _snapshot(step, model, optimizer, scheduler)
    return snapshots


def _torch_bytes(obj: Any, tmp: Path) -> bytes:
    torch.save(obj, tmp)
    return tmp.read_bytes()


def _safetensors_bytes(tensors: dict[str, torch.Tensor], tmp: Path) -> bytes:
    save_file(tensors, str(tmp))
    return tmp.read_bytes()


@dataclass
class PublishedRun:
    """A repository on the test Hub, and what its checkpoints must be analysed as."""

    repo_id: str
    kind: OptimizerKind
    snapshots: dict[str, Snapshot]
    """Checkpoint branch -> the training state saved there."""
    with_optimizer: set[str]
    corrupt_optimizer: set[str] = field(default_factory=set)
    other_branches: set[str] = field(default_factory=set)
    commits: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


OLMO_CONFIG = {
    "model_type": "olmo", "architectures": ["OLMoForCausalLM"], "d_model": 16, "n_layers": 2, "n_heads": 2,
    "mlp_hidden_size": 64, "activation_type": "swiglu", "vocab_size": 50, "embedding_size": 64,
    "max_sequence_length": 128, "weight_tying": False, "layer_norm_type": "default",
}  # fmt: skip
PYTHIA_CONFIG = {
    "model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "hidden_size": 16,
    "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 50,
    "max_position_embeddings": 128, "tie_word_embeddings": False, "torch_dtype": "float32",
}  # fmt: skip
DATADECIDE_CONFIG = {
    "model_type": "olmo2", "architectures": ["Olmo2ForCausalLM"], "hidden_size": 16, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 48, "vocab_size": 50,
    "max_position_embeddings": 128, "tie_word_embeddings": False,
}  # fmt: skip


def publish_runs(hub: HubServer, scratch: Path) -> dict[str, PublishedRun]:
    runs: dict[str, PublishedRun] = {}
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = scratch / "obj"

    # DataDecide style: step<N>-seed-<seed>; the optimizer state (a plain state_dict) on a few branches only.
    default = train("adamw", [0, 10, 20, 30, 40], seed=0)
    aux = train("adamw", [20], seed=7, peak_lr=2e-2)
    dd = PublishedRun(
        repo_id="allenai-test/DataDecide-tiny",
        kind="adamw",
        snapshots={f"step{s}-seed-default": snap for s, snap in default.items()}
        | {"step20-seed-large-aux": aux[20]},
        with_optimizer={"step20-seed-default", "step40-seed-default", "step20-seed-large-aux"},
        other_branches={"main"},
        config=DATADECIDE_CONFIG,
    )
    for branch, snap in dd.snapshots.items():
        files: dict[str, bytes | Path] = {
            "config.json": json.dumps(DATADECIDE_CONFIG).encode(),
            "model.safetensors": _safetensors_bytes(snap.model_state, tmp),
            "README.md": b"# DataDecide-tiny\n",
        }
        if branch in dd.with_optimizer:
            files["training/optim.pt"] = _torch_bytes(snap.optimizer_state, tmp)
        dd.commits[branch] = hub.commit(dd.repo_id, branch, files)
    hub.commit(dd.repo_id, "main", {"README.md": b"# DataDecide-tiny\n", "config.json": b"{}"})
    runs["datadecide"] = dd

    # OLMo style: step<N>-tokens<T>; a wrapper {"optimizer", "lr_scheduler"}; weights in two shards.
    olmo_snaps = train("adamw", [10, 20, 30], seed=3, peak_lr=5e-3)
    olmo = PublishedRun(
        repo_id="olmo-test/OLMo-tiny",
        kind="adamw",
        snapshots={f"step{s}-tokens{s // 10}M": snap for s, snap in olmo_snaps.items()},
        with_optimizer=set(),
        other_branches={"main", "v1.0-release"},
        config=OLMO_CONFIG,
    )
    olmo.with_optimizer = set(olmo.snapshots)
    for branch, snap in olmo.snapshots.items():
        names = sorted(snap.model_state)
        first, second = names[: len(names) // 2], names[len(names) // 2 :]
        shard_1 = "model-00001-of-00002.safetensors"
        shard_2 = "model-00002-of-00002.safetensors"
        index = {"weight_map": {n: shard_1 for n in first} | {n: shard_2 for n in second}}
        olmo.commits[branch] = hub.commit(
            olmo.repo_id,
            branch,
            {
                "config.json": json.dumps(OLMO_CONFIG).encode(),
                shard_1: _safetensors_bytes({n: snap.model_state[n] for n in first}, tmp),
                shard_2: _safetensors_bytes({n: snap.model_state[n] for n in second}, tmp),
                "model.safetensors.index.json": json.dumps(index).encode(),
                "training/optim.pt": _torch_bytes(
                    {"optimizer": snap.optimizer_state, "lr_scheduler": snap.scheduler_state}, tmp
                ),
            },
        )
    hub.commit(olmo.repo_id, "main", {"config.json": json.dumps(OLMO_CONFIG).encode()})
    hub.commit(olmo.repo_id, "v1.0-release", {"config.json": json.dumps(OLMO_CONFIG).encode()})
    runs["olmo"] = olmo

    # Pythia style: step<N>; SGD with momentum; one branch without optimizer state, one with a damaged file.
    pythia_snaps = train("sgd", [10, 20, 30, 40, 50], seed=5, peak_lr=0.05)
    pythia = PublishedRun(
        repo_id="pythia-test/pythia-tiny",
        kind="sgd",
        snapshots={f"step{s}": snap for s, snap in pythia_snaps.items()},
        with_optimizer={"step10", "step20", "step40"},
        corrupt_optimizer={"step50"},
        other_branches={"main"},
        config=PYTHIA_CONFIG,
    )
    for branch, snap in pythia.snapshots.items():
        files = {
            "config.json": json.dumps(PYTHIA_CONFIG).encode(),
            "model.safetensors": _safetensors_bytes(snap.model_state, tmp),
        }
        if branch in pythia.with_optimizer:
            files["training/optim.pt"] = _torch_bytes(snap.optimizer_state, tmp)
        if branch in pythia.corrupt_optimizer:
            files["training/optim.pt"] = _torch_bytes(snap.optimizer_state, tmp)[:300]  # truncated upload
        pythia.commits[branch] = hub.commit(pythia.repo_id, branch, files)
    hub.commit(pythia.repo_id, "main", {"config.json": json.dumps(PYTHIA_CONFIG).encode()})
    runs["pythia"] = pythia
    return runs


# ---- a local weightslab root, written by the real checkpoint system --------------------------------


@dataclass
class LocalRun:
    root: Path
    experiments: dict[str, list[int]]
    """exp_hash -> committed steps, in the order the run created the experiments."""
    snapshots: dict[str, Snapshot]
    """Branch name (``<hash[:8]>-step<N>``) -> the training state when that checkpoint was taken."""
    losses: dict[int, float]


def build_local_root(root: Path) -> LocalRun:
    """Train with AdamW + a schedule under the real AutomaticCheckpointSystem (every 10 steps, 50 steps).

    At step 31 the batch size changes: a config change, so steps 40 and 50 land in a second experiment.
    """
    ledger = Ledger()
    model = _model(11)
    optimizer, scheduler = _optimizer_and_scheduler("adamw", model, peak_lr=1e-2, total=50)
    config = {"lr": 1e-2, "batch_size": 32, "hidden_size": 16, "num_layers": 2}
    system = AutomaticCheckpointSystem(
        CheckpointConfig(root_log_dir=root, checkpoint_frequency=10, async_save=False), ledger=ledger
    )
    states: dict[int, Snapshot] = {}
    losses: dict[int, float] = {}
    gen = torch.Generator().manual_seed(12)
    try:
        ledger.register_model("model", model)
        ledger.register_optimizer("optimizer", optimizer)
        ledger.register_scheduler("scheduler", scheduler)
        ledger.register_hyperparams("config", config)
        for step in range(0, 51):
            if step == 31:
                ledger.set_hyperparam("batch_size", 64, "config")
            losses[step] = _train_step(model, optimizer, scheduler, gen) if step > 0 else 0.0
            system.checkpoint_on_step(step, metrics={"train/loss": losses[step]})
            states[step] = _snapshot(step, model, optimizer, scheduler)
    finally:
        system.close()

    experiments: dict[str, list[int]] = {}
    snapshots: dict[str, Snapshot] = {}
    layout = RootLayout(root)
    manifests = [read_manifest(layout.experiment(d.name).manifest) for d in layout.checkpoints_dir.iterdir()]
    for manifest in sorted(manifests, key=lambda m: m.checkpoints[0].step):
        experiments[manifest.exp_hash] = [e.step for e in manifest.checkpoints]
        for e in manifest.checkpoints:
            snapshots[f"{manifest.exp_hash[:8]}-step{e.step}"] = states[e.step]
    return LocalRun(root=root, experiments=experiments, snapshots=snapshots, losses=losses)
