"""The dataclass models of an analysis: what one checkpoint holds and the statistics computed from it.

Every model is a frozen, keyword-only dataclass. A checkpoint's three parts (optimizer, config,
weights) are always objects: a part that is absent, was not asked for, or failed has
``available=False`` (and ``error`` when it failed), so ``analysis.components.optimizer.available``
never raises. :func:`to_jsonable` turns any model into plain JSON types (non-finite floats become
``None``), which is what the JSON outputs hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast

from weightslab.util.jsonsafe import to_jsonable

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

    numel: int = 0
    norm: float = 0.0
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
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

    @property
    def current_lr(self) -> float | None:
        """The group's learning rate when the checkpoint was saved (``lr``)."""
        return self.lr

    @property
    def group_index(self) -> int:
        """The group's position in ``param_groups`` (``index``)."""
        return self.index


@dataclass(frozen=True, kw_only=True)
class LearningRateInfo:
    """The learning rate of a checkpoint: the first group's values plus every group's and the scheduler's."""

    lr: float | None = None
    initial_lr: float | None = None
    lr_ratio: float | None = None
    """``lr / initial_lr``: where the schedule stands (1.0 at the peak of a warmup-free schedule)."""
    group_lrs: tuple[float | None, ...] = ()
    min_lr: float | None = None
    max_lr: float | None = None
    param_group_lrs: tuple[ParamGroupInfo, ...] = ()
    """Every param group in order, with its ``current_lr``, ``initial_lr``, weight decay and momentum."""
    lr_scheduler_present: bool = False
    lr_scheduler_keys: tuple[str, ...] = ()
    scheduler_last_lr: tuple[float, ...] | None = None
    scheduler_base_lrs: tuple[float, ...] | None = None
    scheduler_last_epoch: int | None = None


@dataclass(frozen=True, kw_only=True)
class StateEntryInfo:
    """One per-parameter state entry (``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``, ...) in total."""

    name: str
    num_tensors: int
    dtypes: tuple[str, ...]
    stats: TensorStatistics


@dataclass(frozen=True, kw_only=True)
class OptimizerComponentInfo:
    """One part of an optimizer checkpoint (``param_groups``, ``state``, ``lr_scheduler``) described."""

    name: str
    type: str
    """The Python type it is stored as (``list``, ``dict``)."""
    size: int
    """Its ``len()``: param groups, parameters with state, or scheduler entries."""
    num_param_groups: int | None = None
    param_group_keys: tuple[str, ...] = ()
    """``param_groups``: the keys of the first group (``lr``, ``betas``, ``params``, ...)."""
    learning_rate: float | None = None
    initial_learning_rate: float | None = None
    num_parameters: int | None = None
    """``state``: the parameters that have state."""
    state_keys: tuple[str, ...] = ()
    """``state``: every entry the parameters' state holds (``step``, ``exp_avg``, ...), first seen first."""


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
    """Everything read from one optimizer checkpoint; ``available=False`` when there was none to read."""

    available: bool = False
    error: str | None = None
    """Why the optimizer state could not be analysed; ``None`` when it was, or when there is none."""
    path: str = ""
    file_bytes: int = 0
    layout: OptimizerLayout | None = None
    optimizer_name: str | None = None
    """The optimizer's registered name inside a weightslab step file; ``None`` for other layouts."""
    optimizer_type: str | None = None
    """Inferred from the state keys and group settings: ``adamw``, ``adam``, ``sgd``, ... or ``unknown``."""
    learning_rate: LearningRateInfo = field(default_factory=LearningRateInfo)
    optimizer_info: dict[str, OptimizerComponentInfo] = field(default_factory=dict)
    """``param_groups``, ``state`` and (when saved with it) ``lr_scheduler``, each described."""
    components: tuple[StateEntryInfo, ...] = ()
    num_parameters: int = 0
    num_params_with_state: int = 0
    state_elements: int = 0
    state_step: int | None = None
    """The largest per-parameter ``step`` in the state (Adam's update count)."""
    scheduler: SchedulerInfo | None = None
    top_level_keys: tuple[str, ...] = ()

    @property
    def learning_rate_info(self) -> LearningRateInfo | None:
        """The learning rates and param groups; ``None`` when the optimizer state is not available."""
        return self.learning_rate if self.available else None

    @property
    def param_groups(self) -> tuple[ParamGroupInfo, ...]:
        """Every param group in order (``learning_rate.param_group_lrs``)."""
        return self.learning_rate.param_group_lrs

    @property
    def checkpoint_keys(self) -> tuple[str, ...]:
        """The top-level keys of the checkpoint file (``top_level_keys``)."""
        return self.top_level_keys

    def component(self, name: str) -> StateEntryInfo | None:
        """The statistics of state entry ``name``, or ``None`` when the optimizer keeps no such entry."""
        for c in self.components:
            if c.name == name:
                return c
        return None


