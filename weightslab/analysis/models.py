"""The dataclass models of an analysis: what one checkpoint holds and the statistics computed from it.

Every model is a frozen, keyword-only dataclass. :func:`to_jsonable` turns any of them into plain
JSON types (non-finite floats become ``None``), which is what the JSON outputs hold.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

OptimizerLayout = Literal["state_dict", "wrapper", "weightslab"]
"""Where the optimizer state sat in the file: a plain ``optimizer.state_dict()``, a wrapper dict with
``optimizer`` / ``lr_scheduler`` keys, or a weightslab step file."""

SourceKind = Literal["hub", "local"]


@dataclass(frozen=True, kw_only=True)
class TensorStatistics:
    """Statistics over the finite elements of one tensor or of many tensors together.

    ``norm`` is the L2 norm, ``std`` the population standard deviation. ``mean``, ``std``, ``min`` and
    ``max`` are ``None`` when there is no finite element; ``num_nonfinite`` counts NaN and inf elements.
    """

    numel: int
    norm: float
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    num_nonfinite: int = 0


@dataclass(frozen=True, kw_only=True)
class ParamGroupInfo:
    """The hyperparameters of one optimizer param group, as stored in its state dict."""

    index: int
    lr: float | None
    initial_lr: float | None
    weight_decay: float | None
    momentum: float | None
    betas: tuple[float, ...] | None
    eps: float | None
    num_parameters: int
    """Parameter tensors in the group (``len(group["params"])``)."""
    num_elements: int | None
    """Elements of those parameters, read from the optimizer state; ``None`` when they have no state."""
    options: dict[str, Any] = field(default_factory=dict)
    """The group's other scalar settings (``nesterov``, ``amsgrad``, ``decoupled_weight_decay``, ...)."""


@dataclass(frozen=True, kw_only=True)
class LearningRateInfo:
    """The learning rate of a checkpoint: the first group's values plus every group's and the scheduler's."""

    lr: float | None
    initial_lr: float | None
    lr_ratio: float | None
    """``lr / initial_lr``: where the schedule stands (1.0 at the peak of a warmup-free schedule)."""
    group_lrs: tuple[float | None, ...]
    min_lr: float | None
    max_lr: float | None
    scheduler_last_lr: tuple[float, ...] | None = None
    scheduler_base_lrs: tuple[float, ...] | None = None
    scheduler_last_epoch: int | None = None


@dataclass(frozen=True, kw_only=True)
class OptimizerComponentInfo:
    """One per-parameter state entry (``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``, ...) in total."""

    name: str
    num_tensors: int
    dtypes: tuple[str, ...]
    stats: TensorStatistics


@dataclass(frozen=True, kw_only=True)
class SchedulerInfo:
    """What a learning-rate scheduler's state dict says."""

    keys: tuple[str, ...]
    last_epoch: int | None
    step_count: int | None
    last_lr: tuple[float, ...] | None
    base_lrs: tuple[float, ...] | None


@dataclass(frozen=True, kw_only=True)
class OptimizerAnalysis:
    """Everything read from one optimizer checkpoint."""

    path: str
    file_bytes: int
    layout: OptimizerLayout
    optimizer_name: str | None
    """The optimizer's registered name inside a weightslab step file; ``None`` for other layouts."""
    optimizer_type: str
    """Inferred from the state keys and group settings: ``adamw``, ``adam``, ``sgd``, ... or ``unknown``."""
    param_groups: tuple[ParamGroupInfo, ...]
    learning_rate: LearningRateInfo
    components: tuple[OptimizerComponentInfo, ...]
    num_parameters: int
    num_params_with_state: int
    state_elements: int
    state_step: int | None
    """The largest per-parameter ``step`` in the state (Adam's update count)."""
    scheduler: SchedulerInfo | None
    top_level_keys: tuple[str, ...]

    def component(self, name: str) -> OptimizerComponentInfo | None:
        """The statistics of state entry ``name``, or ``None`` when the optimizer keeps no such entry."""
        for c in self.components:
            if c.name == name:
                return c
        return None


@dataclass(frozen=True, kw_only=True)
class ConfigAnalysis:
    """The model configuration of a checkpoint (``config.json`` on the Hub, the hyperparameters locally)."""

    source: str
    model_type: str | None
    architectures: tuple[str, ...]
    hidden_size: int | None
    num_layers: int | None
    num_attention_heads: int | None
    num_key_value_heads: int | None
    intermediate_size: int | None
    vocab_size: int | None
    max_position_embeddings: int | None
    tie_word_embeddings: bool | None
    torch_dtype: str | None
    estimated_parameters: int | None
    """A transformer parameter count computed from the sizes above; ``None`` when they are missing."""
    values: dict[str, Any] = field(default_factory=dict)
    """The scalar top-level entries of the configuration."""


@dataclass(frozen=True, kw_only=True)
class TensorInfo:
    """One weight tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    stats: TensorStatistics


@dataclass(frozen=True, kw_only=True)
class LayerGroupInfo:
    """The tensors of one layer (``model.layers.3``) or module (``lm_head``) together."""

    name: str
    num_tensors: int
    stats: TensorStatistics


@dataclass(frozen=True, kw_only=True)
class WeightsAnalysis:
    """The statistics of a checkpoint's weights, per tensor, per layer group and in total."""

    files: tuple[str, ...]
    file_bytes: int
    total_parameters: int
    num_tensors: int
    stats: TensorStatistics
    tensors: tuple[TensorInfo, ...]
    layer_groups: tuple[LayerGroupInfo, ...]


