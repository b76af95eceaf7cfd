"""Verifying the blobs a ``storage="dedup"`` step file references: present, of their size, and whole.

``verify`` checks each committed step file's own checksum first (:mod:`.verify`), then, through
:class:`BlobChecker`, every blob it references: a raw blob's xxh3-128 is its digest; a compressed one
is decompressed and its raw bytes hashed. Each blob is checked once per verify run, however many
checkpoints share it. A root without a ``blobs/`` folder costs one look.
"""

from __future__ import annotations

from pathlib import Path

from weightslab.errors import CheckpointFormatError, WeightslabError
from weightslab.format.blobs import (
    BlobRef,
    blob_path,
    blobs_dir,
    digest_of,
    iter_records,
    parse_record,
    read_blob_bytes,
)
from weightslab.format.layout import ExperimentLayout
from weightslab.format.manifest import CheckpointEntry
from weightslab.storage.base import Storage

Finding = tuple[str, str, str]
"""(problem kind, path, detail) as verify reports it: kind "missing", "corrupt" or "unreadable"."""


class BlobChecker:
    """Checks the blobs of the step files of one root, each blob once."""

    def __init__(self, storage: Storage, root: Path) -> None:
        self.storage = storage
        self.root = root
        self.active = storage.is_dir(blobs_dir(root))
        self._seen: dict[tuple[str, str], Finding | None] = {}

    def problem(self, exp: ExperimentLayout, entry: CheckpointEntry) -> Finding | None:
        """The first problem of the blobs ``entry``'s (already verified) step file references, or None."""
        if not self.active or entry.shards:
            return None
        from weightslab.format.stepfile import load_torch_file  # torch: only for a root that has blobs

        path = exp.resolve(entry.file)
        try:
            data = load_torch_file(self.storage.local_file(path), what="step file", mmap=True)
        except (OSError, WeightslabError) as exc:
            return ("unreadable", str(path), f"cannot read its blob references ({exc})")
        for record in iter_records(data if isinstance(data, dict) else {}):
            try:
                ref = parse_record(record, path)
            except CheckpointFormatError as exc:
                return ("corrupt", str(path), str(exc))
            key = (ref.digest, ref.codec)
            if key not in self._seen:
                self._seen[key] = self._check(ref)
            found = self._seen[key]
            if found is not None:
                return found
        return None

    def _check(self, ref: BlobRef) -> Finding | None:
        path = blob_path(self.root, ref.digest, ref.codec)
        try:
            if ref.codec == "raw":
                size, digest = self.storage.checksum(path)
                if size != ref.nbytes:
                    return ("corrupt", str(path), f"blob size {size} bytes, expected {ref.nbytes}")
            else:
                raw = read_blob_bytes(self.storage, self.root, ref)
                if len(raw) != ref.nbytes:
                    return ("corrupt", str(path), f"blob holds {len(raw)} raw bytes, expected {ref.nbytes}")
                digest = digest_of(raw)
        except FileNotFoundError:
            return ("missing", str(path), "blob missing (a committed checkpoint references it)")
        except OSError as exc:
            return (
                "unreadable",
                str(path),
                f"blob cannot be read ({type(exc).__name__}: {exc.strerror or exc})",
            )
        except Exception as exc:  # a damaged compressed blob: the codec's own error
            return ("corrupt", str(path), f"blob cannot be decompressed ({type(exc).__name__}: {exc})")
        if digest != ref.digest:
            return (
                "corrupt",
                str(path),
                f"blob checksum mismatch (xxh3_128 {digest}, expected {ref.digest})",
            )
        return None
