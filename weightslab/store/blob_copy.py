"""Copying the blobs a ``storage="dedup"`` step file references from one root to another (a backup).

Each blob is checked against its digest before it is written, and written atomically and durably
before the caller commits the copied checkpoint, as a save does (:mod:`weightslab.store.blobs`).
"""

from __future__ import annotations

from pathlib import Path

from weightslab.errors import CheckpointCorruptedError
from weightslab.format.blobs import blob_path, decompress, digest_of, iter_records, parse_record
from weightslab.store.parts import ManagerParts


def copy_referenced_blobs(source: ManagerParts, dest: ManagerParts, step_file: Path) -> int:
    """Copy into root ``dest`` every blob that the step file ``step_file`` (already in ``dest``'s
    storage) references and ``dest`` lacks, each checked against its digest first; returns the bytes
    copied. ``source``/``dest``: the two roots' managers.

    For a backup: call it before the step file's entry is committed at the destination. Raises
    CheckpointCorruptedError naming the source blob when it is missing or does not match its digest.
    """
    from weightslab.format.stepfile import load_torch_file  # torch: only when a step file is copied

    data = load_torch_file(dest.storage.local_file(step_file), what="step file", mmap=True)
    copied = 0
    for record in iter_records(data if isinstance(data, dict) else {}):
        ref = parse_record(record, step_file)
        target = blob_path(dest.root, ref.digest, ref.codec)
        if dest.storage.exists(target):
            continue
        origin = blob_path(source.root, ref.digest, ref.codec)
        try:
            body = source.storage.read_bytes(origin)
        except FileNotFoundError:
            raise CheckpointCorruptedError(
                origin, ref.digest, "<missing>", "a blob the checkpoint references is gone from the source"
            ) from None
        raw = decompress(body) if ref.codec == "zstd" else body
        actual = digest_of(raw)
        if actual != ref.digest or len(raw) != ref.nbytes:
            raise CheckpointCorruptedError(
                origin, ref.digest, actual, "the source blob does not match its digest, so it was not copied"
            )
        dest.storage.makedirs(target.parent)
        dest.storage.write_bytes_atomic(target, body)
        copied += len(body)
    return copied
