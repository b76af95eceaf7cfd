"""The Hub view of the dashboard: a published run (one branch per checkpoint) through the analysis module.

``weightslab ui hf://org/repo`` names the repository; :func:`parse_hub_source` reads that form and
:func:`analyse_hub_run` analyses every checkpoint branch (optimizer state and ``config.json``; the
weights are left out, they are the large files) into one :class:`HubRun`: a row per branch and the
learning-rate curves.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from rich.console import Console

from weightslab.analysis.hub import hub_settings
from weightslab.analysis.local import is_local_source
from weightslab.analysis.models import CheckpointAnalysis
from weightslab.analysis.process import process_all_checkpoints
from weightslab.analysis.rows import CheckpointSummaryRow
from weightslab.analysis.summary import sorted_analyses
from weightslab.errors import ConfigError
from weightslab.ui.curves import Curves, Progress, curves_from_analyses
from weightslab.util.jsonsafe import to_jsonable

SCHEME = "hf://"
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^(?:{_NAME}/)?{_NAME}$")
_OTHER_KINDS = ("datasets", "spaces")


def parse_hub_source(source: str) -> str | None:
    """The model repo id of ``hf://org/repo`` (``"org/repo"``); ``None`` when ``source`` is not ``hf://``.

    Raises:
        ConfigError: ``source`` is ``hf://`` but not a model repository id (a dataset or a Space, a
            revision, a path inside the repo, an empty or malformed name).
    """
    if not isinstance(source, str) or source[: len(SCHEME)].lower() != SCHEME:
        return None
    rest = source[len(SCHEME) :].strip("/")
    kind = rest.split("/", 1)[0]
    if kind in _OTHER_KINDS:
        raise ConfigError(
            f"{source!r} names a {kind[:-1]} repository; `weightslab ui` shows model repositories whose "
            "branches are checkpoints: pass hf://<org>/<repo>"
        )
    if not _REPO_ID.match(rest) or "--" in rest or ".." in rest:
        raise ConfigError(
            f"{source!r} is not a Hub model repository: pass hf://<org>/<repo> (for example "
            "hf://EleutherAI/pythia-160m), without a revision or a path inside the repository"
        )
    return rest


@dataclass(frozen=True, kw_only=True)
class HubBranchRow:
    """One checkpoint branch of the repository: what it holds and its headline numbers."""

    branch: str
    step: int | None
    tokens: int | None
    seed: str | None
    revision: str | None
    """The commit the branch pointed to when it was analysed."""
    lr: float | None
    """The first param group's learning rate; ``None`` without (readable) optimizer state."""
    group_lrs: list[float | None]
    optimizer_type: str | None
    has_optimizer: bool
    has_config: bool
    has_weights: bool
    parameters: int | None
    """The parameter count estimated from ``config.json`` (``None`` when its sizes are missing)."""
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_analysis(cls, analysis: CheckpointAnalysis) -> HubBranchRow:
        """The row of one branch's analysis (the summary row of the analysis module, and every group's lr)."""
        row = CheckpointSummaryRow.from_analysis(analysis)
        opt = analysis.optimizer
        return cls(
            branch=row.branch,
            step=row.step,
            tokens=row.tokens,
            seed=row.seed,
            revision=row.revision,
            lr=row.lr,
            group_lrs=[g.lr for g in opt.param_groups] if opt is not None else [],
            optimizer_type=row.optimizer_type,
            has_optimizer=row.has_optimizer,
            has_config=row.has_config,
            has_weights=row.has_weights,
            parameters=row.estimated_parameters,
            errors=list(analysis.errors),
        )


@dataclass(frozen=True, kw_only=True)
class HubRun:
    """A Hub repository analysed: one row per checkpoint branch (sorted by step) and the curves."""

    repo_id: str
    endpoint: str
    branches: list[HubBranchRow]
    curves: Curves

    @property
    def errors(self) -> list[str]:
        """``<branch>: <why>`` for every branch (or part of one) that could not be analysed."""
        return self.curves.errors

    def to_dict(self) -> dict[str, Any]:
        """The run as JSON types (NaN and infinities become ``None``), ``errors`` included."""
        return {**cast("dict[str, Any]", to_jsonable(self)), "errors": list(self.errors)}


def analyse_hub_run(
    repo_id: str,
    *,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    max_workers: int = 4,
    progress: Progress | None = None,
) -> HubRun:
    """Analyse every checkpoint branch of the Hub model repository ``repo_id`` (optimizer and config).

    Branches that do not name a step (``main``) are skipped; a branch that fails is a row with its
    ``errors``. The Hub is ``endpoint``, else ``$HF_ENDPOINT``; downloads go to ``cache_dir``, else
    ``$HF_HUB_CACHE``. ``progress(done, total)`` counts the branches.

    Raises:
        ConfigError: ``repo_id`` is also a folder here (the analysis would read it as a local root), or
            ``max_workers`` is below 1.
        AnalysisSourceError: the repository does not exist (or is private and no token was given).
        HubUnavailableError: the Hub could not be reached.
    """
    if is_local_source(repo_id):
        raise ConfigError(
            f"{repo_id!r} is a Hub repository and also a folder under {Path.cwd()}; the analysis reads a "
            "folder as a local root, so start `weightslab ui` from another directory"
        )
    settings = hub_settings(endpoint, cache_dir, token)
    analyses = process_all_checkpoints(
        repo_id,
        max_workers=max_workers,
        include_weights=False,
        include_optimizer=True,
        include_config=True,
        endpoint=settings.endpoint,
        cache_dir=settings.cache_dir,
        token=token,
        console=Console(file=io.StringIO()),  # the server's terminal gets no progress bar
        on_progress=progress,
    )
    return HubRun(
        repo_id=repo_id,
        endpoint=settings.endpoint,
        branches=[HubBranchRow.from_analysis(a) for a in sorted_analyses(analyses)],
        curves=curves_from_analyses(analyses),
    )