@dataclass(frozen=True, kw_only=True)
class CheckpointComponents:
    """Which files one checkpoint (a branch, or a local step file) holds."""

    files: tuple[str, ...]
    optimizer_file: str | None
    config_file: str | None
    weight_files: tuple[str, ...]
    total_bytes: int

    @property
    def has_optimizer(self) -> bool:
        return self.optimizer_file is not None

    @property
    def has_config(self) -> bool:
        return self.config_file is not None

    @property
    def has_weights(self) -> bool:
        return bool(self.weight_files)


@dataclass(frozen=True, kw_only=True)
class CheckpointAnalysis:
    """The analysis of one checkpoint. A failed part is listed in ``errors``; the other parts are kept."""

    source: str
    """The repo id, or the local root directory."""
    source_kind: SourceKind
    branch: str
    revision: str | None
    """The commit the branch pointed to (Hub), or the step file's ``xxh3_128`` (local root)."""
    step: int | None
    tokens: int | None = None
    tokens_label: str | None = None
    seed: str | None = None
    components: CheckpointComponents | None = None
    optimizer: OptimizerAnalysis | None = None
    config: ConfigAnalysis | None = None
    weights: WeightsAnalysis | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """The analysis as plain JSON types."""
        return cast("dict[str, Any]", to_jsonable(self))


def to_jsonable(value: Any) -> Any:
    """``value`` (dataclasses, mappings, sequences, paths, numbers) as JSON types; NaN and inf as None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


@dataclass(frozen=True, kw_only=True)
class CheckpointSummaryRow:
    """One row of the comprehensive summary: the headline numbers of one checkpoint, flat."""

    branch: str
    step: int | None
    tokens: int | None
    seed: str | None
    revision: str | None
    has_optimizer: bool
    has_config: bool
    has_weights: bool
    optimizer_type: str | None
    num_param_groups: int | None
    lr: float | None
    initial_lr: float | None
    lr_ratio: float | None
    min_lr: float | None
    max_lr: float | None
    weight_decay: float | None
    momentum: float | None
    beta1: float | None
    beta2: float | None
    eps: float | None
    optimizer_step: int | None
    scheduler_last_epoch: int | None
    exp_avg_norm: float | None
    exp_avg_mean: float | None
    exp_avg_sq_norm: float | None
    exp_avg_sq_mean: float | None
    momentum_buffer_norm: float | None
    optimizer_state_elements: int | None
    optimizer_file_bytes: int | None
    model_type: str | None
    hidden_size: int | None
    num_layers: int | None
    vocab_size: int | None
    estimated_parameters: int | None
    total_parameters: int | None
    weights_norm: float | None
    error: str | None

    @classmethod
    def from_analysis(cls, a: CheckpointAnalysis) -> CheckpointSummaryRow:
        """Flatten one analysis; the columns of a part that is missing are ``None``."""
        opt, cfg, w, comp = a.optimizer, a.config, a.weights, a.components
        g0 = opt.param_groups[0] if opt is not None and opt.param_groups else None
        betas = g0.betas if g0 is not None else None

        def stat(name: str, what: Literal["norm", "mean"]) -> float | None:
            c = opt.component(name) if opt is not None else None
            return None if c is None else getattr(c.stats, what)

        return cls(
            branch=a.branch,
            step=a.step,
            tokens=a.tokens,
            seed=a.seed,
            revision=a.revision,
            has_optimizer=comp.has_optimizer if comp is not None else opt is not None,
            has_config=comp.has_config if comp is not None else cfg is not None,
            has_weights=comp.has_weights if comp is not None else w is not None,
            optimizer_type=opt.optimizer_type if opt is not None else None,
            num_param_groups=len(opt.param_groups) if opt is not None else None,
            lr=opt.learning_rate.lr if opt is not None else None,
            initial_lr=opt.learning_rate.initial_lr if opt is not None else None,
            lr_ratio=opt.learning_rate.lr_ratio if opt is not None else None,
            min_lr=opt.learning_rate.min_lr if opt is not None else None,
            max_lr=opt.learning_rate.max_lr if opt is not None else None,
            weight_decay=g0.weight_decay if g0 is not None else None,
            momentum=g0.momentum if g0 is not None else None,
            beta1=betas[0] if betas else None,
            beta2=betas[1] if betas and len(betas) > 1 else None,
            eps=g0.eps if g0 is not None else None,
            optimizer_step=opt.state_step if opt is not None else None,
            scheduler_last_epoch=opt.learning_rate.scheduler_last_epoch if opt is not None else None,
            exp_avg_norm=stat("exp_avg", "norm"),
            exp_avg_mean=stat("exp_avg", "mean"),
            exp_avg_sq_norm=stat("exp_avg_sq", "norm"),
            exp_avg_sq_mean=stat("exp_avg_sq", "mean"),
            momentum_buffer_norm=stat("momentum_buffer", "norm"),
            optimizer_state_elements=opt.state_elements if opt is not None else None,
            optimizer_file_bytes=opt.file_bytes if opt is not None else None,
            model_type=cfg.model_type if cfg is not None else None,
            hidden_size=cfg.hidden_size if cfg is not None else None,
            num_layers=cfg.num_layers if cfg is not None else None,
            vocab_size=cfg.vocab_size if cfg is not None else None,
            estimated_parameters=cfg.estimated_parameters if cfg is not None else None,
            total_parameters=w.total_parameters if w is not None else None,
            weights_norm=w.stats.norm if w is not None else None,
            error="; ".join(a.errors) if a.errors else None,
        )
