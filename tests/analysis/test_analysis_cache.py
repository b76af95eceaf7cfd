"""delete_weights_after=True removes what an analysis downloaded, and never what the cache still needs.

The Hugging Face cache stores identical files once: ``snapshots/<commit>/<file>`` links to
``blobs/<sha256>``, shared by every revision with that content. These tests fill a real cache through
the real huggingface_hub client and the test Hub.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import load, save

from weightslab.analysis import analyze_complete_checkpoint, process_all_checkpoints
from weightslab.analysis.cache import DownloadRegistry

from ..hubserver import HubServer

SHARD_1 = "model-00001-of-00002.safetensors"
SHARD_2 = "model-00002-of-00002.safetensors"


def _weights(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "layers.0.weight": torch.randn(6, 5, generator=gen),
        "layers.0.bias": torch.randn(6, generator=gen),
    }


def _blob(cache: Path, repo_id: str, data: bytes) -> Path:
    folder = "models--" + repo_id.replace("/", "--")
    return cache / folder / "blobs" / hashlib.sha256(data).hexdigest()


def test_a_blob_another_revision_shares_is_kept_and_an_unshared_one_deleted(
    hub: HubServer, tmp_path: Path
) -> None:
    repo = "cache-test/shared-shard"
    shared, main_only, branch_only = save(_weights(1)), save(_weights(2)), save(_weights(3))
    hub.commit(repo, "main", {SHARD_1: shared, SHARD_2: main_only})
    commit = hub.commit(repo, "step10", {SHARD_1: shared, SHARD_2: branch_only, "config.json": b"{}"})
    cache = tmp_path / "cache"
    main_shard = Path(hf_hub_download(repo, SHARD_1, endpoint=hub.endpoint, cache_dir=cache))

    a = analyze_complete_checkpoint(
        repo,
        "step10",
        include_weights=True,
        delete_weights_after=True,
        endpoint=hub.endpoint,
        cache_dir=cache,
    )
    assert a.ok and a.weights is not None and a.weights.total_parameters == 2 * (6 * 5 + 6)

    # main's cached shard still reads, through its own link, as the tensors it holds
    assert main_shard.is_symlink() and main_shard.resolve() == _blob(cache, repo, shared)
    assert main_shard.read_bytes() == shared
    assert torch.equal(load(main_shard.read_bytes())["layers.0.weight"], _weights(1)["layers.0.weight"])
    # step10's links are gone, and so is the blob no one else used
    step10 = cache / "models--cache-test--shared-shard" / "snapshots" / commit
    assert sorted(p.name for p in step10.rglob("*")) == ["config.json"]
    assert not _blob(cache, repo, branch_only).exists()


def test_branches_sharing_a_shard_analysed_together_leave_nothing_behind(
    hub: HubServer, tmp_path: Path
) -> None:
    repo = "cache-test/parallel"
    shared = save(_weights(4))
    for step in (10, 20, 30):
        hub.commit(repo, f"step{step}", {SHARD_1: shared, SHARD_2: save(_weights(step))})
    cache = tmp_path / "cache"

    analyses = process_all_checkpoints(
        repo, 3, include_weights=True, delete_weights_after=True, endpoint=hub.endpoint, cache_dir=cache
    )
    assert [a.ok and a.weights is not None for a in analyses.values()] == [True, True, True]
    links = [p for p in cache.rglob("*.safetensors")]
    blobs = [p for p in cache.rglob("blobs/*") if p.is_file()]
    assert (links, blobs) == ([], [])  # the shared blob went with the last link to it


def test_registry_removes_a_file_only_after_its_last_user_and_never_one_kept(tmp_path: Path) -> None:
    blobs = tmp_path / "models--o--r" / "blobs"
    blobs.mkdir(parents=True)
    blob = blobs / "aa"
    blob.write_bytes(b"weights")
    links = []
    for commit in ("c1", "c2"):
        link = tmp_path / "models--o--r" / "snapshots" / commit / "w.safetensors"
        link.parent.mkdir(parents=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
        links.append(link)
    registry = DownloadRegistry()

    registry.acquire(links[0], fresh=True)  # one analysis downloaded it ...
    registry.acquire(links[0], fresh=False)  # ... a second one found it there and uses it too
    registry.release(links[0], remove=True)
    assert links[0].exists()  # the second is still reading it
    registry.release(links[0], remove=True)
    assert not links[0].is_symlink() and blob.exists()  # c2 still links to the blob

    registry.acquire(links[1], fresh=True)
    registry.acquire(links[1], fresh=False)
    registry.release(links[1], remove=False)  # one user asked to keep it: it stays
    registry.release(links[1], remove=True)
    assert links[1].read_bytes() == b"weights"

    registry.acquire(links[1], fresh=True)
    with registry.downloading(tmp_path / "models--o--r"):
        registry.release(links[1], remove=True)
        # a download into the repository is running and may link to the blob: it waits
        assert not links[1].is_symlink() and blob.exists()
    assert not blob.exists()  # looked at again when the download ended: nothing links to it


def test_a_local_dir_download_is_a_plain_file_and_is_removed(hub: HubServer, tmp_path: Path) -> None:
    repo = "cache-test/local-dir"
    buf = io.BytesIO(save(_weights(5)))
    hub.commit(repo, "step1", {"model.safetensors": buf.getvalue()})
    a = analyze_complete_checkpoint(
        repo, "step1", include_weights=True, delete_weights_after=True, local_dir=tmp_path / "here",
        endpoint=hub.endpoint, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    assert a.weights is not None and not (tmp_path / "here" / "model.safetensors").exists()
