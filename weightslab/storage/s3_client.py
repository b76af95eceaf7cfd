"""The plumbing under :class:`~weightslab.storage.s3.S3Storage`: URLs, keys, the s3fs client, raw requests.

:class:`S3Client` is the base of the store: it parses ``s3://bucket/prefix``, maps the virtual paths
of the layers above to object keys, owns the s3fs filesystem (and its event loop) and sends the
single requests (HEAD, GET, ListObjectsV2, PUT, conditional PUT) that the Storage operations of
:mod:`weightslab.storage.s3` are made of. Every request goes through s3fs (aiobotocore underneath):
its credential chain, retries and event loop.

Paths
    The layers above name files by absolute :class:`~pathlib.Path`. The store is given a *virtual*
    root, :attr:`S3Client.root` = ``/s3:/{bucket}/{prefix}`` (the first component is literally
    ``s3:``), and a path under it maps to the key ``{prefix}/{relative path}``; :meth:`url_for`
    renders the ``s3://bucket/key`` form for messages, :meth:`path_for` goes back. No real system
    has a ``/s3:`` folder, so the virtual paths never alias a local file, and since they do not
    exist locally ``Path.resolve()`` / ``os.path.realpath()`` (the traversal checks of the layout)
    return them unchanged. A path outside the root, or one with ``.`` or ``..`` components, is
    refused with ValueError: nothing can address a key of another root through this store.

Conditional PUTs
    A conditional request that botocore retried after its first try succeeded would come back 412,
    so every conditional PUT (:meth:`S3Client._put_conditional`) carries a random
    ``x-amz-meta-weightslab-write`` token and a 412 is checked against it (one HEAD). AWS's 409
    ConditionalRequestConflict (a concurrent conditional write) is retried with backoff.

Configuration
    ``storage_options`` are s3fs's (the fsspec convention): ``endpoint_url``, ``key``, ``secret``,
    ``token``, ``client_kwargs={"region_name": ...}``, ``config_kwargs``, ... With none, the standard
    AWS chain applies: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
    ``AWS_DEFAULT_REGION``, profiles, instance roles. botocore (>= 1.31) reads ``AWS_ENDPOINT_URL``
    and ``AWS_ENDPOINT_URL_S3`` itself; this module also passes them on explicitly when no endpoint
    is configured, so older botocore versions honour them too. The filesystem is made again in a
    forked child: s3fs's event loop does not survive a fork.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path, PurePosixPath
from typing import Any

from weightslab.storage.s3_errors import as_oserror, conditional_conflict, error_code, precondition_failed

ANCHOR = "s3:"
"""The first component of every virtual path: ``/s3:/{bucket}/{prefix}/...``."""

READ_CHUNK = 8 << 20
TOKEN_META = "weightslab-write"  # x-amz-meta-weightslab-write: the token of a conditional PUT
APPEND_ATTEMPTS = 25

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix"); ValueError for anything else."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise ValueError(f"not an S3 URL: {url!r}; expected s3://bucket/prefix")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not _BUCKET_RE.match(bucket):
        raise ValueError(
            f"invalid bucket name {bucket!r} in {url!r}: a bucket name is 3-63 lowercase letters, digits, "
            "'.' or '-', starting and ending with a letter or digit"
        )
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts) or "\x00" in prefix:
        raise ValueError(f"invalid prefix in {url!r}: '.' and '..' are not allowed")
    return bucket, "/".join(parts)


def server_time(response: Mapping[str, Any]) -> float | None:
    """The server's clock from a response's Date header (unix time), None when it has none."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if not date:
        return None
    try:
        return parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None


def timestamp(value: Any) -> float:
    """A LastModified / Initiated value (a datetime, or a number already) as unix time."""
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


@dataclass(frozen=True)
class S3Object:
    """One GET: the content, its ETag, when it was written and the server's clock at the answer."""

    data: bytes
    etag: str
    last_modified: float
    server_time: float | None
    metadata: Mapping[str, str]


