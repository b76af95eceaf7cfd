"""Analysing a whole run in parallel: branches of a Hub repo, or the checkpoints of a root."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from weightslab.analysis.checkpoint import failed_analysis, process_single_checkpoint
from weightslab.analysis.hub import HubSettings, hub_settings, list_branches
from weightslab.analysis.local import (
    LocalCheckpoint,
    analyze_local_checkpoint,
    is_local_source,
    list_local_checkpoints,
)
from weightslab.analysis.models import CheckpointAnalysis
from weightslab.analysis.progress import AnalysisProgress
from weightslab.errors import CheckpointNotFoundError, ConfigError


@dataclass(frozen=True)
class _Job:
    branch: str
    step: int
    revision: str | None
    run: Callable[..., CheckpointAnalysis]
    """Called with ``progress=`` the run's display."""


# Over 60 lines for its public signature and docstring (every option documented); the body is ~40.
def process_all_checkpoints(
    repo_id: str | Path,
    max_workers: int = 4,
    include_weights: bool = False,
    delete_weights_after: bool = False,
    *,
    include_optimizer: bool = True,
    include_config: bool = True,
    delete_optimizer_after: bool = False,
    steps: Collection[int] | None = None,
    verify: bool = True,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    console: Console | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, CheckpointAnalysis]:
    """Analyse every checkpoint of a run, in parallel, and return ``{branch: analysis}`` sorted by step.

    ``repo_id`` is a local weightslab root when it is an existing directory (a ``Path`` always means one;
    each committed checkpoint is a branch named ``<hash prefix>-step<step>``), else a Hub repo id, whose
    branches that name a step (``step143000``, ``step1000-tokens4B``, ``step69369-seed-default``) are
    analysed; other branches (``main``) are skipped. The Hub is ``endpoint``, else ``$HF_ENDPOINT``
    (read when called); downloads go to ``cache_dir``, else ``$HF_HUB_CACHE``. A checkpoint that fails
    is in the result with its ``errors``; it never stops the run. A rich progress bar shows on
    ``console`` when it is a terminal.

    Args:
        max_workers: checkpoints analysed at the same time.
        include_weights: also analyse the weights: downloaded from the Hub, read from the step files
            of a local root.
        steps: analyse only the checkpoints at these steps.
        verify: check each local step file against its manifest checksum first (a damaged file is then
            reported instead of analysed); it reads every file once more.
        on_progress: called as ``on_progress(done, total)`` once the checkpoints are listed and after each
            one finishes (from the calling thread), for a display other than the terminal's.
        include_weights, delete_weights_after, delete_optimizer_after: see
            :func:`~weightslab.analysis.analyze_complete_checkpoint`.

    Raises:
        ConfigError: ``max_workers`` is below 1.
        CheckpointNotFoundError: the repository or the root does not exist.
        WeightslabError: the Hub could not be reached to list the branches.
    """
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ConfigError(f"max_workers must be an int >= 1, got {max_workers!r}")
    wanted = None if steps is None else set(steps)
    source = repo_id
    local = is_local_source(source)
    if isinstance(source, Path) and not local:
        raise CheckpointNotFoundError(
            f"local root {source} does not exist or is not a directory; pass the root_log_dir of a "
            "training run (a Hub repo id is passed as a str)"
        )
    if local:
        jobs, failed = _local_jobs(
            source,
            wanted,
            include_optimizer=include_optimizer,
            include_config=include_config,
            include_weights=include_weights,
            verify=verify,
        )
    else:
        failed = []
        jobs = _hub_jobs(
            str(source),
            wanted,
            hub_settings(endpoint, cache_dir, token),
            include_optimizer=include_optimizer,
            include_config=include_config,
            include_weights=include_weights,
            delete_weights_after=delete_weights_after,
            delete_optimizer_after=delete_optimizer_after,
        )
    jobs.sort(key=lambda j: (j.step, j.branch))
    results = {a.branch: a for a in failed}
    with (
        AnalysisProgress(console, total=len(jobs), description=f"analysing {source}") as progress,
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="weightslab-analysis") as pool,
    ):
        started = [pool.submit(_guarded, job, progress, source, local) for job in jobs]
        if on_progress is not None:
            on_progress(0, len(jobs))
        for done, future in enumerate(as_completed(started), start=1):
            analysis = future.result()
            results[analysis.branch] = analysis
            progress.advance()
            if on_progress is not None:
                on_progress(done, len(jobs))
    return dict(sorted(results.items(), key=lambda kv: _order(kv[1])))


