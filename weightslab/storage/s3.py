"""The object-store backend of the storage seam: any S3-compatible service, through s3fs.

:class:`S3Storage` implements :class:`~weightslab.storage.base.Storage` over one bucket and prefix,
``s3://bucket/prefix``. Every request goes through s3fs (aiobotocore underneath): its credential
chain, retries and event loop; this module only decides which S3 calls a Storage operation is.

The design is spread over the modules that hold each part:

* :mod:`weightslab.storage.s3_client` -- URL parsing, the *virtual paths* (``/s3:/{bucket}/{prefix}``)
  and their keys, the s3fs client and its configuration (``storage_options``, ``AWS_*``), the raw
  requests and the token that makes a retried conditional PUT safe;
* :mod:`weightslab.storage.s3_upload` -- *writes*: one PUT or a streamed multipart upload, and the
  incomplete uploads a crash leaves (for ``gc``);
* :mod:`weightslab.storage.s3_cache` -- the local copies that :meth:`S3Storage.local_file` keeps;
* :mod:`weightslab.storage.s3_errors` -- which S3 error an exception was (412, 409, ...);
* :mod:`weightslab.storage.s3_lease` -- the writer lease that :meth:`S3Storage.lock` returns;
* this module -- the Storage operations themselves, described below.

Folders
    S3 has none. :meth:`S3Storage.makedirs` puts an empty *folder marker* object ``{key}/`` (as the
    S3 consoles do) so that an empty folder can exist, be listed and be removed; ``is_dir`` is "the
    marker or any key is under ``{key}/``"; ``listdir`` is one delimited listing (markers hidden);
    ``remove_dir`` deletes the marker and raises OSError(ENOTEMPTY) when any other key is under it.
    (Filer-backed servers such as SeaweedFS also keep a folder that was emptied by deleting its
    last object, and show it like a marker; ``remove_dir`` removes that too. On AWS it vanishes.)

Commit primitives (compare-and-swap)
    :meth:`create_exclusive` is a PUT with ``If-None-Match: *``: of racing creators exactly one gets
    True. :meth:`read_with_etag` returns content and ETag from one GET, and :meth:`put_if_match`
    replaces an object only if its ETag is still the given one (``If-Match``; with ``etag=None``
    only if absent) and returns the new ETag, or None when another writer got there first. A
    manifest commit on S3 is: PUT the step objects, then PUT the manifest with ``put_if_match`` on
    the ETag it was read with; a writer whose lease was taken over loses that race instead of
    overwriting its successor's manifest. (A retried conditional PUT is checked against its own
    write token: see :mod:`weightslab.storage.s3_client`.) The ETag of a single-part object is the
    MD5 of its bytes, so a swap compares content: rewriting identical bytes keeps the ETag (harmless
    for a state that is the same), and the lease's body changes on every renewal (a sequence number)
    so that each of its writes is distinct.

Everything else
    ``append_line`` (the journal) cannot append: it is a read-modify-write, GET + PUT with
    ``If-Match``, retried with backoff when another writer changed the object in between (a torn
    line cannot happen: the whole object is replaced; each append costs the object's size, which is
    fine for a journal of events but not for a log of every step). ``replace`` is server-side
    CopyObject (``x-amz-copy-source-if-match`` on the source's ETag) then DeleteObject with
    ``If-Match``: not atomic — a crash between the two leaves the new target *and* the old source.
    Its one caller moves a broken manifest aside, and a leftover source is found broken again and
    moved aside again, so it tolerates that; the conditions make sure a source rewritten meanwhile
    is neither copied half-known nor deleted. ``local_file`` is a download into ``cache_dir``,
    named by key and ETag (a cached copy is reused while the object's ETag is unchanged).
    ``lock`` is a lease object, see :mod:`weightslab.storage.s3_lease`.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import xxhash

from weightslab.storage.base import HashingWriter, WrittenFile
from weightslab.storage.s3_cache import cached_copy, clear_cache_dir
from weightslab.storage.s3_client import ANCHOR as ANCHOR
from weightslab.storage.s3_client import APPEND_ATTEMPTS as APPEND_ATTEMPTS
from weightslab.storage.s3_client import READ_CHUNK as READ_CHUNK
from weightslab.storage.s3_client import TOKEN_META as TOKEN_META
from weightslab.storage.s3_client import S3Client, S3Object, parse_s3_url, stream_object_coro, timestamp
from weightslab.storage.s3_errors import as_oserror, precondition_failed
from weightslab.storage.s3_lease import DEFAULT_LEASE_RENEW_S, DEFAULT_LEASE_TTL_S, S3Lease
from weightslab.storage.s3_upload import DEFAULT_PART_SIZE as DEFAULT_PART_SIZE
from weightslab.storage.s3_upload import MIN_PART_SIZE as MIN_PART_SIZE
from weightslab.storage.s3_upload import (
    IncompleteUpload,
    _Upload,
    abort_incomplete_uploads,
    incomplete_uploads,
)

log = logging.getLogger("weightslab")

MAX_SINGLE_PUT = 5 << 30  # S3's limit for one PUT or CopyObject


class S3Storage(S3Client):
    """A :class:`~weightslab.storage.base.Storage` over ``s3://bucket/prefix`` (see the module docstring).

    ``storage_options`` go to :class:`s3fs.S3FileSystem` unchanged (``fs`` may be passed instead).
    ``lease_ttl`` / ``lease_renew_every`` are the writer lease's times, ``cache_dir`` where
    :meth:`local_file` keeps downloads (default: a per-user folder under the temp dir).
    """

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        durable: bool = True,
        part_size: int = DEFAULT_PART_SIZE,
        max_inflight_parts: int = 2,
        cache_dir: str | os.PathLike[str] | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL_S,
        lease_renew_every: float = DEFAULT_LEASE_RENEW_S,
        fs: Any = None,
    ) -> None:
        super().__init__(url, storage_options, fs=fs)
        if part_size < MIN_PART_SIZE:
            raise ValueError(
                f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum), got {part_size}"
            )
        if max_inflight_parts < 1:
            raise ValueError(f"max_inflight_parts must be at least 1, got {max_inflight_parts}")
        S3Lease.check_times(lease_ttl, lease_renew_every)
        self.durable = durable  # every completed PUT is durable; kept for the Protocol
        self.part_size = part_size
        self.max_inflight_parts = max_inflight_parts
        self.lease_ttl = lease_ttl
        self.lease_renew_every = lease_renew_every
        if cache_dir is None:
            cache_dir = Path(tempfile.gettempdir()) / f"weightslab-s3-cache-{os.getuid()}"
        self.cache_dir = Path(cache_dir)

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r})"

    # -- reading ---------------------------------------------------------------------------------
    def read_bytes(self, path: Path) -> bytes:
        return self.get_object(path).data

    def read_with_etag(self, path: Path) -> tuple[bytes, str]:
        """Content and ETag of ``path`` from one GET (FileNotFoundError when absent), for :meth:`put_if_match`."""
        obj = self.get_object(path)
        return obj.data, obj.etag

    def listdir(self, path: Path) -> list[str]:
        prefix = self._dir_key(path)
        names: set[str] = set()
        for page in self._list(prefix, delimiter="/"):
            for common in page.get("CommonPrefixes", []) or []:
                name = str(common["Prefix"])[len(prefix) :].strip("/")
                if name and name not in (".", ".."):
                    names.add(name)
            for obj in page.get("Contents", []) or []:
                name = str(obj["Key"])[len(prefix) :]
                if name and "/" not in name and name not in (".", ".."):
                    names.add(name)
        return sorted(names)

    def files_under(self, path: Path) -> Iterator[Path]:
        prefix = self._dir_key(path)
        base = PurePosixPath(path)
        for page in self._list(prefix):
            for obj in page.get("Contents", []) or []:
                rel = str(obj["Key"])[len(prefix) :]
                parts = rel.split("/")
                if not rel or any(p in ("", ".", "..") for p in parts):
                    continue  # a folder marker, or a key no path can name
                yield Path(base.joinpath(*parts))

    def exists(self, path: Path) -> bool:
        return self.is_file(path) or self.is_dir(path)

    def is_file(self, path: Path) -> bool:
        return self._head(self.key_for(path)) is not None

    def is_dir(self, path: Path) -> bool:
        prefix = self._dir_key(path)
        if not prefix:  # the bucket itself
            try:
                self._call("head_bucket")
            except FileNotFoundError:
                return False
            return True
        # delimited: a folder marker, or (SeaweedFS) an emptied folder, counts like a key below it
        page = next(self._list(prefix, delimiter="/", max_keys=1))
        return bool(page.get("KeyCount") or page.get("Contents") or page.get("CommonPrefixes"))

    def size(self, path: Path) -> int:
        return int(self._head_or_raise(path)["ContentLength"])

    def mtime(self, path: Path) -> float:
        return timestamp(self._head_or_raise(path)["LastModified"])

    def checksum(self, path: Path) -> tuple[int, str]:
        """(size, xxh3_128) of the object as stored now, hashed while it streams (nothing kept)."""
        h = xxhash.xxh3_128()
        try:
            size, _etag = self._run(stream_object_coro, self.bucket, self.key_for(path), h.update, None)
        except FileNotFoundError as exc:
            raise FileNotFoundError(errno.ENOENT, "no such object", self.url_for(path)) from exc
        except Exception as exc:
            raise as_oserror(exc, f"cannot read {self.url_for(path)}") from exc
        return size, h.hexdigest()

    def local_file(self, path: Path) -> Path:
        """A local copy of ``path`` in :attr:`cache_dir`, downloaded unless the cached one has its ETag."""
        return cached_copy(self, path, self.cache_dir)

    def clear_cache(self) -> None:
        """Delete every download :meth:`local_file` keeps for this store's objects and others'."""
        clear_cache_dir(self.cache_dir)

    # -- writing ---------------------------------------------------------------------------------
    def write_atomic(self, path: Path, produce: Callable[[HashingWriter], None]) -> WrittenFile:
        """Stream ``produce``'s output to ``path``: one PUT, or a multipart upload that appears only when complete."""
        key = self.key_for(path)
        upload = _Upload(self, key, part_size=self.part_size, max_inflight_parts=self.max_inflight_parts)
        try:
            writer = HashingWriter(upload)  # type: ignore[arg-type]  # a write-only raw stream
            produce(writer)
            writer.flush()
            writer.raise_error()
            upload.finish()
        except BaseException:
            upload.abort()
            raise
        return WrittenFile(path=path, bytes=writer.bytes, xxh3_128=writer.hexdigest(), blocks=writer.blocks())

    def write_bytes_atomic(self, path: Path, data: bytes) -> WrittenFile:
        if len(data) > self.part_size:

            def produce(writer: HashingWriter) -> None:
                writer.write(data)

            return self.write_atomic(path, produce)
        key = self.key_for(path)
        try:
            self._put(key, bytes(data))
        except Exception as exc:
            raise as_oserror(exc, f"cannot write {self.url_for(path)}") from exc
        return WrittenFile(path=path, bytes=len(data), xxh3_128=xxhash.xxh3_128_hexdigest(data))

    def create_exclusive(self, path: Path, data: bytes) -> bool:
        """PUT with ``If-None-Match: *``: True for the one caller that created the object."""
        return self.put_if_match(path, data, None) is not None

    def put_if_match(self, path: Path, data: bytes, etag: str | None) -> str | None:
        """Write ``path`` only if its ETag is still ``etag`` (``None``: only if absent).

        Returns the new ETag, or None when the object changed (or appeared, or went) meanwhile: then
        nothing was written. The compare-and-swap that a manifest commit and the lease are built on.
        """
        key = self.key_for(path)
        if not key or key.endswith("/"):
            raise ValueError(f"{path} cannot be an object")
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        return self._put_conditional(key, bytes(data), condition)

    def read_versioned(self, path: Path) -> tuple[bytes, str | None]:
        """:meth:`read_with_etag` for the Storage protocol."""
        return self.read_with_etag(path)

    def write_if_version(self, path: Path, data: bytes, version: str | None) -> str | bool | None:
        """:meth:`put_if_match` for the Storage protocol: the new ETag, or False on a conflict."""
        etag = self.put_if_match(path, data, version)
        return False if etag is None else etag

    def remove_if_match(self, path: Path, etag: str) -> bool:
        """Delete ``path`` only if its ETag is still ``etag``; False when it changed (or is gone)."""
        try:
            self._call("delete_object", Key=self.key_for(path), IfMatch=etag)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if precondition_failed(exc):
                return False
            raise
        return True

    def append_line(self, path: Path, line: bytes) -> None:
        """Append ``line`` by read-modify-write: GET, then PUT with ``If-Match`` (retried on conflict).

        The object is replaced whole, so the line is in it or not; a torn last line (written by some
        other tool) is ended first, like the local backend does.
        """
        if not line.endswith(b"\n"):
            line += b"\n"
        for attempt in range(APPEND_ATTEMPTS):
            try:
                old, etag = self.read_with_etag(path)
            except FileNotFoundError:
                old, etag = b"", None
            body = old + (b"\n" if old and not old.endswith(b"\n") else b"") + line
            if self.put_if_match(path, body, etag) is not None:
                return
            time.sleep(min(0.02 * 2**attempt, 1.0))
        raise OSError(
            errno.EAGAIN,
            f"cannot append to {self.url_for(path)}: {APPEND_ATTEMPTS} writers changed it in between",
        )

    def replace(self, source: Path, target: Path) -> None:
        """Copy ``source`` over ``target`` server-side, then delete ``source`` (not atomic: see the module)."""
        src_key, dst_key = self.key_for(source), self.key_for(target)
        head = self._head(src_key)
        if head is None:
            raise FileNotFoundError(errno.ENOENT, "no such object", self.url_for(source))
        etag = str(head["ETag"])
        if int(head["ContentLength"]) > MAX_SINGLE_PUT:
            self.fs.copy(f"{self.bucket}/{src_key}", f"{self.bucket}/{dst_key}")
        else:
            try:
                self._call(
                    "copy_object",
                    Key=dst_key,
                    CopySource={"Bucket": self.bucket, "Key": src_key},
                    CopySourceIfMatch=etag,
                )
            except OSError as exc:
                if precondition_failed(exc):
                    raise OSError(
                        errno.EAGAIN, f"{self.url_for(source)} changed while it was being moved; try again"
                    ) from exc
                raise
        if not self.remove_if_match(source, etag):
            log.warning(
                "%s was rewritten after it was copied to %s; kept it",
                self.url_for(source),
                self.url_for(target),
            )

    def remove(self, path: Path) -> None:
        key = self.key_for(path)
        if key and not key.endswith("/"):
            self._call("delete_object", Key=key)  # absent is fine: S3 answers 204 either way

    def remove_dir(self, path: Path) -> None:
        """Delete the folder marker of ``path``; OSError(ENOTEMPTY) when any other key is below it."""
        prefix = self._dir_key(path)
        if not prefix:
            return  # the bucket stays
        page = next(self._list(prefix, delimiter="/", max_keys=2))
        keys = [str(obj["Key"]) for obj in page.get("Contents", []) or []]
        if any(k != prefix for k in keys) or page.get("CommonPrefixes"):
            raise OSError(errno.ENOTEMPTY, "folder is not empty", self.url_for(path))
        self._call("delete_object", Key=prefix)  # the marker (absent is fine)

    def makedirs(self, path: Path) -> None:
        """Put the folder marker ``{key}/`` (an empty object), so that the empty folder exists."""
        prefix = self._dir_key(path)
        if prefix:
            self._put(prefix, b"")

    def dcp_writer(self, path: Path) -> Any:
        """DCP's fsspec StorageWriter into the prefix of ``path``: one object per rank, then ``.metadata``.

        Each object is one PUT or a completed multipart upload, durable when written. DCP writes the
        metadata as ``.metadata.tmp`` and renames it (copy + delete here), so a crash may leave that
        temporary object; the sharded checkpoint is committed by the manifest, not by it.
        """
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        return FsspecWriter(
            self.url_for(path),
            single_file_per_rank=True,
            sync_files=False,
            overwrite=True,
            **self.fsspec_options(),
        )

    def dcp_reader(self, path: Path) -> Any:
        """DCP's fsspec StorageReader of the prefix of ``path``."""
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        return FsspecReader(self.url_for(path), **self.fsspec_options())

    def lock(self, root: Path, path: Path) -> S3Lease:
        """The writer lease of ``root``, kept in the object at ``path`` (not taken yet: call ``acquire``)."""
        return S3Lease(self, path, root, ttl=self.lease_ttl, renew_every=self.lease_renew_every)

    # -- maintenance -----------------------------------------------------------------------------
    def incomplete_uploads(self) -> list[IncompleteUpload]:
        """The multipart uploads under the root that were started and never completed nor aborted."""
        return incomplete_uploads(self)

    def abort_incomplete_uploads(self, older_than_s: float = 0.0) -> list[IncompleteUpload]:
        """Abort the incomplete multipart uploads under the root started more than ``older_than_s`` ago.

        ``older_than_s`` spares the upload of a writer that is saving right now (a ``gc`` beside a
        running writer should pass an hour or so); ages are measured on the server's clock.
        """
        return abort_incomplete_uploads(self, older_than_s)


__all__ = ["ANCHOR", "IncompleteUpload", "S3Object", "S3Storage", "parse_s3_url"]
