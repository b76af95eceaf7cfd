"""Content-addressed tensor blobs: their names under a root and the reference records step files hold.

A ``storage="dedup"`` step file is still a small ``torch.save`` zip file (``weights_only``-loadable):
every tensor of at least :data:`INLINE_LIMIT` bytes is replaced by a reference record, a plain dict

    {"__weightslab_blob__": 1, "digest": <xxh3-128 of the raw bytes>, "dtype": "float32",
     "shape": [768, 768], "nbytes": 2359296, "codec": "raw" | "zstd"}

and the step dict gets a top-level ``"blobs"`` list: the sorted digests it references (what garbage
collection marks as live). The blob itself lives once per root at ``blobs/<2 hex>/<32 hex>`` (raw
bytes, C order) or ``blobs/<2 hex>/<32 hex>.zst`` (compressed with :mod:`weightslab.format.codec`).
The digest always names the RAW bytes, so a tensor deduplicates across codecs.

:func:`resolve_references` turns the records back into tensors (memory-mapped for raw blobs), so the
readers above see ordinary step dicts. Every field read from a file is checked before it names a
path or a dtype: a hand-edited step file cannot point outside ``blobs/`` or run code.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from weightslab.errors import CheckpointCorruptedError, CheckpointFormatError, ConfigError
from weightslab.storage.base import TMP_MARKER, Storage
from weightslab.util.digests import digest as _xxh3_128_hex

if TYPE_CHECKING:  # torch is imported by the functions that need it: `weightslab ls` never loads it
    import torch

REF_KEY = "__weightslab_blob__"
"""The key that marks a dict of a step file as a reference record (its value: the record version, 1)."""
REFS_KEY = "blobs"
"""The top-level key of a dedup step dict: the sorted digests of the blobs it references."""
INLINE_LIMIT = 64 * 1024
"""Tensors smaller than this stay inline in the step file (a blob per bias vector costs more than it saves)."""
BLOBS_DIR = "blobs"

Codec = Literal["raw", "zstd"]
CODEC_SUFFIX: dict[str, str] = {"raw": "", "zstd": ".zst"}

_DTYPE_NAMES = (
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "complex64",
    "complex128",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
    "float8_e4m3fn",
    "float8_e5m2",
)


@functools.cache
def _dtypes() -> dict[str, torch.dtype]:
    """The dtypes a record may name (looked up in this table, never by getattr on a name from a file)."""
    import torch

    return {n: getattr(torch, n) for n in _DTYPE_NAMES if isinstance(getattr(torch, n, None), torch.dtype)}


@dataclass(frozen=True)
class BlobRef:
    """One reference record, checked: which blob, and the tensor it rebuilds."""

    digest: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    codec: Codec

    def to_record(self) -> dict[str, Any]:
        """The plain dict a step file holds (weights_only-loadable)."""
        return {
            REF_KEY: 1,
            "digest": self.digest,
            "dtype": str(self.dtype).removeprefix("torch."),
            "shape": list(self.shape),
            "nbytes": self.nbytes,
            "codec": self.codec,
        }


def is_record(obj: Any) -> bool:
    """Whether ``obj`` is a reference record (a dict carrying :data:`REF_KEY`)."""
    return isinstance(obj, dict) and REF_KEY in obj


def is_digest(value: Any) -> bool:
    """Whether ``value`` is a 32-character lowercase hex xxh3-128 digest (safe to put in a path)."""
    return isinstance(value, str) and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def parse_record(record: dict[str, Any], where: Path) -> BlobRef:
    """The checked :class:`BlobRef` of a record read from step file ``where``.

    Raises CheckpointFormatError naming the file and the bad field.
    """

    def bad(why: str) -> CheckpointFormatError:
        return CheckpointFormatError(
            f"{where} holds a malformed blob reference ({why}); the step file was edited or damaged: "
            "resume from another checkpoint"
        )

    digest, dtype_name, shape, nbytes, codec = (
        record.get(k) for k in ("digest", "dtype", "shape", "nbytes", "codec")
    )
    if record.get(REF_KEY) != 1:
        raise bad(f"record version {record.get(REF_KEY)!r}, this version reads 1")
    if not is_digest(digest):
        raise bad(f"digest {digest!r} is not 32 lowercase hex digits")
    if dtype_name not in _dtypes():
        raise bad(f"dtype {dtype_name!r} is not one of {sorted(_dtypes())}")
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    dtype = _dtypes()[dtype_name]
    if not isinstance(nbytes, int) or nbytes != math.prod(shape) * dtype.itemsize:
        raise bad(f"nbytes {nbytes!r} does not match shape {shape} of {dtype_name}")
    if codec not in CODEC_SUFFIX:
        raise bad(f"codec {codec!r} is not one of {sorted(CODEC_SUFFIX)}")
    return BlobRef(str(digest), dtype, tuple(shape), nbytes, codec)


# -- names --------------------------------------------------------------------------------------------
def blobs_dir(root: Path) -> Path:
    """The blob store of a root: ``<root>/blobs``."""
    return root / BLOBS_DIR


def blob_path(root: Path, digest: str, codec: str) -> Path:
    """Where the blob ``digest`` stored with ``codec`` lives: ``blobs/<2 hex>/<digest>[.zst]``."""
    return blobs_dir(root) / digest[:2] / f"{digest}{CODEC_SUFFIX[codec]}"


def parse_blob_name(name: str) -> tuple[str, Codec] | None:
    """``<digest>`` -> (digest, "raw"), ``<digest>.zst`` -> (digest, "zstd"), anything else -> None."""
    if TMP_MARKER in name:
        return None
    if name.endswith(".zst"):
        return (name[:-4], "zstd") if is_digest(name[:-4]) else None
    return (name, "raw") if is_digest(name) else None


def root_of_step_file(path: Path) -> Path | None:
    """The root a step file is under (the folder above its ``checkpoints/``), or None when it is not in one."""
    for parent in path.parents:
        if parent.name == "checkpoints":
            return parent.parent
    return None


# -- bytes --------------------------------------------------------------------------------------------
def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of ``tensor`` in C order, as the blob holds them (a view when it is contiguous on CPU)."""
    import torch

    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.resolve_conj().resolve_neg()
    if not t.is_contiguous():
        t = t.contiguous()
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]


