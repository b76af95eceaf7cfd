"""A Hugging Face Hub-compatible HTTP server for tests, on 127.0.0.1, standard library only.

It serves what ``huggingface_hub``'s real client asks for (checked against huggingface_hub 2.4):

- ``GET /api/models/{repo}/refs``: branches with their target commits.
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=&cursor=``: the file listing, paginated with a
  ``Link: <...>; rel="next"`` header like the Hub.
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: a small ("git") file answers 200 with ``ETag`` (its git blob
  sha1), ``X-Repo-Commit`` and ``Content-Length``; a large ("LFS") file answers 302 with ``Location`` on a
  second origin (the "CDN", another port), ``X-Linked-Etag`` (its sha256), ``X-Linked-Size`` and
  ``X-Repo-Commit``.
- ``GET|HEAD {cdn}/lfs/{sha256}``: the bytes, honouring ``Range`` (206 + ``Content-Range``, 416).
- Errors as 404 with ``X-Error-Code``: ``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound`` (the last
  with ``X-Repo-Commit``, which the client uses to cache the absence).

No Xet headers are ever sent, so the client downloads over plain HTTP. Every request is recorded in
:attr:`HubServer.requests`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".pt", ".bin", ".safetensors", ".pth", ".ckpt")
LFS_MIN_BYTES = 10 * 1024 * 1024
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class StoredFile:
    path: str
    data: Path
    size: int
    git_sha1: str
    sha256: str | None
    """Set for LFS files (served through the CDN)."""


@dataclass
class Commit:
    sha: str
    files: dict[str, StoredFile]


@dataclass
class Repo:
    repo_id: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedRequest:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client closing an idle keep-alive connection is normal, not an error worth a traceback.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """Repositories in a folder, served by a Hub and a CDN origin on 127.0.0.1 (ports chosen by the OS)."""

    def __init__(self, storage: Path, *, page_size: int = 1000) -> None:
        self.storage = Path(storage)
        self.storage.mkdir(parents=True, exist_ok=True)
        self.page_size = page_size
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, Path] = {}
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._hub = _Server(("127.0.0.1", 0), _HubHandler)
        self._cdn = _Server(("127.0.0.1", 0), _CdnHandler)
        for server in (self._hub, self._cdn):
            server.hub = self  # type: ignore[attr-defined]
        self._threads: list[threading.Thread] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn_endpoint(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def start(self) -> HubServer:
        for server in (self._hub, self._cdn):
            t = threading.Thread(target=server.serve_forever, name="hubserver", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- content -----------------------------------------------------------------------------------

    def create_repo(self, repo_id: str) -> Repo:
        with self._lock:
            return self.repos.setdefault(repo_id, Repo(repo_id))

    def commit(self, repo_id: str, branch: str, files: Mapping[str, bytes | Path]) -> str:
        """Point ``branch`` at a new commit holding exactly ``files`` (repo path -> bytes or file to copy)."""
        repo = self.create_repo(repo_id)
        stored: dict[str, StoredFile] = {}
        for repo_path, content in sorted(files.items()):
            data = content if isinstance(content, bytes) else Path(content).read_bytes()
            git_sha1 = _git_blob_sha1(data)
            lfs = repo_path.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_BYTES
            sha256 = hashlib.sha256(data).hexdigest() if lfs else None
            blob = self.storage / "blobs" / (sha256 or git_sha1)
            blob.parent.mkdir(parents=True, exist_ok=True)
            if not blob.exists():
                blob.write_bytes(data)
            stored[repo_path] = StoredFile(repo_path, blob, len(data), git_sha1, sha256)
            if sha256 is not None:
                self.blobs[sha256] = blob
        digest = hashlib.sha1(repo_id.encode() + b"\0" + branch.encode())
        for repo_path, f in stored.items():
            digest.update(f"{repo_path}\0{f.git_sha1}\n".encode())
        sha = digest.hexdigest()
        with self._lock:
            repo.commits[sha] = Commit(sha, stored)
            repo.branches[branch] = sha
        return sha

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def record(self, server: str, method: str, path: str, headers: Mapping[str, str]) -> None:
        with self._lock:
            self.requests.append(RecordedRequest(server, method, path, dict(headers)))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_name_tag = "hub"

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:  # quiet: tests read hub.requests instead
        pass

    def do_GET(self) -> None:
        self.hub.record(self.server_name_tag, "GET", self.path, dict(self.headers.items()))
        self.route(head=False)

    def do_HEAD(self) -> None:
        self.hub.record(self.server_name_tag, "HEAD", self.path, dict(self.headers.items()))
        self.route(head=True)

    def route(self, *, head: bool) -> None:
        raise NotImplementedError

    def send(
        self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None, *, head: bool = False
    ) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def send_json(
        self, payload: object, headers: Mapping[str, str] | None = None, *, head: bool = False
    ) -> None:
        self.send(
            200,
            json.dumps(payload).encode(),
            {"Content-Type": "application/json", **(headers or {})},
            head=head,
        )

    def error(
        self,
        status: int,
        code: str | None,
        message: str,
        extra: Mapping[str, str] | None = None,
        *,
        head: bool = False,
    ) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if code is not None:
            headers["X-Error-Code"] = code
        self.send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def send_file(self, path: Path, size: int, headers: Mapping[str, str], *, head: bool) -> None:
        """The file's bytes, or the part a ``Range`` header asks for."""
        start, end = 0, size - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            m = _RANGE_RE.match(range_header.strip())
            if m is None or (not m[1] and not m[2]):
                self.error(416, None, "invalid range", {"Content-Range": f"bytes */{size}"}, head=head)
                return
            if m[1]:
                start = int(m[1])
                end = min(int(m[2]), size - 1) if m[2] else size - 1
            else:  # "bytes=-N": the last N bytes
                start = max(size - int(m[2]), 0)
            if start >= size or start > end:
                self.error(
                    416, None, "range not satisfiable", {"Content-Range": f"bytes */{size}"}, head=head
                )
                return
            status = 206
        length = end - start + 1 if size else 0
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head or length == 0:
            return
        with path.open("rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)


class _HubHandler(_Handler):
    server_name_tag = "hub"

    def route(self, *, head: bool) -> None:
        url = urlsplit(self.path)
        segments = [unquote(s) for s in url.path.split("/")[1:]]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if segments[:2] == ["api", "models"]:
            repo_id, rest = self._split_repo(segments[2:], ("refs", "tree"))
            if repo_id is None or not rest:
                self.error(404, None, "not found", head=head)
                return
            repo = self.hub.repos.get(repo_id)
            if repo is None:
                self.error(404, "RepoNotFound", f"Repository not found: {repo_id}", head=head)
                return
            if rest[0] == "refs":
                self.refs(repo, head=head)
            elif rest[0] == "tree" and len(rest) >= 2:
                self.tree(repo, rest[1], "/".join(rest[2:]), query, head=head)
            else:
                self.error(404, None, "not found", head=head)
            return
        repo_id, rest = self._split_repo(segments, ("resolve",))
        if repo_id is None or len(rest) < 3:
            self.error(404, None, "not found", head=head)
            return
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self.error(404, "RepoNotFound", f"Repository not found: {repo_id}", head=head)
            return
        self.resolve(repo, rest[1], "/".join(rest[2:]), head=head)

    @staticmethod
    def _split_repo(segments: list[str], actions: tuple[str, ...]) -> tuple[str | None, list[str]]:
        """``["org", "name", "tree", ...]`` -> ("org/name", ["tree", ...]); repo ids have one or two parts."""
        for n in (2, 1):
            if len(segments) > n and segments[n] in actions:
                return "/".join(segments[:n]), segments[n:]
        return None, []

    def _commit(self, repo: Repo, revision: str) -> Commit | None:
        sha = repo.branches.get(revision, revision)
        return repo.commits.get(sha)

    def refs(self, repo: Repo, *, head: bool) -> None:
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
            for name, sha in repo.branches.items()
        ]
        self.send_json({"branches": branches, "converts": [], "tags": [], "pullRequests": []}, head=head)

    def tree(self, repo: Repo, revision: str, path: str, query: Mapping[str, str], *, head: bool) -> None:
        commit = self._commit(repo, revision)
        if commit is None:
            self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
            return
        recursive = query.get("recursive", "false").lower() in ("1", "true")
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            self.error(404, "EntryNotFound", f"{path} does not exist on {revision}", head=head)
            return
        entries: dict[str, dict[str, object]] = {}
        for file_path, f in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):  # the folders on the way
                folder = prefix + "/".join(parts[:i])
                oid = hashlib.sha1(f"{commit.sha}:{folder}".encode()).hexdigest()
                entries.setdefault(folder, {"type": "directory", "oid": oid, "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                entry: dict[str, object] = {
                    "type": "file",
                    "oid": f.git_sha1,
                    "size": f.size,
                    "path": file_path,
                }
                if f.sha256 is not None:
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                entries[file_path] = entry
        listing = list(entries.values())
        cursor = int(query.get("cursor", "0") or 0)
        page = listing[cursor : cursor + self.hub.page_size]
        headers: dict[str, str] = {}
        if cursor + self.hub.page_size < len(listing):
            quoted_path = f"/{quote(path, safe='')}" if path else ""
            next_url = (
                f"{self.hub.endpoint}/api/models/{repo.repo_id}/tree/{quote(revision, safe='')}{quoted_path}"
                f"?recursive={str(recursive).lower()}&expand=false&cursor={cursor + self.hub.page_size}"
            )
            headers["Link"] = f'<{next_url}>; rel="next"'
        self.send_json(page, headers, head=head)

    def resolve(self, repo: Repo, revision: str, path: str, *, head: bool) -> None:
        commit = self._commit(repo, revision)
        if commit is None:
            self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
            return
        f = commit.files.get(path)
        if f is None:
            self.error(
                404,
                "EntryNotFound",
                f"{path} does not exist on {revision}",
                {"X-Repo-Commit": commit.sha},
                head=head,
            )
            return
        if f.sha256 is not None:
            self.send(
                302,
                b"",
                {
                    "Location": f"{self.hub.cdn_endpoint}/lfs/{f.sha256}?repo={quote(repo.repo_id, safe='')}",
                    "X-Repo-Commit": commit.sha,
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                    "ETag": f'"{f.git_sha1}"',
                },
                head=head,
            )
            return
        self.send_file(f.data, f.size, {"X-Repo-Commit": commit.sha, "ETag": f'"{f.git_sha1}"'}, head=head)


class _CdnHandler(_Handler):
    server_name_tag = "cdn"

    def route(self, *, head: bool) -> None:
        segments = urlsplit(self.path).path.split("/")[1:]
        blob = self.hub.blobs.get(segments[1]) if len(segments) == 2 and segments[0] == "lfs" else None
        if blob is None:
            self.error(404, None, "no such object", head=head)
            return
        self.send_file(blob, blob.stat().st_size, {"ETag": f'"{segments[1]}"'}, head=head)
