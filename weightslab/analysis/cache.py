"""Removing files an analysis downloaded without breaking the Hugging Face cache for anyone else.

The cache keeps each content once: ``snapshots/<commit>/<path>`` is a link to ``blobs/<etag>``, and every
revision whose file has the same content links to the same blob. So removing a download means unlinking
its snapshot link, and deleting the blob only when

- no other snapshot links to it (another revision, cached before or by another program),
- no analysis in this process still uses that link, and none asked to keep it,
- no download into the same repository is running in this process: ``hf_hub_download`` links an
  existing blob without taking its lock, so a download of another revision may be about to link to it.
  The blob is then looked at again when the last such download ends.

A file downloaded with ``local_dir`` is a plain file and is simply removed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DownloadRegistry:
    """Who in this process uses each downloaded file, and which downloads are running, per repository."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[Path, int] = {}
        self._owned: set[Path] = set()
        """Files this process put on disk (they were not there before) and no user asked to keep."""
        self._in_flight: dict[Path, int] = {}
        self._deferred: dict[Path, set[Path]] = {}
        """Repository cache folder -> blobs to look at again once its downloads end."""

    @contextmanager
    def downloading(self, repo_folder: Path) -> Iterator[None]:
        """Mark a download into ``repo_folder`` (``<cache>/models--org--name``) as running while inside."""
        key = repo_folder.resolve()
        with self._lock:
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._in_flight.pop(key) - 1
                if left:
                    self._in_flight[key] = left
                else:
                    for blob in self._deferred.pop(key, set()):
                        _delete_blob_if_unlinked(blob)

    def acquire(self, path: Path, *, fresh: bool) -> None:
        """Count one user of ``path``; ``fresh`` when that download put it on disk."""
        path = path.absolute()  # one key whether the cache was named relatively or not
        with self._lock:
            self._users[path] = self._users.get(path, 0) + 1
            if fresh:
                self._owned.add(path)

    def release(self, path: Path, *, remove: bool) -> None:
        """Drop one user of ``path``; with ``remove``, delete it (and its blob) when it can go.

        A file is deleted only when this process put it on disk, every user is done with it and none
        released it with ``remove=False``.
        """
        path = path.absolute()
        with self._lock:
            left = self._users.get(path, 1) - 1
            if not remove:
                self._owned.discard(path)
            if left > 0:
                self._users[path] = left
                return
            self._users.pop(path, None)
            owned = path in self._owned
            self._owned.discard(path)
            if remove and owned:
                self._unlink(path)

    def _unlink(self, path: Path) -> None:
        if not path.is_symlink():  # a local_dir download, or a cache on a filesystem without links
            path.unlink(missing_ok=True)
            return
        blob = path.resolve()
        path.unlink(missing_ok=True)
        if blob.parent.name != "blobs":
            return  # not a Hugging Face cache layout: the target belongs to someone else
        repo_folder = blob.parent.parent
        if self._in_flight.get(repo_folder):
            self._deferred.setdefault(repo_folder, set()).add(blob)
            return
        _delete_blob_if_unlinked(blob)


def _delete_blob_if_unlinked(blob: Path) -> None:
    """Delete ``blob`` unless a snapshot of its repository still links to it."""
    snapshots = blob.parent.parent / "snapshots"
    if snapshots.is_dir():
        for link in snapshots.rglob("*"):
            if link.is_symlink() and link.resolve() == blob:
                return
    blob.unlink(missing_ok=True)


DOWNLOADS = DownloadRegistry()
"""The registry every analysis in this process shares."""
