"""The complete analysis of one checkpoint: optimizer state, configuration and (optionally) weights.

:func:`analyze_complete_checkpoint` works on one Hub branch; :func:`process_single_checkpoint` takes a Hub
repo id or a local root and never raises for a failed checkpoint: it returns ``(branch, analysis)`` with
the failure as data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from weightslab.analysis.branches import parse_branch_name
from weightslab.analysis.config import analyze_config
from weightslab.analysis.hub import (
    OPTIMIZER_FILE,
    DownloadedFile,
    download_file,
    hub_settings,
    keep_download,
    list_files,
    remove_download,
    resolve_revision,
)
from weightslab.analysis.local import analyze_local_checkpoint, find_local_checkpoint, is_local_source
from weightslab.analysis.models import (
    CheckpointAnalysis,
    CheckpointComponents,
    ConfigAnalysis,
    OptimizerAnalysis,
    WeightsAnalysis,
)
from weightslab.analysis.optimizer import analyze_optimizer_checkpoint
from weightslab.analysis.parts import analyze_part
from weightslab.analysis.progress import AnalysisProgress
from weightslab.analysis.weights import analyze_weight_files, select_weight_files
from weightslab.errors import CheckpointNotFoundError, ConfigError

CONFIG_FILE = "config.json"
OPTIMIZER_FILES = (OPTIMIZER_FILE, "optim.pt", "optimizer.pt", "training/optimizer.pt")
"""Where an optimizer state is looked for in a branch, first match wins."""


def classify_files(files: Mapping[str, int]) -> CheckpointComponents:
    """Sort a branch's files (path -> size) into optimizer state, configuration and weights."""
    optimizer = next((f for f in OPTIMIZER_FILES if f in files), None)
    return CheckpointComponents(
        files=tuple(sorted(files)),
        optimizer_file=optimizer,
        config_file=CONFIG_FILE if CONFIG_FILE in files else None,
        weight_files=tuple(select_weight_files(files)),
        total_bytes=sum(files.values()),
    )


# Over 60 lines for its public signature and docstring (every option documented); the body is ~45.
def analyze_complete_checkpoint(
    repo_id: str,
    branch: str = "main",
    include_weights: bool = False,
    weight_files: Sequence[str] | None = None,
    delete_weights_after: bool = False,
    *,
    revision: str | None = None,
    include_optimizer: bool = True,
    include_config: bool = True,
    delete_optimizer_after: bool = False,
    local_dir: str | Path | None = None,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    progress: AnalysisProgress | None = None,
) -> CheckpointAnalysis:
    """Analyse one checkpoint branch of a Hub repository: optimizer state, ``config.json``, and weights.

    The branch is resolved to its commit once (or ``revision`` is used as that commit) and every file is
    fetched by the commit's sha. A part that fails (a damaged optimizer file, a bad config) is recorded in
    the result's ``errors`` and in that part's ``error``, and the other parts are still analysed. The Hub
    is ``endpoint``, else ``$HF_ENDPOINT``; downloads go to ``cache_dir``, else ``$HF_HUB_CACHE``.

    Args:
        include_weights: also download and analyse the weights.
        weight_files: which weight files to analyse, as paths in the branch
            (``["model-00001-of-00002.safetensors"]``); by default every ``*.safetensors``, else every
            ``pytorch_model*.bin``. Needs ``include_weights``.
        delete_weights_after: remove the weight files this call downloaded once they are analysed.
            Files that were already in the cache stay, and so does the content of a file that another
            cached revision shares (the cache stores identical files once).
        delete_optimizer_after: the same for the optimizer file.
        local_dir: download under this directory instead of the Hugging Face cache.
        progress: the display downloads report to.

    Raises:
        CheckpointNotFoundError: the repository or the branch does not exist.
        ConfigError: ``weight_files`` is a single str, or is given without ``include_weights``.
    """
    _check_weight_files(weight_files, include_weights)
    start = time.perf_counter()
    settings = hub_settings(endpoint, cache_dir, token)
    commit = revision or resolve_revision(repo_id, branch, settings)
    parsed = parse_branch_name(branch)
    files = list_files(repo_id, commit, settings)
    listing = classify_files(files)

    def fetch(filename: str) -> DownloadedFile:
        return download_file(repo_id, filename, commit, settings, local_dir=local_dir, progress=progress)

    errors: list[str] = []
    optimizer = OptimizerAnalysis()
    config = ConfigAnalysis()
    weights = WeightsAnalysis()
    if include_optimizer and (optimizer_file := listing.optimizer_file) is not None:
        optimizer = analyze_part(
            errors,
            f"optimizer ({optimizer_file})",
            OptimizerAnalysis,
            lambda: _analyze_downloads(
                [optimizer_file],
                fetch,
                lambda paths: analyze_optimizer_checkpoint(paths[0]),
                remove=delete_optimizer_after,
            ),
        )
    if include_config and (config_file := listing.config_file) is not None:
        config = analyze_part(
            errors,
            f"config ({config_file})",
            ConfigAnalysis,
            lambda: _analyze_downloads(
                [config_file], fetch, lambda paths: analyze_config(paths[0]), remove=False
            ),
        )
    selected = listing.weight_files if weight_files is None else tuple(weight_files)
    if include_weights and selected:

        def analyze_weights() -> WeightsAnalysis:
            missing = [f for f in selected if f not in files]
            if missing:
                raise CheckpointNotFoundError(
                    f"{repo_id}@{branch} has no file {missing[0]!r}; its weight files are "
                    f"{list(listing.weight_files)}: pass names from those as weight_files"
                )
            return _analyze_downloads(selected, fetch, analyze_weight_files, remove=delete_weights_after)

        weights = analyze_part(errors, "weights", WeightsAnalysis, analyze_weights)
    return CheckpointAnalysis(
        source=repo_id,
        source_kind="hub",
        branch=branch,
        revision=commit,
        step=parsed.step if parsed else None,
        tokens=parsed.tokens if parsed else None,
        tokens_label=parsed.tokens_label if parsed else None,
        seed=parsed.seed if parsed else None,
        components=replace(listing, optimizer=optimizer, config=config, weights=weights),
        errors=tuple(errors),
        elapsed_s=time.perf_counter() - start,
    )


