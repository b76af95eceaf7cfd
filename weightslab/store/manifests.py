"""The manifests of one root: read, cached for a writer, replaced atomically, all under one lock.

Both the manager and the crash recovery commit through a :class:`ManifestStore`, so neither reaches
into the other: there is one place where a manifest is written and one lock that orders the writes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from weightslab.errors import ManifestError, RootLockedError
from weightslab.format.layout import RootLayout
from weightslab.format.manifest import Manifest
from weightslab.storage.base import Storage
from weightslab.util.names import is_hash


class ManifestStore:
    """Reads and writes ``checkpoints/{hash}/manifest.json`` over a :class:`Storage`.

    ``storage`` is a function, not an object, so that a storage swapped on the manager (tests inject
    a full disk that way) is the one every manifest write goes to. A writer (``caching``) keeps the
    manifests it read or wrote: it is the only process changing them. A reader re-reads each time,
    since a writer elsewhere may have committed since.
    """

    def __init__(self, layout: RootLayout, storage: Callable[[], Storage], *, caching: bool) -> None:
        self.layout = layout
        self._storage = storage
        self.caching = caching
        self.lock = threading.RLock()  # re-entrant: a commit reads the manifest it replaces
        self._cache: dict[str, Manifest] = {}
        # the version (ETag) each manifest had when this process last read or wrote it: a commit
        # replaces it only if it is still that one (see Storage.write_if_version)
        self._versions: dict[str, str | None] = {}

    @property
    def storage(self) -> Storage:
        """The storage of the manager, as it is now."""
        return self._storage()

    def has(self, exp_hash: str) -> bool:
        """Whether the experiment has a manifest (one that cannot be read still exists)."""
        return self.storage.exists(self.layout.experiment(exp_hash).manifest)

    def read(self, exp_hash: str) -> Manifest:
        """The manifest of ``exp_hash``; raises ManifestError naming the file when it is broken."""
        with self.lock:
            if self.caching and exp_hash in self._cache:
                return self._cache[exp_hash]
            path = self.layout.experiment(exp_hash).manifest
            try:
                data, version = self.storage.read_versioned(path)
            except FileNotFoundError as exc:
                raise ManifestError(path, "file not found") from exc
            m = Manifest.from_json(data, path)
            self._versions[exp_hash] = version
            if m.exp_hash != exp_hash:
                raise ManifestError(path, f"exp_hash is {m.exp_hash}, folder is {exp_hash}")
            if self.caching:
                self._cache[exp_hash] = m
            return m

    def write(self, m: Manifest) -> None:
        """Replace the manifest of ``m.exp_hash`` atomically (the commit point of every change)."""
        with self.lock:
            path = self.layout.experiment(m.exp_hash).manifest
            if m.exp_hash in self._versions:
                version = self._versions[m.exp_hash]
            else:
                try:
                    version = self.storage.read_versioned(path)[1]
                except FileNotFoundError:
                    version = None
            new = self.storage.write_if_version(path, m.to_json(), version)
            if new is False:
                self._cache.pop(m.exp_hash, None)
                self._versions.pop(m.exp_hash, None)
                raise RootLockedError(
                    path,
                    "another writer, which committed to this manifest after this process read it (this "
                    "process lost the root's lease; its commit was refused)",
                )
            self._versions[m.exp_hash] = new if isinstance(new, str) else None
            self._cache[m.exp_hash] = m

    def set_caching(self, caching: bool) -> None:
        """Stop (or start) caching; a writer that closes becomes a reader and must re-read."""
        with self.lock:
            self.caching = caching
            if not caching:
                self._cache.clear()

    def experiments(self) -> list[str]:
        """Hashes of the experiments that have a manifest, oldest first (unreadable ones last)."""
        found = []
        for name in self.storage.listdir(self.layout.checkpoints_dir):
            # exists(), not is_file(): a manifest that cannot be read is an error to report, not absent
            if is_hash(name) and self.has(name):
                found.append(name)
        return sorted(found, key=lambda h: (self._created_or_inf(h), h))

    def _created_or_inf(self, exp_hash: str) -> float:
        try:
            return self.read(exp_hash).created
        except ManifestError:
            return float("inf")