def digest_of(data: bytes | memoryview) -> str:
    """The xxh3-128 hex digest that names a blob."""
    return _xxh3_128_hex(data)  # libxxhash when present: the GIL is released while it hashes


def externalizable(obj: Any) -> bool:
    """Whether ``obj`` is a dense tensor large enough to be stored as a blob."""
    import torch

    return (
        type(obj) in (torch.Tensor, torch.nn.Parameter)
        and obj.layout == torch.strided
        and not obj.is_quantized
        and str(obj.dtype).removeprefix("torch.") in _dtypes()
        and obj.numel() * obj.element_size() >= INLINE_LIMIT
    )


def map_tensors(obj: Any, fn: Callable[[Any], Any | None]) -> Any:
    """A copy of the containers (dict, list, tuple) of ``obj`` with each leaf for which ``fn`` returns
    something replaced by it; other leaves are kept as they are."""
    if type(obj) in (dict, OrderedDict) and not is_record(obj):
        out = type(obj)((k, map_tensors(v, fn)) for k, v in obj.items())
        if isinstance(obj, OrderedDict):  # a state_dict's _metadata (module versions) rides along
            out.__dict__.update(obj.__dict__)
        return out
    if type(obj) is list:
        return [map_tensors(v, fn) for v in obj]
    if type(obj) is tuple:
        return tuple(map_tensors(v, fn) for v in obj)
    out = fn(obj)
    return obj if out is None else out