_T = TypeVar("_T")


def _check_weight_files(weight_files: Sequence[str] | None, include_weights: bool) -> None:
    """``weight_files`` is a list of names, given only with ``include_weights``; else a ConfigError."""
    if weight_files is None:
        return
    if isinstance(weight_files, str):
        raise ConfigError(
            f"weight_files must be a list of file names, got the str {weight_files!r}; pass [{weight_files!r}]"
        )
    if not include_weights:
        raise ConfigError(
            f"weight_files={list(weight_files)!r} was given but include_weights is False; "
            "pass include_weights=True to analyse those files"
        )


def _analyze_downloads(
    filenames: Sequence[str],
    fetch: Callable[[str], DownloadedFile],
    analyze: Callable[[list[Path]], _T],
    *,
    remove: bool,
) -> _T:
    """Download ``filenames``, analyse them together, and hand every download back (removed or kept)."""
    downloaded: list[DownloadedFile] = []
    try:
        for f in filenames:
            downloaded.append(fetch(f))
        return analyze([d.path for d in downloaded])
    finally:
        for d in downloaded:
            if remove:
                remove_download(d)
            else:
                keep_download(d)


def process_single_checkpoint(
    repo_id: str | Path,
    branch: str,
    include_weights: bool = False,
    delete_weights_after: bool = False,
    *,
    revision: str | None = None,
    include_optimizer: bool = True,
    include_config: bool = True,
    delete_optimizer_after: bool = False,
    verify: bool = True,
    local_dir: str | Path | None = None,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    progress: AnalysisProgress | None = None,
) -> tuple[str, CheckpointAnalysis]:
    """Analyse one checkpoint of a Hub repo id or a local root; returns ``(branch, analysis)``, never raises.

    ``repo_id`` is a local weightslab root when it is an existing directory, else a Hub repo id (the
    Hub is ``endpoint``, else ``$HF_ENDPOINT``). For a local root, ``branch`` is a name from
    :func:`~weightslab.analysis.local.list_local_checkpoints` (``<hash prefix>-step<step>``). Any failure
    (missing branch, damaged file, network) is returned as a :class:`CheckpointAnalysis` whose ``errors``
    say what happened. ``verify`` checks a local step file against its manifest checksum first; the
    other arguments are those of :func:`analyze_complete_checkpoint`.
    """
    start = time.perf_counter()
    local = is_local_source(repo_id)
    try:
        if local:
            analysis = analyze_local_checkpoint(
                find_local_checkpoint(repo_id, branch),
                include_optimizer=include_optimizer,
                include_config=include_config,
                include_weights=include_weights,
                verify=verify,
            )
        else:
            analysis = analyze_complete_checkpoint(
                str(repo_id),
                branch,
                include_weights,
                delete_weights_after=delete_weights_after,
                revision=revision,
                include_optimizer=include_optimizer,
                include_config=include_config,
                delete_optimizer_after=delete_optimizer_after,
                local_dir=local_dir,
                endpoint=endpoint,
                cache_dir=cache_dir,
                token=token,
                progress=progress,
            )
    except Exception as exc:  # a failed checkpoint is a record in the results, never an abort of the run
        analysis = failed_analysis(
            repo_id, branch, exc, local=local, revision=revision, elapsed_s=time.perf_counter() - start
        )
    return branch, analysis


def failed_analysis(
    source: str | Path,
    branch: str,
    error: BaseException | str,
    *,
    local: bool,
    revision: str | None = None,
    elapsed_s: float = 0.0,
) -> CheckpointAnalysis:
    """The record of a checkpoint that could not be analysed at all: every part unavailable, with the error."""
    parsed = parse_branch_name(branch)
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return CheckpointAnalysis(
        source=str(source),
        source_kind="local" if local else "hub",
        branch=branch,
        revision=revision,
        step=parsed.step if parsed else None,
        tokens=parsed.tokens if parsed else None,
        tokens_label=parsed.tokens_label if parsed else None,
        seed=parsed.seed if parsed else None,
        components=CheckpointComponents(
            optimizer=OptimizerAnalysis(error=message),
            config=ConfigAnalysis(error=message),
            weights=WeightsAnalysis(error=message),
        ),
        errors=(message,),
        elapsed_s=elapsed_s,
    )
