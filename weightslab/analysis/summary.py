"""Tables and files from a set of analyses: pandas DataFrames sorted by step, CSV and JSON outputs.

Every function takes ``process_all_checkpoints``'s ``{branch: analysis}`` dict or any collection of
analyses, so a local run and a published one can go into one table.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from weightslab.analysis.models import CheckpointAnalysis
from weightslab.analysis.rows import CheckpointSummaryRow
from weightslab.errors import ConfigError
from weightslab.util.jsonsafe import to_jsonable

SUMMARY_FORMAT = "weightslab.analysis/1"

Analyses = Mapping[str, CheckpointAnalysis] | Iterable[CheckpointAnalysis]
"""``process_all_checkpoints``'s result, or any collection of analyses."""

_LR_COLUMNS = (
    "branch", "step", "tokens", "seed", "group", "lr", "initial_lr", "lr_ratio", "weight_decay", "momentum",
    "beta1", "beta2", "eps", "num_parameters", "num_elements", "scheduler_last_lr", "scheduler_last_epoch",
    "optimizer_step",
)  # fmt: skip
_INT_COLUMNS = (
    "step",
    "tokens",
    "group",
    "num_parameters",
    "num_elements",
    "scheduler_last_epoch",
    "optimizer_step",
)


def sorted_analyses(analyses: Analyses) -> list[CheckpointAnalysis]:
    """The analyses as a list sorted by step (checkpoints without a step last), then seed and branch."""
    items = list(analyses.values()) if isinstance(analyses, Mapping) else list(analyses)
    return sorted(
        items, key=lambda a: (a.step is None, a.step if a.step is not None else 0, a.seed or "", a.branch)
    )


def create_comprehensive_summary(all_analyses: Analyses) -> pd.DataFrame:
    """One row per checkpoint (the fields of :class:`CheckpointSummaryRow`), sorted by step.

    Failed checkpoints are kept, with their ``error``. Integer columns use pandas' nullable ``Int64`` so
    a missing value does not turn them into floats.
    """
    fields = dataclasses.fields(CheckpointSummaryRow)
    rows = [dataclasses.asdict(CheckpointSummaryRow.from_analysis(a)) for a in sorted_analyses(all_analyses)]
    df: pd.DataFrame = pd.DataFrame(rows, columns=[f.name for f in fields])
    for f in fields:
        if f.type in ("int | None", "int"):
            df[f.name] = df[f.name].astype("Int64")
    return df


