"""The manifests of one root: read, cached for a writer, committed atomically, all under one lock.

Both the manager and the crash recovery commit through a :class:`ManifestStore`, so neither reaches
into the other: there is one place where a manifest is written and one lock that orders the writes.

A commit of a large manifest on a local root appends one line to its commit log
(:mod:`weightslab.format.manifest_log`) instead of rewriting the file; the base is rewritten
(compacted) when the log has grown as large as the base. Object stores have no append: there every
commit replaces ``manifest.json`` conditionally (:meth:`Storage.write_if_version`), as before.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from weightslab.errors import ManifestError, RootLockedError
from weightslab.format.layout import RootLayout, parse_manifest_log
from weightslab.format.manifest import Manifest
from weightslab.format.manifest_log import LOG_MIN_ENTRIES, change_line, fold
from weightslab.format.summary import (
    SUMMARY_NAME,
    Tally,
    advance,
    current,
    encode,
    tally,
)
from weightslab.storage.base import Storage
from weightslab.storage.local import LocalStorage
from weightslab.storage.stamps import stamps
from weightslab.util.names import is_hash

READ_ATTEMPTS = 100
"""How often a reader starts over when a writer compacted the manifest while it was being read."""


@dataclass
class LogState:
    """Where the commit log of one manifest stands, as this process last read or wrote it."""

    generation: int | None  # None: the base is a whole manifest (format /1), with no log
    lines: int
    bytes: int
    base_bytes: int
    appendable: bool  # False after a torn tail that could not be compacted away: rewrite next


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
        self._logs: dict[str, LogState] = {}
        # a reader's last parse of each manifest, by the bytes it was parsed from: `ls` reads each
        # manifest twice (to sort, then to list), and a 10,000-entry manifest takes a while to parse
        self._parsed: dict[str, tuple[bytes, bytes | None, Manifest, LogState]] = {}
        # the version (ETag) each manifest had when this process last read or wrote it: a commit
        # replaces it only if it is still that one (see Storage.write_if_version)
        self._versions: dict[str, str | None] = {}
        # a writer's counts of each manifest it holds, for the summary a listing reads
        # (weightslab.format.summary); local roots only. Each is kept with the manifest it counts, and
        # used only while that manifest is the cached one
        self._tallies: dict[str, tuple[Manifest, Tally]] = {}
        self._summaries = LocalStorage(durable=False)  # a cache: a crash may lose it, readers check it

    @property
    def storage(self) -> Storage:
        """The storage of the manager, as it is now."""
        return self._storage()

    def has(self, exp_hash: str) -> bool:
        """Whether the experiment has a manifest (one that cannot be read still exists)."""
        return self.storage.exists(self.layout.experiment(exp_hash).manifest)

    def read(self, exp_hash: str) -> Manifest:
        """The manifest of ``exp_hash``, its log folded in; raises ManifestError naming the broken file.

        A writer that finds a torn last line in the log (a crash mid-append) compacts the manifest at
        once, so that its next append cannot be glued to the torn bytes.
        """
        with self.lock:
            if self.caching and exp_hash in self._cache:
                return self._cache[exp_hash]
            path = self.layout.experiment(exp_hash).manifest
            m, state, version = self._read_folded(exp_hash)
            self._versions[exp_hash] = version
            if m.exp_hash != exp_hash:
                raise ManifestError(path, f"exp_hash is {m.exp_hash}, folder is {exp_hash}")
            self._logs[exp_hash] = state
            if self.caching:
                self._cache[exp_hash] = m
                if not state.appendable:
                    # if this fails it stays not appendable: the next commit rewrites the manifest whole
                    with contextlib.suppress(OSError):
                        self._write_whole(m, version)
                elif self._summarized():
                    counted = tally(m)
                    self._tallies[exp_hash] = (m, counted)
                    if not self._summary_current(exp_hash):  # none yet, or another state's
                        self._write_summary(m, counted)
            return m

    def _read_folded(self, exp_hash: str) -> tuple[Manifest, LogState, str | None]:
        """Read the base and fold its log; start over when a compaction replaced the base meanwhile."""
        exp = self.layout.experiment(exp_hash)
        path = exp.manifest
        for _ in range(READ_ATTEMPTS):
            try:
                data, version = self.storage.read_versioned(path)
            except FileNotFoundError as exc:
                raise ManifestError(path, "file not found") from exc
            seen = self._parsed.get(exp_hash)
            if seen is not None and seen[0] != data:
                seen = None
            if seen is not None and seen[1] is None:
                return seen[2], seen[3], version
            # the same base as last time: its generation is known without parsing it again
            m, generation = (
                (None, seen[3].generation) if seen is not None else Manifest.parse_base(data, path)
            )
            if generation is None:
                m = m if m is not None else Manifest.parse_base(data, path)[0]
                state = LogState(None, 0, 0, len(data), True)
                self._remember(exp_hash, data, None, m, state)
                return m, state, version
            log_path = exp.manifest_log(generation)
            try:
                log_data = self.storage.read_bytes(log_path)
            except FileNotFoundError:
                # a compaction creates the next log before the base names it, and deletes the old log
                # only after: gone means compacted since the base was read, unless the base is the same
                if self.storage.read_versioned(path)[0] == data:
                    raise ManifestError(
                        path, f"its commit log {log_path.name} is missing (entries committed since are lost)"
                    ) from None
                continue
            if seen is not None and seen[1] == log_data:
                return seen[2], seen[3], version
            if m is None:
                m = Manifest.parse_base(data, path)[0]
            folded = fold(m, log_data, generation, log_path)
            state = LogState(generation, folded.lines, folded.bytes, len(data), not folded.torn)
            self._remember(exp_hash, data, log_data, folded.manifest, state)
            return folded.manifest, state, version
        raise ManifestError(path, f"it was compacted {READ_ATTEMPTS} times while being read; try again")

    def _remember(self, exp_hash: str, data: bytes, log: bytes | None, m: Manifest, state: LogState) -> None:
        if not self.caching:
            self._parsed[exp_hash] = (data, log, m, state)

    def write(self, m: Manifest) -> None:
        """Commit ``m`` (the commit point of every change): one log line, or the manifest replaced whole.

        ``m`` is appended as a line when it was derived (``with_entry`` and the like) from the
        manifest this writer holds, that manifest is the base of a log on a local root, and the log
        is still smaller than its base; otherwise the manifest is written whole, atomically.
        """
        with self.lock:
            exp_hash = m.exp_hash
            state = self._logs.get(exp_hash)
            cached = self._cache.get(exp_hash)
            counted = self._next_tally(m, cached) if self._summarized() else None
            if (
                self.caching
                and cached is not None
                and state is not None
                and state.generation is not None
                and state.appendable
                and len(m.checkpoints) >= LOG_MIN_ENTRIES
                and self._appends()
            ):
                line = change_line(m, cached, state.generation, state.lines + 1)
                if line is not None and state.bytes + len(line) <= state.base_bytes:
                    log_path = self.layout.experiment(exp_hash).manifest_log(state.generation)
                    try:
                        self.storage.append_line(log_path, line)  # whole or not at all; raises OSError
                    except BaseException:
                        # the line may be on disk all the same (a failed fsync, a truncate that
                        # failed): never append after it; the next commit rewrites the manifest whole
                        state.appendable = False
                        raise
                    state.lines += 1
                    state.bytes += len(line)
                    m.forget_change()
                    self._cache[exp_hash] = m
                    self._write_summary(m, counted)
                    return
            if exp_hash in self._versions:
                version = self._versions[exp_hash]
            else:
                try:
                    version = self.storage.read_versioned(self.layout.experiment(exp_hash).manifest)[1]
                except FileNotFoundError:
                    version = None
            self._write_whole(m, version, counted)

    def _write_whole(self, m: Manifest, version: str | None, counted: Tally | None = None) -> None:
        """Replace the manifest whole (a compaction when it is a log's base), then drop older logs."""
        exp = self.layout.experiment(m.exp_hash)
        path = exp.manifest
        known = self._logs.get(m.exp_hash)
        logged = len(m.checkpoints) >= LOG_MIN_ENTRIES and self._appends()
        # listing the folder is one more request per commit on an object store: only when a log may be there
        logs = self._log_files(m.exp_hash) if logged or known is None or known.generation else {}
        generation = None
        if logged:
            generation = max([*logs.values(), (known.generation if known else None) or 0]) + 1
            # the log exists before the base names it: a reader that finds it missing knows the base changed
            self.storage.write_bytes_atomic(exp.manifest_log(generation), b"")
        data = m.to_json(generation=generation)
        new = self.storage.write_if_version(path, data, version)
        if new is False:
            self._cache.pop(m.exp_hash, None)
            self._versions.pop(m.exp_hash, None)
            self._logs.pop(m.exp_hash, None)
            self._tallies.pop(m.exp_hash, None)
            raise RootLockedError(
                path,
                "another writer, which committed to this manifest after this process read it (this "
                "process lost the root's lease; its commit was refused)",
            )
        self._versions[m.exp_hash] = new if isinstance(new, str) else None
        self._logs[m.exp_hash] = LogState(generation, 0, 0, len(data), True)
        m.forget_change()
        self._cache[m.exp_hash] = m
        for log_path, g in logs.items():
            if g != generation:
                self.storage.remove(log_path)  # folded into the base just written
        self._write_summary(m, counted)

    # -- the summary a listing reads -----------------------------------------------------------------
    def _summarized(self) -> bool:
        """Whether this store keeps summaries: a writer on a local file system."""
        return self.caching and isinstance(self.storage, LocalStorage)

    def _next_tally(self, m: Manifest, cached: Manifest | None) -> Tally:
        """Count ``m`` before it is committed: from the tally of ``cached`` when ``m`` derives from
        it (O(change)), else entry by entry. The tally of ``cached`` is dropped first (advancing
        changes it in place): a commit that fails leaves none, and the next one counts again."""
        known = self._tallies.pop(m.exp_hash, None)
        change = m.change()
        if known is not None and known[0] is cached and change is not None and change.origin is cached:
            return advance(known[1], m)
        return tally(m)

    def _write_summary(self, m: Manifest, counted: Tally | None = None) -> None:
        """Write the summary of ``m``, just committed (or read), for the files as they are now;
        ``counted`` is its tally when the commit prepared one (else ``m`` is counted here).

        Not durable, and a failure is not an error: a summary whose stamp does not match the files
        is not used, so a lost or stale one only makes the next listing read the manifest.
        """
        if not self._summarized():
            return
        counted = counted or tally(m)
        self._tallies[m.exp_hash] = (m, counted)
        exp = self.layout.experiment(m.exp_hash)
        state = self._logs.get(m.exp_hash)
        generation = None if state is None else state.generation
        log = None if generation is None else exp.manifest_log(generation).name
        files = stamps(str(exp.dir), (exp.manifest.name, log))
        if files is None:
            return
        with contextlib.suppress(OSError):
            self._summaries.write_bytes_atomic(exp.dir / SUMMARY_NAME, encode(m, counted, generation, files))

    def _summary_current(self, exp_hash: str) -> bool:
        """Whether the experiment's summary describes its manifest files as they are now."""
        exp = self.layout.experiment(exp_hash)
        storage = self._summaries  # a LocalStorage, not durable
        try:
            data = storage.read_bytes(exp.dir / SUMMARY_NAME)
        except OSError:
            return False
        return current(data, exp_hash, lambda names: stamps(str(exp.dir), names)) is not None

    def _appends(self) -> bool:
        """Whether commits may append to a log: a local file system (one writer by its flock). An
        object store has no append, and its conditional replace is what keeps a lost lease out."""
        return isinstance(self.storage, LocalStorage)

    def _log_files(self, exp_hash: str) -> dict[Path, int]:
        """The commit logs in the experiment's folder, {path: generation}."""
        exp = self.layout.experiment(exp_hash)
        found = {}
        for name in self.storage.listdir(exp.dir):
            generation = parse_manifest_log(name)
            if generation is not None:
                found[exp.dir / name] = generation
        return found

    def stale_logs(self, exp_hash: str) -> list[Path]:
        """Commit logs that the manifest no longer names (left by a crash during a compaction)."""
        with self.lock:
            self.read(exp_hash)
            current = self._logs[exp_hash].generation
            return sorted(p for p, g in self._log_files(exp_hash).items() if g != current)

    def log_files(self, exp_hash: str) -> list[Path]:
        """Every commit log file of the experiment (for a rebuild, which keeps them aside)."""
        return sorted(self._log_files(exp_hash))

    def set_caching(self, caching: bool) -> None:
        """Stop (or start) caching; a writer that closes becomes a reader and must re-read."""
        with self.lock:
            self.caching = caching
            if not caching:
                self._cache.clear()
                self._logs.clear()
                self._tallies.clear()

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
