"""The test Hub answers the real huggingface_hub client the way the Hub does (test infrastructure checks)."""

from __future__ import annotations

import http.client
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from ..hubserver import HubServer


def _request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
    return conn.getresponse()


@pytest.fixture(scope="module")
def small_repo(hub_server: HubServer) -> tuple[str, str]:
    sha = hub_server.commit(
        "infra/small",
        "step1",
        {"a.txt": b"0123456789", "weights/model.safetensors": bytes(range(256)) * 4, "b/c/d.json": b"{}"},
    )
    return "infra/small", sha


def test_small_files_resolve_with_etag_and_commit(hub_server: HubServer, small_repo: tuple[str, str]) -> None:
    repo, sha = small_repo
    r = _request(f"{hub_server.endpoint}/{repo}/resolve/step1/a.txt", "HEAD")
    assert r.status == 200
    assert r.getheader("X-Repo-Commit") == sha
    assert r.getheader("ETag", "").strip('"') and r.getheader("Content-Length") == "10"


def test_large_files_redirect_to_the_cdn_and_honour_ranges(
    hub_server: HubServer, small_repo: tuple[str, str]
) -> None:
    repo, sha = small_repo
    head = _request(f"{hub_server.endpoint}/{repo}/resolve/{sha}/weights/model.safetensors", "HEAD")
    assert head.status == 302
    assert head.getheader("X-Linked-Size") == "1024" and head.getheader("X-Repo-Commit") == sha
    location = head.getheader("Location", "")
    assert location.startswith(hub_server.cdn_endpoint)

    part = _request(location, headers={"Range": "bytes=10-19"})
    assert part.status == 206 and part.getheader("Content-Range") == "bytes 10-19/1024"
    assert part.read() == bytes(range(10, 20))
    tail = _request(location, headers={"Range": "bytes=1020-"})
    assert tail.status == 206 and tail.read() == bytes(range(252, 256))
    suffix = _request(location, headers={"Range": "bytes=-2"})
    assert suffix.read() == bytes([254, 255])
    beyond = _request(location, headers={"Range": "bytes=5000-"})
    assert beyond.status == 416 and beyond.getheader("Content-Range") == "bytes */1024"


def test_client_errors_map_to_the_hub_error_types(
    hub_server: HubServer, small_repo: tuple[str, str], tmp_path: Path
) -> None:
    repo, sha = small_repo
    api = HfApi(endpoint=hub_server.endpoint)
    with pytest.raises(RepositoryNotFoundError):
        api.list_repo_refs("infra/absent")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("infra/absent", "a.txt", endpoint=hub_server.endpoint, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, "a.txt", revision="step2", endpoint=hub_server.endpoint, cache_dir=tmp_path)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo, "missing.txt", revision=sha, endpoint=hub_server.endpoint, cache_dir=tmp_path)
    # The absence is cached under the commit the 404 named, as the client does with the real Hub.
    assert (tmp_path / "models--infra--small" / ".no_exist" / sha / "missing.txt").is_file()


def test_downloads_and_paginated_listing_with_the_real_client(
    hub_server: HubServer, small_repo: tuple[str, str], tmp_path: Path
) -> None:
    repo, sha = small_repo
    hub_server.clear_requests()
    api = HfApi(endpoint=hub_server.endpoint)
    assert sorted(api.list_repo_files(repo, revision=sha)) == [
        "a.txt",
        "b/c/d.json",
        "weights/model.safetensors",
    ]
    top = {e.path for e in api.list_repo_tree(repo, revision=sha)}
    assert top == {"a.txt", "b", "weights"}
    pages = [r for r in hub_server.requests if "/tree/" in r.path]
    assert len(pages) >= 3 and any(
        "cursor=" in r.path for r in pages
    )  # page_size=3: the client followed Link

    path = hf_hub_download(repo, "weights/model.safetensors", revision=sha, endpoint=hub_server.endpoint,
                           cache_dir=tmp_path)  # fmt: skip
    assert Path(path).read_bytes() == bytes(range(256)) * 4
    assert any(r.server == "cdn" and r.method == "GET" for r in hub_server.requests)
    assert not any("xet" in k.lower() for r in hub_server.requests for k in r.headers)
