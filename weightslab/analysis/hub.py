"""The Hugging Face Hub side: listing a repository's checkpoint branches and downloading their files.

Every function takes ``endpoint``, ``cache_dir`` and ``token``; left out, they come from the standard
environment (``HF_ENDPOINT``, ``HF_HUB_CACHE``, ``HF_TOKEN``) as ``huggingface_hub`` reads it. Downloads are
revision-safe: a branch is resolved to its commit once, and files are fetched by that commit's sha, so a
branch that moves during an analysis cannot mix files of two commits.
"""

from __future__ import annotations

import inspect
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import HfApi, constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.hf_api import RepoFile

if TYPE_CHECKING:  # typed where they are defined; huggingface_hub.utils re-exports them in every version
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
else:  # huggingface_hub < 0.25 has no huggingface_hub.errors for all of them
    from huggingface_hub.utils import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

from weightslab.analysis.branches import BranchName, parse_branch_name
from weightslab.analysis.cache import DOWNLOADS
from weightslab.analysis.progress import AnalysisProgress
from weightslab.errors import AnalysisSourceError, CheckpointNotFoundError, HubUnavailableError

OPTIMIZER_FILE = "training/optim.pt"
"""Where DataDecide/OLMo training repositories keep the optimizer state of a checkpoint branch."""

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_SUPPORTS_TQDM_CLASS = "tqdm_class" in inspect.signature(hf_hub_download).parameters


@dataclass(frozen=True, kw_only=True)
class HubSettings:
    """Where the Hub is and where downloads go."""

    endpoint: str
    cache_dir: Path
    token: str | bool | None = None


def hub_settings(
    endpoint: str | None = None, cache_dir: str | Path | None = None, token: str | bool | None = None
) -> HubSettings:
    """Settings from the arguments, falling back to ``HF_ENDPOINT`` / ``HF_HUB_CACHE`` read now."""
    resolved_endpoint = endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    resolved_cache = cache_dir or os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    return HubSettings(
        endpoint=resolved_endpoint.rstrip("/"), cache_dir=Path(resolved_cache).expanduser(), token=token
    )


@dataclass(frozen=True, kw_only=True)
class HubBranch:
    """One branch of a repository, the commit it points to, and its parsed checkpoint name (if it is one)."""

    name: str
    commit: str
    parsed: BranchName | None


def _api(settings: HubSettings) -> HfApi:
    return HfApi(endpoint=settings.endpoint, token=settings.token)


def list_branches(repo_id: str, settings: HubSettings) -> list[HubBranch]:
    """Every branch of ``repo_id`` with its commit.

    Raises:
        AnalysisSourceError: the repository does not exist (or is private) or the id is malformed.
        HubUnavailableError: the Hub could not be reached.
    """
    try:
        refs = _api(settings).list_repo_refs(repo_id)
    except (RepositoryNotFoundError, HFValidationError) as exc:
        raise AnalysisSourceError(_not_found_message(repo_id, settings)) from exc
    except Exception as exc:  # connection errors differ between huggingface_hub versions (requests/httpx)
        raise HubUnavailableError(
            f"{repo_id!r} is not a local directory, and listing it as a repository at {settings.endpoint} "
            f"failed ({type(exc).__name__}: {exc}); check the path, or the network and HF_ENDPOINT"
        ) from exc
    return [
        HubBranch(name=b.name, commit=b.target_commit, parsed=parse_branch_name(b.name))
        for b in refs.branches
    ]


def _not_found_message(repo_id: str, settings: HubSettings) -> str:
    return (
        f"{repo_id!r} is neither a local directory nor a repository at {settings.endpoint}; check the path "
        "or the repo id (namespace/name), and for a private repository pass token= or log in with "
        "`hf auth login`"
    )


def resolve_revision(repo_id: str, branch: str, settings: HubSettings) -> str:
    """The commit sha ``branch`` (a branch, a tag, or already a sha) points to.

    Raises:
        CheckpointNotFoundError: the repository or the branch does not exist.
    """
    if _COMMIT_RE.match(branch):
        return branch
    try:
        refs = _api(settings).list_repo_refs(repo_id)
    except (RepositoryNotFoundError, HFValidationError) as exc:
        raise AnalysisSourceError(_not_found_message(repo_id, settings)) from exc
    for ref in [*refs.branches, *refs.tags]:
        if ref.name == branch:
            return ref.target_commit
    names = sorted(b.name for b in refs.branches)
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    raise CheckpointNotFoundError(
        f"{repo_id} has no branch or tag {branch!r}; it has {len(names)} branches ({shown})"
    )


def list_files(repo_id: str, commit: str, settings: HubSettings) -> dict[str, int]:
    """Every file of ``repo_id`` at ``commit``, with its size in bytes."""
    tree = _api(settings).list_repo_tree(repo_id, recursive=True, revision=commit)
    return {entry.path: int(entry.size or 0) for entry in tree if isinstance(entry, RepoFile)}


