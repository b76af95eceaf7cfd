"""Crash recovery for a checkpoint root: leftovers, lost or broken manifests, interrupted replacements.

Every rule about what a crash can leave behind lives here, in :class:`Recovery`. It works over the
same collaborators as the manager (the layout, a storage, the :class:`ManifestStore`, the journal)
and knows nothing of the manager itself; the manager exposes it as methods, and a writer runs
:meth:`Recovery.clean_leftovers` when it opens a root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from weightslab.errors import CheckpointFormatError, ManifestError, RootError, WeightslabError
from weightslab.format.journal import Journal, read_events
from weightslab.format.layout import TMP_MARKER, RootLayout, parse_shard_dir, parse_step_file
from weightslab.format.manifest import CheckpointEntry, Manifest, ParentRef, PendingReplacement
from weightslab.format.summary import SUMMARY_NAME
from weightslab.storage.base import Storage
from weightslab.store.manifests import ManifestStore
from weightslab.util.names import is_hash

log = logging.getLogger("weightslab")


class Recovery:
    """Finds and repairs what a crash left under one root.

    ``storage`` and ``journal`` are functions so that what the manager holds now is used (a storage
    swapped by a test, no journal once the manager is read-only); repairs need a journal and raise
    RootError without one.
    """

    def __init__(
        self,
        layout: RootLayout,
        storage: Callable[[], Storage],
        manifests: ManifestStore,
        journal: Callable[[], Journal | None],
    ) -> None:
        self.layout = layout
        self._storage = storage
        self.manifests = manifests
        self._journal = journal

    @property
    def storage(self) -> Storage:
        return self._storage()

    def _writer_journal(self) -> Journal:
        journal = self._journal()
        if journal is None:
            raise RootError(
                f"{self.layout.root} is open read-only; open it with CheckpointManager(root, mode='w') to repair it"
            )
        return journal

    def find_leftovers(self) -> tuple[list[Path], list[str]]:
        """What a writer cleans on opening, found without touching anything: (files, manifests to rebuild).

        Leftovers are temp files, step files without a manifest entry, and, in a folder without a
        manifest and without step files (a crash while creating an experiment), the files named after
        its hash. A broken manifest, or a lost one next to step files, is rebuilt from the step files
        that verify; for those only temp files are listed, since which step files verify is known
        only once they are read.
        """
        found: list[Path] = []
        rebuild: list[str] = []
        for name in self.storage.listdir(self.layout.checkpoints_dir):
            if not is_hash(name) or not self.storage.is_dir(self.layout.checkpoints_dir / name):
                continue
            exp = self.layout.experiment(name)
            escaping = exp.escaping_folders()
            if escaping:
                # cleaning deletes files in these folders: never follow a symlink out of the experiment
                log.error(
                    "weightslab: %s is left as it is: %s",
                    name,
                    "; ".join(f"{folder} is a symlink to {real}" for folder, real in escaping.items()),
                )
                continue
            has_steps = any(parse_step_file(f) for f in self.storage.listdir(exp.model_dir))
            try:
                # exists(), not is_file(): a manifest that cannot be read (permissions, not a file) is an
                # error for the user to fix, never a reason to rebuild it over
                m: Manifest | None = self.manifests.read(name) if self.storage.exists(exp.manifest) else None
                # step files are written only once the manifest exists: it was lost, not never written
                broken = m is None and has_steps
            except ManifestError:
                m, broken = None, True
            if broken:
                rebuild.append(name)
                found += [exp.model_dir / f for f in self.storage.listdir(exp.model_dir) if TMP_MARKER in f]
                continue
            if m is not None:
                found += self.manifests.stale_logs(name)  # a compaction that crashed before its cleanup
            listed = {e.file for e in m.checkpoints} if m else set()
            for sub in (exp.model_dir, exp.hp_dir, exp.dir):
                for fname in self.storage.listdir(sub):
                    path = sub / fname
                    if sub == exp.model_dir and parse_shard_dir(fname) is not None:
                        # a sharded save that crashed before its commit: every file it left
                        if exp.relative(path) not in listed:
                            found += list(self.storage.files_under(path))
                        continue
                    if not self.storage.is_file(path):
                        continue
                    ours = TMP_MARKER in fname or parse_step_file(fname) is not None
                    if m is None and sub != exp.dir:
                        ours = ours or fname.startswith(name)
                    if m is None and sub == exp.dir:
                        ours = ours or fname == SUMMARY_NAME  # the summary of a manifest never written
                    if ours and exp.relative(path) not in listed:
                        found.append(path)
        return found, rebuild

    def clean_leftovers(self) -> list[Path]:
        """Rebuild lost or broken manifests, finish interrupted replacements, remove crash leftovers."""
        journal = self._writer_journal()
        _, rebuild = self.find_leftovers()
        for name in rebuild:
            log.error(
                "weightslab: the manifest of %s is missing or broken; rebuilding it from the step files that verify",
                name,
            )
            self.rebuild_manifest(name)
        for name in self.manifests.experiments():
            with contextlib.suppress(ManifestError):
                self.settle_pending(self.manifests.read(name))
        removed, _ = self.find_leftovers()
        for path in removed:
            self.storage.remove(path)
        for folder in {p.parent for p in removed if parse_shard_dir(p.parent.name) is not None}:
            with contextlib.suppress(OSError):
                self.storage.remove_dir(folder)
        for name in self.storage.listdir(self.layout.checkpoints_dir):
            exp_dir = self.layout.checkpoints_dir / name
            if is_hash(name) and self.storage.is_dir(exp_dir) and not self.manifests.has(name):
                exp = self.layout.experiment(name)
                for d in (exp.model_dir, exp.hp_dir, exp.data_dir, exp.dir):
                    with contextlib.suppress(OSError):
                        self.storage.remove_dir(d)  # only empty folders go
        if removed:
            journal.append("leftovers_removed", files=[str(p.relative_to(self.layout.root)) for p in removed])
            log.info("weightslab: removed %d crash leftover(s) under %s", len(removed), self.layout.root)
        return removed

    def settle_pending(self, m: Manifest) -> Manifest:
        """Finish or undo replacements that a crash interrupted."""
        changed = False
        for entry in m.checkpoints:
            if entry.pending is None:
                continue
            path = self.layout.experiment(m.exp_hash).resolve(entry.file)
            try:
                size, digest = self.storage.checksum(path)
            except FileNotFoundError:
                continue
            if (size, digest) == (entry.pending.bytes, entry.pending.xxh3_128):
                fixed = _with_pending(entry, None, bytes=size, xxh3_128=digest)
            else:
                fixed = _with_pending(entry, None)
            m = m.with_entry(fixed)
            changed = True
        if changed:
            with self.manifests.lock:
                self.manifests.write(m)
        return m

    def rebuild_manifest(self, exp_hash: str) -> Manifest:
        """Rebuild a lost or broken manifest from the step files that load and match.

        Each step file is opened with ``weights_only=True`` and kept when its format, hash and step
        agree with its name; its entry gets a fresh checksum. Parent and hashes come from the journal.
        The broken file is kept beside it as ``manifest.json.broken-<time>`` (and each commit log as
        ``manifest.<generation>.jsonl.broken-<time>``); nothing is silently emptied.
        """
        journal = self._writer_journal()
        exp = self.layout.experiment(exp_hash)
        created, journalled, commit_rank = self._journalled(exp_hash)
        parent = None
        if created and isinstance(created.get("parent"), dict):
            parent = ParentRef.from_dict(created["parent"])
        entries: list[CheckpointEntry] = []
        for fname in self.storage.listdir(exp.model_dir):
            parsed = parse_step_file(fname)
            if parsed is not None and parsed[0] == exp_hash:
                entry = self._recovered_entry(exp.model_dir / fname, exp_hash, parsed[1], journalled)
                if entry is not None:
                    entries.append(entry)
        kept_as = None
        with self.manifests.lock:
            stamp = int(time.time())
            if self.storage.exists(exp.manifest):
                kept_as = exp.manifest.with_name(f"manifest.json.broken-{stamp}")
                self.storage.replace(exp.manifest, kept_as)
            for log_file in self.manifests.log_files(exp_hash):  # its commit logs are kept with it
                self.storage.replace(log_file, log_file.with_name(f"{log_file.name}.broken-{stamp}"))
            m = Manifest(
                exp_hash=exp_hash,
                architecture_hash=str((created or {}).get("architecture_hash", "unknown")),
                hyperparams_hash=str((created or {}).get("hyperparams_hash", "unknown")),
                created=float((created or {}).get("time", time.time())),
                parent=parent,
                retention=dict((created or {}).get("retention") or {}),
                checkpoints=_in_journalled_order(entries, commit_rank),
            )
            self.manifests.write(m)
        journal.append(
            "manifest_rebuilt",
            exp_hash=exp_hash,
            recovered=[e.step for e in m.checkpoints],
            kept_broken_as=None if kept_as is None else str(kept_as.relative_to(self.layout.root)),
        )
        log.warning(
            "weightslab: rebuilt the manifest of %s with %d checkpoint(s)", exp_hash, len(m.checkpoints)
        )
        return m

    def _journalled(self, exp_hash: str) -> tuple[dict[str, Any] | None, dict[int, str], dict[int, int]]:
        """From the journal: (the experiment_created record, {step: its last saved xxh3_128},
        {step: the position of its last save})."""
        created = None
        journalled: dict[int, str] = {}
        commit_rank: dict[int, int] = {}
        for index, record in enumerate(read_events(self.layout.events_file, self.storage)):
            if record.get("exp_hash") != exp_hash:
                continue
            if record["event"] == "experiment_created":
                created = record
            elif record["event"] == "checkpoint_saved" and isinstance(record.get("xxh3_128"), str):
                journalled[int(record["step"])] = record["xxh3_128"]
                commit_rank[int(record["step"])] = index
        return created, journalled, commit_rank

    def _recovered_entry(
        self, path: Path, exp_hash: str, step: int, journalled: dict[int, str]
    ) -> CheckpointEntry | None:
        """The entry of a step file that loads, holds what its name says and matches the journal; else None."""
        from weightslab.format.stepfile import load_step_file  # torch: only a rebuild needs it

        try:
            data = load_step_file(path, mmap=True, storage=self.storage)
            if data.get("exp_hash") != exp_hash or data.get("step") != step:
                raise CheckpointFormatError(f"{path} holds {data.get('exp_hash')} step {data.get('step')}")
            size, digest = self.storage.checksum(path)
            if step in journalled and journalled[step] != digest:
                raise CheckpointFormatError(
                    f"its xxh3_128 {digest} differs from the journalled {journalled[step]}"
                )
        except (WeightslabError, OSError) as exc:  # a missing blob, a codec not installed...
            log.warning(
                "weightslab: %s does not verify and is left out of the rebuilt manifest: %s", path, exc
            )
            return None
        metrics = {
            k: (float(v) if v is not None else None) for k, v in dict(data.get("metrics") or {}).items()
        }
        return CheckpointEntry(
            step=step,
            file=path.relative_to(self.layout.experiment(exp_hash).dir).as_posix(),
            bytes=size,
            xxh3_128=digest,
            created=float(data.get("created") or self.storage.mtime(path)),
            trigger=str(data.get("trigger", "step")),
            metrics=metrics,
            description="recovered by rebuild_manifest",
        )


def _with_pending(
    entry: CheckpointEntry, pending: PendingReplacement | None, **changes: Any
) -> CheckpointEntry:
    return dataclasses.replace(entry, pending=pending, **changes)


def _in_journalled_order(entries: list[CheckpointEntry], rank: dict[int, int]) -> list[CheckpointEntry]:
    """Entries with their commit order from the journal (step order where it is silent); an entry that a
    later commit at a smaller step went back from is abandoned."""
    ordered = sorted(entries, key=lambda e: (rank.get(e.step, -1), e.step))
    out: list[CheckpointEntry] = []
    for seq, e in enumerate(ordered, start=1):
        later_steps = [x.step for x in ordered[seq:]]
        out.append(dataclasses.replace(e, seq=seq, abandoned=any(s < e.step for s in later_steps)))
    return sorted(out, key=lambda e: e.step)