@dataclass(frozen=True, kw_only=True)
class ConfigAnalysis:
    """The model configuration of a checkpoint (``config.json`` on the Hub, the hyperparameters locally)."""

    available: bool = False
    error: str | None = None
    source: str = ""
    model_type: str | None = None
    architectures: tuple[str, ...] = ()
    hidden_size: int | None = None
    num_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    intermediate_size: int | None = None
    vocab_size: int | None = None
    max_position_embeddings: int | None = None
    tie_word_embeddings: bool | None = None
    torch_dtype: str | None = None
    estimated_parameters: int | None = None
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

    available: bool = False
    error: str | None = None
    files: tuple[str, ...] = ()
    file_bytes: int = 0
    total_parameters: int = 0
    num_tensors: int = 0
    stats: TensorStatistics = field(default_factory=TensorStatistics)
    tensors: tuple[TensorInfo, ...] = ()
    layer_groups: tuple[LayerGroupInfo, ...] = ()


@dataclass(frozen=True, kw_only=True)
class CheckpointComponents:
    """The three analysed parts of one checkpoint, and which files the checkpoint holds.

    ``optimizer``, ``config`` and ``weights`` are always present; check their ``available``. The file
    fields list the branch (or the local step file): every file, and which ones hold each part.
    """

    optimizer: OptimizerAnalysis = field(default_factory=OptimizerAnalysis)
    config: ConfigAnalysis = field(default_factory=ConfigAnalysis)
    weights: WeightsAnalysis = field(default_factory=WeightsAnalysis)
    files: tuple[str, ...] = ()
    optimizer_file: str | None = None
    config_file: str | None = None
    weight_files: tuple[str, ...] = ()
    total_bytes: int = 0

    @property
    def has_optimizer(self) -> bool:
        """Whether the checkpoint holds an optimizer state (analysed or not)."""
        return self.optimizer_file is not None

    @property
    def has_config(self) -> bool:
        """Whether the checkpoint holds a configuration (analysed or not)."""
        return self.config_file is not None

    @property
    def has_weights(self) -> bool:
        """Whether the checkpoint holds weights (analysed or not)."""
        return bool(self.weight_files)


@dataclass(frozen=True, kw_only=True)
class CheckpointAnalysis:
    """The analysis of one checkpoint. A failed part is listed in ``errors``; the other parts are kept."""

    source: str
    """The repo id, or the local root directory."""
    source_kind: SourceKind
    branch: str
    revision: str | None = None
    """The commit the branch pointed to (Hub), or the step file's ``xxh3_128`` (local root)."""
    step: int | None = None
    tokens: int | None = None
    tokens_label: str | None = None
    seed: str | None = None
    components: CheckpointComponents = field(default_factory=CheckpointComponents)
    metrics: dict[str, float | None] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    elapsed_s: float = 0.0

    @property
    def optimizer(self) -> OptimizerAnalysis | None:
        """``components.optimizer`` when it was analysed, else ``None``."""
        return self.components.optimizer if self.components.optimizer.available else None

    @property
    def config(self) -> ConfigAnalysis | None:
        """``components.config`` when it was analysed, else ``None``."""
        return self.components.config if self.components.config.available else None

    @property
    def weights(self) -> WeightsAnalysis | None:
        """``components.weights`` when they were analysed, else ``None``."""
        return self.components.weights if self.components.weights.available else None

    @property
    def ok(self) -> bool:
        """Whether nothing failed."""
        return not self.errors

    @property
    def error(self) -> str | None:
        """Every error joined with ``; ``, or ``None`` when nothing failed."""
        return "; ".join(self.errors) if self.errors else None

    def to_dict(self) -> dict[str, Any]:
        """The analysis as plain JSON types."""
        return cast("dict[str, Any]", to_jsonable(self))