def _local_jobs(
    root: str | Path,
    wanted: set[int] | None,
    *,
    include_optimizer: bool,
    include_config: bool,
    include_weights: bool,
    verify: bool,
) -> tuple[list[_Job], list[CheckpointAnalysis]]:
    """One job per committed checkpoint of ``root`` (at a ``wanted`` step), and the experiments that failed."""
    listing = list_local_checkpoints(root)
    failed = [failed_analysis(root, name, problem, local=True) for name, problem in listing.problems.items()]
    jobs: list[_Job] = []
    for c in listing.checkpoints:
        if wanted is not None and c.entry.step not in wanted:
            continue
        run = partial(
            _analyze_local,
            c,
            include_optimizer=include_optimizer,
            include_config=include_config,
            include_weights=include_weights,
            verify=verify,
        )
        jobs.append(_Job(branch=c.branch, step=c.entry.step, revision=c.entry.xxh3_128, run=run))
    return jobs, failed


def _hub_jobs(
    repo_id: str,
    wanted: set[int] | None,
    settings: HubSettings,
    *,
    include_optimizer: bool,
    include_config: bool,
    include_weights: bool,
    delete_weights_after: bool,
    delete_optimizer_after: bool,
) -> list[_Job]:
    """One job per branch of ``repo_id`` that names a (``wanted``) step; other branches are skipped."""
    jobs: list[_Job] = []
    for b in list_branches(repo_id, settings):
        if b.parsed is None or (wanted is not None and b.parsed.step not in wanted):
            continue
        run = partial(
            _analyze_hub,
            repo_id,
            b.name,
            revision=b.commit,
            include_optimizer=include_optimizer,
            include_config=include_config,
            include_weights=include_weights,
            delete_weights_after=delete_weights_after,
            delete_optimizer_after=delete_optimizer_after,
            endpoint=settings.endpoint,
            cache_dir=settings.cache_dir,
            token=settings.token,
        )
        jobs.append(_Job(branch=b.name, step=b.parsed.step, revision=b.commit, run=run))
    return jobs


def _guarded(job: _Job, progress: AnalysisProgress, source: str | Path, local: bool) -> CheckpointAnalysis:
    start = time.perf_counter()
    try:
        return job.run(progress=progress)
    except Exception as exc:  # a failed checkpoint is a record in the results, never an abort of the run
        return failed_analysis(
            source, job.branch, exc, local=local, revision=job.revision, elapsed_s=time.perf_counter() - start
        )


def _analyze_hub(repo_id: str, branch: str, **kwargs: Any) -> CheckpointAnalysis:
    _, analysis = process_single_checkpoint(repo_id, branch, **kwargs)
    return analysis


def _analyze_local(
    checkpoint: LocalCheckpoint,
    *,
    include_optimizer: bool,
    include_config: bool,
    include_weights: bool,
    verify: bool,
    progress: AnalysisProgress,
) -> CheckpointAnalysis:
    # A local checkpoint downloads nothing, so it has nothing to report to ``progress``.
    return analyze_local_checkpoint(
        checkpoint,
        include_optimizer=include_optimizer,
        include_config=include_config,
        include_weights=include_weights,
        verify=verify,
    )


def _order(a: CheckpointAnalysis) -> tuple[bool, int, str]:
    return (a.step is None, a.step if a.step is not None else 0, a.branch)
