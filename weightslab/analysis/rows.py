"""The flat row of one checkpoint in the comprehensive summary DataFrame: :class:`CheckpointSummaryRow`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from weightslab.analysis.models import CheckpointAnalysis


@dataclass(frozen=True, kw_only=True)
class CheckpointSummaryRow:
    """One row of the comprehensive summary: the headline numbers of one checkpoint, flat.

    ``has_*`` say whether the checkpoint holds a part, ``*_available`` whether it was analysed
    (weights only on request). ``current_lr`` and ``lr`` are the same value: the first param group's
    learning rate, under the seed API's name and under this package's.
    """

    branch: str
    step: int | None
    tokens: int | None
    seed: str | None
    revision: str | None
    has_optimizer: bool
    has_config: bool
    has_weights: bool
    optimizer_available: bool
    config_available: bool
    weights_available: bool
    optimizer_type: str | None
    num_param_groups: int | None
    current_lr: float | None
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
    def from_analysis(cls, analysis: CheckpointAnalysis) -> CheckpointSummaryRow:
        """Flatten one analysis; the columns of a part that is not available are ``None``."""
        a, comp = analysis, analysis.components
        opt, cfg, w = a.optimizer, a.config, a.weights
        lr = opt.learning_rate if opt is not None else None
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
            has_optimizer=comp.has_optimizer,
            has_config=comp.has_config,
            has_weights=comp.has_weights,
            optimizer_available=opt is not None,
            config_available=cfg is not None,
            weights_available=w is not None,
            optimizer_type=opt.optimizer_type if opt is not None else None,
            num_param_groups=len(opt.param_groups) if opt is not None else None,
            current_lr=lr.lr if lr is not None else None,
            lr=lr.lr if lr is not None else None,
            initial_lr=lr.initial_lr if lr is not None else None,
            lr_ratio=lr.lr_ratio if lr is not None else None,
            min_lr=lr.min_lr if lr is not None else None,
            max_lr=lr.max_lr if lr is not None else None,
            weight_decay=g0.weight_decay if g0 is not None else None,
            momentum=g0.momentum if g0 is not None else None,
            beta1=betas[0] if betas else None,
            beta2=betas[1] if betas and len(betas) > 1 else None,
            eps=g0.eps if g0 is not None else None,
            optimizer_step=opt.state_step if opt is not None else None,
            scheduler_last_epoch=lr.scheduler_last_epoch if lr is not None else None,
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
            error=a.error,
        )
