"""Local copies of S3 objects, for the readers that need a real file (``torch.load(mmap=True)``).

``S3Storage.local_file`` is a download into ``cache_dir``, named by a hash of the service, bucket
and key plus the object's ETag: a cached copy is reused while the object's ETag is unchanged, and
the copies of older versions of the same object are deleted when a new one arrives. A download
goes to a temporary file first (``If-Match`` on the ETag of the HEAD) and is renamed into place,
so a cached file is always whole; an object rewritten between the HEAD and the GET is fetched again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import uuid
from pathlib import Path, PurePosixPath

from weightslab.storage.s3_client import S3Client, stream_object_coro
from weightslab.storage.s3_errors import as_oserror, precondition_failed


def cached_copy(client: S3Client, path: Path, cache_dir: Path) -> Path:
    """A local copy of ``path`` in ``cache_dir``, downloaded unless the cached one has its ETag."""
    key = client.key_for(path)
    head = client._head_or_raise(path)
    etag = str(head["ETag"]).strip('"')
    stem = hashlib.sha256(f"{client.fs_identity()}|{client.bucket}|{key}".encode()).hexdigest()[:32]
    safe_etag = re.sub(r"[^0-9A-Za-z-]", "_", etag)[:64]
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = cache_dir / f"{stem}-{safe_etag}{PurePosixPath(key).suffix}"
    if target.is_file() and target.stat().st_size == int(head["ContentLength"]):
        return target
    tmp = cache_dir / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as out:
            client._run(stream_object_coro, client.bucket, key, out.write, head["ETag"])
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, FileNotFoundError):
            raise FileNotFoundError(errno.ENOENT, "no such object", client.url_for(path)) from exc
        if isinstance(exc, Exception) and precondition_failed(exc):
            # rewritten between the HEAD and the GET: fetch the new one
            return cached_copy(client, path, cache_dir)
        if isinstance(exc, Exception):
            raise as_oserror(exc, f"cannot download {client.url_for(path)}") from exc
        raise
    for old in cache_dir.glob(f"{stem}-*"):  # older versions of this object
        if old != target:
            with contextlib.suppress(OSError):
                old.unlink()
    return target


def clear_cache_dir(cache_dir: Path) -> None:
    """Delete every download in ``cache_dir`` (of any store's objects)."""
    if cache_dir.is_dir():
        for f in cache_dir.iterdir():
            with contextlib.suppress(OSError):
                f.unlink()


__all__ = ["cached_copy", "clear_cache_dir"]
