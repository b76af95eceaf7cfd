"""Streaming writes to S3: the multipart upload behind ``write_atomic``, and the uploads a crash left.

Writes
    A PUT is atomic per object: readers see the old object or the new one, never part of one, and
    a PUT that returned is durable, so ``durable`` is always honoured.
    :meth:`~weightslab.storage.s3.S3Storage.write_atomic` streams what ``produce`` writes through the
    :class:`~weightslab.storage.base.HashingWriter` (xxh3-128 computed on the way) into an
    :class:`_Upload`, which keeps memory parts of ``part_size`` bytes: content that fits one part is
    one PUT, anything larger a multipart upload with at most ``max_inflight_parts`` parts in flight
    while the next one fills (memory stays below ``part_size * (max_inflight_parts + 1)``). A
    multipart object appears only at CompleteMultipartUpload; a failed write aborts its upload, and
    the uploads a crash leaves behind (invisible, but billed) are listed by :func:`incomplete_uploads`
    and aborted by :func:`abort_incomplete_uploads`, for ``gc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from weightslab.storage.s3_client import S3Client, timestamp
from weightslab.storage.s3_errors import as_oserror

log = logging.getLogger("weightslab")

DEFAULT_PART_SIZE = 16 << 20
MIN_PART_SIZE = 5 << 20  # S3's minimum for every part but the last


class _Upload:
    """The raw stream ``S3Storage.write_atomic`` gives its HashingWriter: parts of ``part_size`` bytes.

    Content up to one part is a single PUT at :meth:`finish`; more starts a multipart upload whose
    parts are sent in the background (at most ``max_inflight_parts`` at once) while the next fills.
    Every error is an OSError (HashingWriter keeps those instead of raising through torch's C++).
    """

    def __init__(self, storage: S3Client, key: str, *, part_size: int, max_inflight_parts: int) -> None:
        self.storage = storage
        self.key = key
        self.part_size = part_size
        self.max_inflight_parts = max_inflight_parts
        self.buf = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.inflight: deque[tuple[int, Future[Any]]] = deque()
        self.next_part = 1

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        size = self.part_size
        offset = 0
        try:
            # never more than one part buffered here, however large one write is (a whole tensor)
            while offset < view.nbytes:
                take = min(size - len(self.buf), view.nbytes - offset)
                self.buf += view[offset : offset + take]
                offset += take
                if len(self.buf) >= size:
                    chunk, self.buf = bytes(self.buf), bytearray()
                    self._send(chunk)
        except Exception as exc:
            raise as_oserror(exc, f"upload of {self.url} failed") from exc
        return view.nbytes

    def flush(self) -> None:
        pass

    @property
    def url(self) -> str:
        return f"s3://{self.storage.bucket}/{self.key}"

    def _send(self, chunk: bytes) -> None:
        fs = self.storage.fs
        if self.upload_id is None:
            mpu = self.storage._call("create_multipart_upload", Key=self.key)
            self.upload_id = str(mpu["UploadId"])
        coro = fs._call_s3(
            "upload_part",
            Bucket=self.storage.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=self.next_part,
            Body=chunk,
        )
        self.inflight.append((self.next_part, asyncio.run_coroutine_threadsafe(coro, fs.loop)))
        self.next_part += 1
        while len(self.inflight) > self.max_inflight_parts:
            self._wait_one()

    def _wait_one(self) -> None:
        number, fut = self.inflight.popleft()
        out = fut.result()
        self.parts.append({"PartNumber": number, "ETag": out["ETag"]})

    def finish(self) -> None:
        try:
            if self.upload_id is None:
                self.storage._put(self.key, bytes(self.buf))
                return
            if self.buf:
                chunk, self.buf = bytes(self.buf), bytearray()
                self._send(chunk)
            while self.inflight:
                self._wait_one()
            self.storage._call(
                "complete_multipart_upload",
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": sorted(self.parts, key=lambda p: p["PartNumber"])},
            )
            self.upload_id = None
        except Exception as exc:
            raise as_oserror(exc, f"upload of {self.url} failed") from exc

    def abort(self) -> None:
        """Drop what was sent: wait for parts in flight, then abort the upload (errors are logged)."""
        while self.inflight:
            _number, fut = self.inflight.popleft()
            with contextlib.suppress(Exception):
                fut.result()
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            try:
                self.storage._call("abort_multipart_upload", Key=self.key, UploadId=upload_id)
            except Exception as exc:
                log.warning(
                    "could not abort the upload %s of %s (gc aborts it later): %s", upload_id, self.url, exc
                )


# -- maintenance -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class IncompleteUpload:
    """A multipart upload that was started and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: float


def incomplete_uploads(client: S3Client) -> list[IncompleteUpload]:
    """The multipart uploads under the root of ``client`` that were started and never completed nor aborted."""
    prefix = client._dir_key(client.root)
    found: list[IncompleteUpload] = []
    markers: dict[str, str] = {}
    while True:
        page = client._call("list_multipart_uploads", Prefix=prefix, **markers)
        for up in page.get("Uploads", []) or []:
            found.append(
                IncompleteUpload(
                    key=str(up["Key"]),
                    upload_id=str(up["UploadId"]),
                    initiated=timestamp(up["Initiated"]),
                )
            )
        if not page.get("IsTruncated"):
            return found
        markers = {
            "KeyMarker": page.get("NextKeyMarker", ""),
            "UploadIdMarker": page.get("NextUploadIdMarker", ""),
        }
        if not markers["KeyMarker"] and not markers["UploadIdMarker"]:
            return found


def abort_incomplete_uploads(client: S3Client, older_than_s: float = 0.0) -> list[IncompleteUpload]:
    """Abort the incomplete multipart uploads under the root started more than ``older_than_s`` ago.

    ``older_than_s`` spares the upload of a writer that is saving right now (a ``gc`` beside a
    running writer should pass an hour or so); ages are measured on the server's clock.
    """
    now = client._server_now()
    aborted: list[IncompleteUpload] = []
    for up in incomplete_uploads(client):
        if now - up.initiated < older_than_s:
            continue
        with contextlib.suppress(FileNotFoundError):
            client._call("abort_multipart_upload", Key=up.key, UploadId=up.upload_id)
        aborted.append(up)
    return aborted


__all__ = [
    "DEFAULT_PART_SIZE",
    "MIN_PART_SIZE",
    "IncompleteUpload",
    "abort_incomplete_uploads",
    "incomplete_uploads",
]