def iter_records(obj: Any) -> Iterator[dict[str, Any]]:
    """Every reference record inside ``obj``'s containers."""
    if is_record(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from iter_records(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from iter_records(v)


def referenced_digests(data: Any) -> list[str]:
    """The digests a loaded step dict references (its ``"blobs"`` list; [] for a self-contained file)."""
    refs = data.get(REFS_KEY) if isinstance(data, dict) else None
    return [d for d in refs if is_digest(d)] if isinstance(refs, list) else []


# -- reading ------------------------------------------------------------------------------------------
def codec_module() -> Any:
    """:mod:`weightslab.format.codec` (zstd with byte grouping), or ConfigError naming the fix."""
    try:
        return importlib.import_module("weightslab.format.codec")
    except ImportError as exc:
        raise ConfigError(
            "zstd-compressed blobs need weightslab.format.codec, which cannot be imported "
            f"({exc}); install the zstd dependency (pip install zstandard) or pass compression=None"
        ) from exc


def decompress(blob: bytes) -> bytes:
    """The raw bytes of a compressed blob; ConfigError when the codec module is not available."""
    return bytes(codec_module().decompress_tensor_bytes(blob))


def read_blob_bytes(storage: Storage, root: Path, ref: BlobRef) -> bytes:
    """The raw bytes of the blob ``ref`` names (decompressed); FileNotFoundError when it is gone."""
    data = storage.read_bytes(blob_path(root, ref.digest, ref.codec))
    return decompress(data) if ref.codec == "zstd" else data


def blob_tensor(
    storage: Storage, root: Path, ref: BlobRef, *, mmap: bool, where: Path, verify: bool = False
) -> torch.Tensor:
    """The tensor ``ref`` names: memory-mapped (copy-on-write) for a raw blob with ``mmap``, else read.

    With ``verify`` the bytes are hashed and compared with the digest. Raises CheckpointCorruptedError
    naming the blob when it is missing, of the wrong size, or (``verify``) its bytes differ.
    """
    import torch

    path = blob_path(root, ref.digest, ref.codec)
    try:
        if ref.codec == "raw" and mmap and ref.nbytes > 0:
            size = storage.size(path)
            if size != ref.nbytes:
                raise CheckpointCorruptedError(
                    path,
                    ref.digest,
                    "<not computed>",
                    f"blob of step file {where} is {size} bytes, expected {ref.nbytes}",
                )
            flat = torch.from_file(
                str(storage.local_file(path)), shared=False, size=math.prod(ref.shape), dtype=ref.dtype
            )
        else:
            raw = read_blob_bytes(storage, root, ref)
            if len(raw) != ref.nbytes:
                raise CheckpointCorruptedError(
                    path,
                    ref.digest,
                    "<not computed>",
                    f"blob of step file {where} holds {len(raw)} bytes, expected {ref.nbytes}",
                )
            flat = (
                torch.frombuffer(bytearray(raw), dtype=ref.dtype) if raw else torch.empty(0, dtype=ref.dtype)
            )
    except FileNotFoundError:
        raise CheckpointCorruptedError(
            path, ref.digest, "<missing>", f"a blob that step file {where} references is gone"
        ) from None
    tensor = flat.view(ref.shape)
    if verify:
        actual = digest_of(tensor_bytes(tensor))
        if actual != ref.digest:
            raise CheckpointCorruptedError(path, ref.digest, actual, f"a blob of step file {where}")
    return tensor


def resolve_references(
    data: dict[str, Any],
    storage: Storage,
    where: Path,
    *,
    mmap: bool = True,
    map_location: Any = "cpu",
    verify: bool = False,
) -> dict[str, Any]:
    """``data`` with every reference record replaced by its tensor (``data`` itself when it has none).

    Each record gets a tensor of its own (memory-mapped copy-on-write for raw blobs). Raises
    CheckpointFormatError (a malformed record, or a step file outside a root) and
    CheckpointCorruptedError (a missing or damaged blob).
    """
    if REFS_KEY not in data:
        return data
    root = root_of_step_file(where)
    if root is None:
        raise CheckpointFormatError(
            f"{where} references blobs but is not inside a checkpoint root (no checkpoints/ folder above "
            "it); open it in its root, or export it with `weightslab export --format pt` first"
        )
    import torch

    device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"

    def resolve(obj: Any) -> Any | None:
        if not is_record(obj):
            return None
        # one tensor per record, even where two records name the same bytes (two zero-initialised
        # optimizer moments): a restore may keep the tensor and update it in place
        t = blob_tensor(storage, root, parse_record(obj, where), mmap=mmap, where=where, verify=verify)
        return t if str(device) == "cpu" else t.to(device)

    out: dict[str, Any] = map_tensors(data, resolve)
    return out