def create_learning_rate_summary(all_analyses: Analyses) -> pd.DataFrame:
    """One row per param group of every checkpoint with optimizer state, sorted by step then group."""
    rows: list[dict[str, Any]] = []
    for a in sorted_analyses(all_analyses):
        if a.optimizer is None:
            continue
        opt = a.optimizer
        last_lrs = opt.learning_rate.scheduler_last_lr or ()
        for g in opt.param_groups:
            rows.append(
                {
                    "branch": a.branch,
                    "step": a.step,
                    "tokens": a.tokens,
                    "seed": a.seed,
                    "group": g.index,
                    "lr": g.lr,
                    "initial_lr": g.initial_lr,
                    "lr_ratio": g.lr / g.initial_lr if g.lr is not None and g.initial_lr else None,
                    "weight_decay": g.weight_decay,
                    "momentum": g.momentum,
                    "beta1": g.betas[0] if g.betas else None,
                    "beta2": g.betas[1] if g.betas and len(g.betas) > 1 else None,
                    "eps": g.eps,
                    "num_parameters": g.num_parameters,
                    "num_elements": g.num_elements,
                    "scheduler_last_lr": last_lrs[g.index] if g.index < len(last_lrs) else None,
                    "scheduler_last_epoch": opt.learning_rate.scheduler_last_epoch,
                    "optimizer_step": opt.state_step,
                }
            )
    df: pd.DataFrame = pd.DataFrame(rows, columns=list(_LR_COLUMNS))
    for name in _INT_COLUMNS:
        df[name] = df[name].astype("Int64")
    return df


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _file_stem(branch: str) -> str:
    stem = _UNSAFE.sub("_", branch).strip(".") or "branch"
    return stem


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(to_jsonable(payload), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def save_checkpoint_analysis(
    analysis: CheckpointAnalysis, branch: str, output_dir: str | Path | None = None
) -> str:
    """Write one analysis as ``<output_dir>/<branch>.json`` and return the path.

    Characters of ``branch`` outside ``[A-Za-z0-9._-]`` become ``_`` in the file name; the analysis's own
    branch is inside the file. Non-finite numbers are written as ``null``.

    Args:
        output_dir: the directory, created if needed; the current directory when omitted.

    Raises:
        ConfigError: ``branch`` is not a str (the argument order is ``analysis, branch, output_dir``).
    """
    if not isinstance(branch, str):
        raise ConfigError(
            f"branch must be the branch name (a str), got {branch!r}; call "
            "save_checkpoint_analysis(analysis, analysis.branch, output_dir)"
        )
    out = Path(output_dir) if output_dir is not None else Path()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{_file_stem(branch)}.json"
    _write_json(path, analysis.to_dict())
    return str(path)


class AnalysisOutputs(tuple[str, str, str]):
    """The files :func:`save_all_analyses_outputs` wrote: ``(summary_csv, learning_rates_csv, summary_json)``.

    It is that 3-tuple of paths, so ``csv_path, lr_path, json_path = save_all_analyses_outputs(...)``
    works, and names them; ``checkpoint_jsons`` holds the per-checkpoint files.
    """

    checkpoint_jsons: dict[str, str]
    """Branch -> its full analysis as JSON (under ``checkpoints/``)."""

    def __new__(
        cls,
        summary_csv: str,
        learning_rates_csv: str,
        summary_json: str,
        checkpoint_jsons: Mapping[str, str] | None = None,
    ) -> AnalysisOutputs:
        outputs = super().__new__(cls, (summary_csv, learning_rates_csv, summary_json))
        outputs.checkpoint_jsons = dict(checkpoint_jsons or {})
        return outputs

    @property
    def summary_csv(self) -> str:
        """``summary.csv``: :func:`create_comprehensive_summary`."""
        return self[0]

    @property
    def learning_rates_csv(self) -> str:
        """``learning_rates.csv``: :func:`create_learning_rate_summary`."""
        return self[1]

    @property
    def summary_json(self) -> str:
        """``summary.json``: the run's metadata and the summary rows."""
        return self[2]

    def paths(self) -> list[Path]:
        """Every file written, as Paths."""
        return [Path(p) for p in (*self, *self.checkpoint_jsons.values())]


def save_all_analyses_outputs(
    all_analyses: Analyses, output_dir: str | Path | None = None, *, source: str | Path | None = None
) -> AnalysisOutputs:
    """Write ``summary.csv``, ``learning_rates.csv``, ``summary.json`` and ``checkpoints/<branch>.json``.

    Returns the paths of the first three (and, as ``checkpoint_jsons``, of the others). Files of an
    earlier run in ``output_dir`` with the same names are replaced.

    Args:
        output_dir: the directory, created if needed; the current directory when omitted.
        source: the repo id or root the analyses came from, recorded in ``summary.json``; the first
            analysis's source when omitted.
    """
    out = Path(output_dir) if output_dir is not None else Path()
    out.mkdir(parents=True, exist_ok=True)
    ordered = sorted_analyses(all_analyses)
    summary = create_comprehensive_summary(ordered)
    summary_csv = out / "summary.csv"
    summary.to_csv(summary_csv, index=False)
    learning_rates_csv = out / "learning_rates.csv"
    create_learning_rate_summary(ordered).to_csv(learning_rates_csv, index=False)

    checkpoint_jsons: dict[str, str] = {}
    used: set[str] = set()
    for a in ordered:
        stem = _file_stem(a.branch)
        suffix = 1
        while stem in used:  # two branch names that differ only in unsafe characters
            suffix += 1
            stem = f"{_file_stem(a.branch)}-{suffix}"
        used.add(stem)
        path = out / "checkpoints" / f"{stem}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, a.to_dict())
        checkpoint_jsons[a.branch] = str(path)

    summary_json = out / "summary.json"
    _write_json(
        summary_json,
        {
            "format": SUMMARY_FORMAT,
            "source": str(source) if source is not None else (ordered[0].source if ordered else None),
            "created": time.time(),
            "checkpoints": len(ordered),
            "failed": sum(1 for a in ordered if not a.ok),
            "rows": [dataclasses.asdict(CheckpointSummaryRow.from_analysis(a)) for a in ordered],
        },
    )
    return AnalysisOutputs(str(summary_csv), str(learning_rates_csv), str(summary_json), checkpoint_jsons)
