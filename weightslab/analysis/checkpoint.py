"""The complete analysis of one checkpoint: optimizer state, configuration and (optionally) weights.

:func:`analyze_complete_checkpoint` works on one Hub branch; :func:`process_single_checkpoint` takes a Hub
repo id or a local root and never raises for a failed checkpoint: it returns the failure as data.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from weightslab.analysis.branches import parse_branch_name
from weightslab.analysis.config import analyze_config
from weightslab.analysis.hub import (
    OPTIMIZER_FILE,
    DownloadedFile,
    download_file,
    hub_settings,
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
from weightslab.analysis.progress import AnalysisProgress
from weightslab.analysis.weights import analyze_weight_files, select_weight_files

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


def analyze_complete_checkpoint(
    repo_id: str,
    branch: str = "main",
    *,
    revision: str | None = None,
    include_optimizer: bool = True,
    include_config: bool = True,
    include_weights: bool = False,
    delete_weights_after: bool = True,
    delete_optimizer_after: bool = False,
    local_dir: str | Path | None = None,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    progress: AnalysisProgress | None = None,
) -> CheckpointAnalysis:
    """Analyse one checkpoint branch of a Hub repository.

    The branch is resolved to its commit once (or ``revision`` is used as that commit) and every file is
    fetched by the commit's sha. A part that fails (a damaged optimizer file, a bad config) is recorded in
    the result's ``errors`` and the other parts are still analysed.

    Args:
        include_weights: also download and analyse the weights (``*.safetensors``, else
            ``pytorch_model*.bin``).
        delete_weights_after: remove the weight files this call downloaded once they are analysed
            (files that were already in the cache stay).
        delete_optimizer_after: the same for the optimizer file.
        local_dir: download under this directory instead of the Hugging Face cache.
        progress: the display downloads report to.

    Raises:
        CheckpointNotFoundError: the repository or the branch does not exist.
    """
    start = time.perf_counter()
    settings = hub_settings(endpoint, cache_dir, token)
    commit = revision or resolve_revision(repo_id, branch, settings)
    parsed = parse_branch_name(branch)
    components = classify_files(list_files(repo_id, commit, settings))

    def fetch(filename: str) -> DownloadedFile:
        return download_file(repo_id, filename, commit, settings, local_dir=local_dir, progress=progress)

    errors: list[str] = []
    optimizer: OptimizerAnalysis | None = None
    config: ConfigAnalysis | None = None
    weights: WeightsAnalysis | None = None
    if include_optimizer and components.optimizer_file is not None:
        downloaded: list[DownloadedFile] = []
        try:
            downloaded.append(fetch(components.optimizer_file))
            optimizer = analyze_optimizer_checkpoint(downloaded[0].path)
        except Exception as exc:  # one failed part is recorded; the others are still analysed
            errors.append(f"optimizer ({components.optimizer_file}): {type(exc).__name__}: {exc}")
        finally:
            if delete_optimizer_after:
                for d in downloaded:
                    remove_download(d)
    if include_config and components.config_file is not None:
        try:
            config = analyze_config(fetch(components.config_file).path)
        except Exception as exc:
            errors.append(f"config ({components.config_file}): {type(exc).__name__}: {exc}")
    if include_weights and components.weight_files:
        weight_downloads: list[DownloadedFile] = []
        try:
            for f in components.weight_files:
                weight_downloads.append(fetch(f))
            weights = analyze_weight_files([d.path for d in weight_downloads])
        except Exception as exc:
            errors.append(f"weights: {type(exc).__name__}: {exc}")
        finally:
            if delete_weights_after:
                for d in weight_downloads:
                    remove_download(d)
    return CheckpointAnalysis(
        source=repo_id,
        source_kind="hub",
        branch=branch,
        revision=commit,
        step=parsed.step if parsed else None,
        tokens=parsed.tokens if parsed else None,
        tokens_label=parsed.tokens_label if parsed else None,
        seed=parsed.seed if parsed else None,
        components=components,
        optimizer=optimizer,
        config=config,
        weights=weights,
        errors=tuple(errors),
        elapsed_s=time.perf_counter() - start,
    )


def process_single_checkpoint(
    source: str | Path,
    branch: str,
    *,
    revision: str | None = None,
    include_optimizer: bool = True,
    include_config: bool = True,
    include_weights: bool = False,
    delete_weights_after: bool = True,
    delete_optimizer_after: bool = False,
    verify: bool = True,
    local_dir: str | Path | None = None,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    progress: AnalysisProgress | None = None,
) -> CheckpointAnalysis:
    """Analyse one checkpoint of a Hub repo id or a local root; never raises for a failed checkpoint.

    ``source`` is a local root when it is an existing directory, else a repo id. For a local root,
    ``branch`` is a name from :func:`~weightslab.analysis.local.list_local_checkpoints`
    (``<hash prefix>-step<step>``). Any failure (missing branch, damaged file, network) is returned as a
    :class:`CheckpointAnalysis` whose ``errors`` say what happened. ``verify`` checks a local step file
    against its manifest checksum first; the other arguments are those of :func:`analyze_complete_checkpoint`.
    """
    start = time.perf_counter()
    local = is_local_source(source)
    try:
        if local:
            return analyze_local_checkpoint(
                find_local_checkpoint(source, branch),
                include_optimizer=include_optimizer,
                include_config=include_config,
                include_weights=include_weights,
                verify=verify,
            )
        return analyze_complete_checkpoint(
            str(source),
            branch,
            revision=revision,
            include_optimizer=include_optimizer,
            include_config=include_config,
            include_weights=include_weights,
            delete_weights_after=delete_weights_after,
            delete_optimizer_after=delete_optimizer_after,
            local_dir=local_dir,
            endpoint=endpoint,
            cache_dir=cache_dir,
            token=token,
            progress=progress,
        )
    except Exception as exc:  # a failed checkpoint is a record in the results, never an abort of the run
        return failed_analysis(
            source, branch, exc, local=local, revision=revision, elapsed_s=time.perf_counter() - start
        )


def failed_analysis(
    source: str | Path,
    branch: str,
    error: BaseException | str,
    *,
    local: bool,
    revision: str | None = None,
    elapsed_s: float = 0.0,
) -> CheckpointAnalysis:
    """The record of a checkpoint that could not be analysed at all."""
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
        errors=(message,),
        elapsed_s=elapsed_s,
    )