class S3Client:
    """One bucket and prefix: key mapping, the s3fs filesystem and single requests (see the module docstring).

    ``storage_options`` go to :class:`s3fs.S3FileSystem` unchanged (``fs`` may be passed instead).
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, *, fs: Any = None) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self.root = Path("/", ANCHOR, self.bucket, *([self.prefix] if self.prefix else []))
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self._fs_obj = fs
        self._fs_pid = os.getpid()
        self._fs_lock = threading.Lock()

    # -- the client ------------------------------------------------------------------------------
    @property
    def fs(self) -> Any:
        """The s3fs filesystem; made again in a forked child (s3fs's event loop does not survive a fork)."""
        with self._fs_lock:
            if self._fs_obj is None or self._fs_pid != os.getpid():
                self._fs_obj = self._make_fs()
                self._fs_pid = os.getpid()
            return self._fs_obj

    def fsspec_options(self) -> dict[str, Any]:
        """The s3fs options this store uses (``storage_options`` plus an endpoint from the environment)."""
        options = dict(self.storage_options)
        client_kwargs = options.get("client_kwargs") or {}
        if "endpoint_url" not in options and "endpoint_url" not in client_kwargs:
            ignore = os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true"
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint and not ignore:
                options["endpoint_url"] = endpoint
        options.setdefault("use_listings_cache", False)  # every listing asks the server
        return options

    def fs_identity(self) -> str:
        """Which service this is (the endpoint), so two stores never share a cached download."""
        options = self.storage_options
        return str(
            options.get("endpoint_url")
            or (options.get("client_kwargs") or {}).get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or "aws"
        )

    def _make_fs(self) -> Any:
        try:
            import s3fs
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("the S3 backend needs s3fs: pip install 'weightslab[s3]'") from exc
        # our own client: no instance shared with other users of s3fs in this process
        options = self.fsspec_options()
        options["skip_instance_cache"] = True
        return s3fs.S3FileSystem(**options)

    def _call(self, method: str, **kwargs: Any) -> Any:
        return self.fs.call_s3(method, Bucket=self.bucket, **kwargs)

    def _run(self, coro_fn: Callable[..., Any], *args: Any) -> Any:
        import fsspec.asyn

        fs = self.fs
        return fsspec.asyn.sync(fs.loop, coro_fn, fs, *args)

    # -- paths -----------------------------------------------------------------------------------
    def key_for(self, path: Path | str) -> str:
        """The object key of ``path`` (a path under :attr:`root`); the root itself is the prefix."""
        p = PurePosixPath(path)
        try:
            rel = p.relative_to(PurePosixPath(self.root))
        except ValueError:
            raise ValueError(f"{path} is not under the S3 root {self.root} ({self.url})") from None
        if any(part in (".", "..") for part in rel.parts) or "\x00" in str(rel):
            raise ValueError(f"{path}: '.' and '..' are not allowed in a path of an S3 root")
        rel_key = "" if rel == PurePosixPath(".") else rel.as_posix()
        if not self.prefix:
            return rel_key
        return f"{self.prefix}/{rel_key}" if rel_key else self.prefix

    def _dir_key(self, path: Path | str) -> str:
        """The key prefix of the objects below ``path`` (with its trailing slash; "" for a bucket root)."""
        key = self.key_for(path)
        return f"{key}/" if key else ""

    def path_for(self, key_or_url: str) -> Path:
        """The virtual path of a key (or of an ``s3://`` URL of this bucket)."""
        key = key_or_url
        if key_or_url.startswith("s3://"):
            bucket, key = parse_s3_url(key_or_url)
            if bucket != self.bucket:
                raise ValueError(f"{key_or_url} is not in bucket {self.bucket}")
        key = key.strip("/")
        if self.prefix and not (key == self.prefix or key.startswith(self.prefix + "/")):
            raise ValueError(f"key {key!r} is not under the prefix {self.prefix!r} of {self.url}")
        rel = key[len(self.prefix) :].strip("/") if self.prefix else key
        return self.root.joinpath(*[p for p in rel.split("/") if p])

    def fs_path(self, path: Path | str) -> str:
        """``bucket/key`` of ``path``: how s3fs names it."""
        key = self.key_for(path)
        return f"{self.bucket}/{key}" if key else self.bucket

    def url_for(self, path: Path | str) -> str:
        """``s3://bucket/key`` of ``path``, for messages."""
        key = self.key_for(path)
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    # -- low-level requests ----------------------------------------------------------------------
    def _head(self, key: str) -> dict[str, Any] | None:
        """HEAD of ``key``, None when there is no such object."""
        if not key or key.endswith("/"):
            return None
        try:
            return dict(self._call("head_object", Key=key))
        except FileNotFoundError:
            return None

    def _head_or_raise(self, path: Path) -> dict[str, Any]:
        head = self._head(self.key_for(path))
        if head is None:
            raise FileNotFoundError(errno.ENOENT, "no such object", self.url_for(path))
        return head

    def head_etag(self, path: Path) -> str | None:
        """The ETag of the object at ``path`` now, None when there is none."""
        head = self._head(self.key_for(path))
        return None if head is None else str(head["ETag"])

    def get_object(self, path: Path, *, if_match: str | None = None) -> S3Object:
        """One GET of ``path``: content, ETag, LastModified, the server's clock; FileNotFoundError if absent."""
        key = self.key_for(path)
        if not key or key.endswith("/"):
            raise FileNotFoundError(errno.ENOENT, "no such object", self.url_for(path))
        extra = {"IfMatch": if_match} if if_match else {}
        try:
            result = self._run(get_object_coro, self.bucket, key, extra)
        except FileNotFoundError as exc:
            raise FileNotFoundError(errno.ENOENT, "no such object", self.url_for(path)) from exc
        except Exception as exc:
            raise as_oserror(exc, f"cannot read {self.url_for(path)}") from exc
        return S3Object(**result)

    def _list(
        self, prefix: str, *, delimiter: str = "", max_keys: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The pages of ListObjectsV2 under ``prefix``."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if delimiter:
                kwargs["Delimiter"] = delimiter
            if max_keys is not None:
                kwargs["MaxKeys"] = max_keys
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list_objects_v2", **kwargs)
            yield page
            token = page.get("NextContinuationToken")
            if max_keys is not None or not page.get("IsTruncated") or not token:
                return

    def _put(self, key: str, data: bytes, **conditions: Any) -> dict[str, Any]:
        # every PUT of an object goes through here (the crash suite stops a process at this call)
        return dict(self._call("put_object", Key=key, Body=data, **conditions))

    def _put_conditional(self, key: str, data: bytes, condition: dict[str, str]) -> str | None:
        """A conditional PUT: the new ETag, or None when the condition did not hold (412)."""
        token = uuid.uuid4().hex
        for attempt in range(APPEND_ATTEMPTS):
            try:
                out = self._put(key, data, Metadata={TOKEN_META: token}, **condition)
                return str(out["ETag"])
            except FileNotFoundError as exc:
                # AWS answers If-Match on a missing key with 404 NoSuchKey (SeaweedFS with 412)
                if "IfMatch" in condition and error_code(exc)[0] != "NoSuchBucket":
                    return None
                raise
            except OSError as exc:
                if conditional_conflict(exc):
                    time.sleep(min(0.05 * 2**attempt, 1.0))
                    continue
                if not precondition_failed(exc):
                    raise
                # our own earlier try may have succeeded before a retry came back 412
                head = self._head(key)
                if head is not None and head.get("Metadata", {}).get(TOKEN_META) == token:
                    return str(head["ETag"])
                return None
        raise OSError(errno.EAGAIN, f"conditional write of s3://{self.bucket}/{key} kept conflicting")

    def _server_now(self) -> float:
        """The server's clock (from the Date header of a cheap request), the local one if it sends none."""
        try:
            page = self._call("list_objects_v2", Prefix=self._dir_key(self.root), MaxKeys=0)
        except OSError:
            return time.time()
        return server_time(page) or time.time()


# -- coroutines run on s3fs's loop ---------------------------------------------------------------
async def get_object_coro(fs: Any, bucket: str, key: str, extra: dict[str, Any]) -> dict[str, Any]:
    """GetObject of ``key``, read whole: the fields of an :class:`S3Object`."""
    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, **extra)
    body = resp["Body"]
    try:
        data = await body.read()
    finally:
        body.close()
    return {
        "data": bytes(data),
        "etag": str(resp["ETag"]),
        "last_modified": timestamp(resp["LastModified"]),
        "server_time": server_time(resp),
        "metadata": dict(resp.get("Metadata") or {}),
    }


async def stream_object_coro(
    fs: Any, bucket: str, key: str, sink: Callable[[bytes], Any], etag: str | None
) -> tuple[int, str]:
    """GetObject of ``key`` (``If-Match`` on ``etag`` if given) into ``sink`` in chunks: (size, ETag)."""
    extra = {"IfMatch": etag} if etag else {}
    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, **extra)
    body = resp["Body"]
    size = 0
    try:
        while True:
            chunk = await body.read(READ_CHUNK)
            if not chunk:
                break
            sink(chunk)
            size += len(chunk)
    finally:
        body.close()
    expected = resp.get("ContentLength")
    if expected is not None and size != int(expected):
        raise OSError(errno.EIO, f"s3://{bucket}/{key}: got {size} of {expected} bytes")
    return size, str(resp["ETag"])


__all__ = [
    "ANCHOR",
    "APPEND_ATTEMPTS",
    "READ_CHUNK",
    "TOKEN_META",
    "S3Client",
    "S3Object",
    "get_object_coro",
    "parse_s3_url",
    "server_time",
    "stream_object_coro",
    "timestamp",
]