@dataclass(frozen=True, kw_only=True)
class DownloadedFile:
    """A file fetched from the Hub; ``fresh`` when this call put it on disk (it was not there before)."""

    repo_file: str
    path: Path
    fresh: bool


def download_file(
    repo_id: str,
    filename: str,
    commit: str,
    settings: HubSettings,
    *,
    local_dir: str | Path | None = None,
    progress: AnalysisProgress | None = None,
) -> DownloadedFile:
    """Download ``filename`` of ``repo_id`` at ``commit`` into the cache (or ``local_dir``).

    Every file it returns must be handed back once used, to :func:`remove_download` or
    :func:`keep_download`: that is how a file two analyses share is removed only after both.

    Raises whatever ``hf_hub_download`` raises (``EntryNotFoundError`` for a missing file, ...).
    """
    if local_dir is not None:
        existed = (Path(local_dir) / filename).is_file()
    else:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=settings.cache_dir, revision=commit)
        existed = isinstance(cached, str)
    kwargs: dict[str, Any] = {}
    if progress is not None and _SUPPORTS_TQDM_CLASS:
        kwargs["tqdm_class"] = progress.download_bar_class()
    repo_folder = settings.cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model")
    with DOWNLOADS.downloading(repo_folder):
        path = Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=commit,
                endpoint=settings.endpoint,
                cache_dir=settings.cache_dir,
                local_dir=local_dir,
                token=settings.token,
                **kwargs,
            )
        )
        # Counted before the download is marked done, so a removal cannot take the blob in between.
        DOWNLOADS.acquire(path, fresh=not existed)
    return DownloadedFile(repo_file=filename, path=path, fresh=not existed)


def remove_download(file: DownloadedFile) -> None:
    """Hand back a file from :func:`download_file` and delete it if this process downloaded it.

    Nothing that was on disk before goes: a file already cached stays, and a blob that another
    snapshot (another revision with the same content) links to stays (see :mod:`weightslab.analysis.cache`).
    """
    DOWNLOADS.release(file.path, remove=True)


def keep_download(file: DownloadedFile) -> None:
    """Hand back a file from :func:`download_file` and keep it on disk."""
    DOWNLOADS.release(file.path, remove=False)


def download_optimizer_checkpoint(
    repo_id: str,
    branch: str = "main",
    local_dir: str | Path | None = None,
    *,
    filename: str = OPTIMIZER_FILE,
    revision: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    progress: AnalysisProgress | None = None,
) -> tuple[str | None, bool, str]:
    """Download the optimizer state (``training/optim.pt``) of one checkpoint branch.

    Returns ``(file_path, True, "")`` on success and ``(None, False, message)`` when the repository,
    the branch or the file does not exist or the download fails: a branch without optimizer state is
    an expected case, not an exception. The file stays on disk (in the cache, or under ``local_dir``).
    The Hub endpoint is ``endpoint=``, else ``$HF_ENDPOINT``.

    Args:
        local_dir: put the file under this directory instead of the Hugging Face cache.
        filename: the file's path in the repository.
        revision: the commit ``branch`` points to, when already known (skips resolving it again).
        progress: the display to report the download to; a new one (quiet outside a terminal) if omitted.
    """
    settings = hub_settings(endpoint, cache_dir, token)
    try:
        commit = revision or resolve_revision(repo_id, branch, settings)
        with nullcontext(progress) if progress is not None else AnalysisProgress() as shown:
            downloaded = download_file(
                repo_id, filename, commit, settings, local_dir=local_dir, progress=shown
            )
    except Exception as exc:  # errors become data here by contract; network errors differ by hub version
        return None, False, _download_failure(exc, repo_id, branch, filename, settings)
    keep_download(downloaded)
    return str(downloaded.path), True, ""


def _download_failure(exc: Exception, repo_id: str, branch: str, filename: str, settings: HubSettings) -> str:
    """What :func:`download_optimizer_checkpoint` says when the download raised ``exc``."""
    where = f"{repo_id}@{branch}"
    if isinstance(exc, CheckpointNotFoundError):
        return str(exc)
    if isinstance(exc, RevisionNotFoundError):
        return f"{where}: the branch or commit does not exist; list the branches with list_branches"
    if isinstance(exc, RepositoryNotFoundError):
        return _not_found_message(repo_id, settings)
    if isinstance(exc, LocalEntryNotFoundError):
        return f"{where}: {filename} could not be downloaded from {settings.endpoint} ({exc})"
    if isinstance(exc, EntryNotFoundError):
        return (
            f"{where} has no {filename}: this checkpoint does not keep its optimizer state; "
            "choose a branch that does"
        )
    return f"{where}: downloading {filename} failed ({type(exc).__name__}: {exc})"
