"""weightslab.format.codec: byte-grouped zstd for tensor bytes, bit-exact, self-describing, checked."""

from __future__ import annotations

import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from weightslab.errors import CheckpointCorruptedError, CompressedBlobError
from weightslab.format import codec
from weightslab.format.codec import (
    HEADER_SIZE,
    compress_tensor_bytes,
    decompress_tensor_bytes,
    decompress_tensor_into,
    decompressed_size,
)


def raw_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's bytes in memory order (bfloat16 and bool included: numpy sees them as uint8)."""
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()


def round_trip(tensor: torch.Tensor, level: int = 3) -> bytes:
    data = raw_bytes(tensor)
    blob = compress_tensor_bytes(data, tensor.element_size(), level)
    assert isinstance(blob, bytes)
    restored = decompress_tensor_bytes(blob)
    assert restored == data
    assert decompressed_size(blob) == len(data)
    return blob


@pytest.fixture(scope="module")
def trained() -> torch.Tensor:
    """The weights of a small MLP after 60 AdamW steps on a synthetic regression, as one float32 vector."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 192),
        torch.nn.GELU(),
        torch.nn.Linear(192, 192),
        torch.nn.GELU(),
        torch.nn.Linear(192, 32),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    target = torch.randn(32, 32)
    for _ in range(60):
        x = torch.randn(16, 32)
        loss = ((model(x) - x @ target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.uint8, torch.bool],
)
def test_round_trip_is_bit_exact_for_each_dtype(trained: torch.Tensor, dtype: torch.dtype) -> None:
    if dtype.is_floating_point:
        tensor = trained.to(dtype)
    elif dtype == torch.bool:
        tensor = trained > 0
    elif dtype == torch.uint8:
        tensor = (trained * 1000).to(torch.int64).remainder(256).to(torch.uint8)
    else:
        tensor = (trained * 1e6).to(torch.int64)
    for level in (1, 3):
        round_trip(tensor, level)
    back = torch.frombuffer(bytearray(decompress_tensor_bytes(round_trip(tensor))), dtype=dtype)
    assert torch.equal(back, tensor)


@pytest.mark.parametrize("element_size", [1, 2, 4, 8, 3, 16])
@pytest.mark.parametrize("length", [0, 1, 7, 63, 64 * 8 - 1, 64 * 8, 64 * 8 + 5, 10_001])
def test_odd_lengths_and_sizes_round_trip(element_size: int, length: int) -> None:
    rng = np.random.default_rng(length * 31 + element_size)
    # half random bytes, half a repeating pattern: both the raw and the zstd segment modes occur
    data = rng.integers(0, 256, size=length, dtype=np.uint8)
    data[: length // 2] = np.arange(length // 2) % 7
    blob = compress_tensor_bytes(data.tobytes(), element_size)
    assert decompress_tensor_bytes(blob) == data.tobytes()
    assert decompressed_size(blob) == length


def test_empty_input() -> None:
    for element_size in (1, 2, 4, 8):
        blob = compress_tensor_bytes(b"", element_size)
        assert decompress_tensor_bytes(blob) == b""
        assert len(blob) < 64
        assert decompress_tensor_into(blob, bytearray()) == 0


def test_nan_inf_signed_zero_subnormal_and_nan_payloads_survive() -> None:
    special = [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 1e-45, -1e-40, 3.4e38]
    values = torch.tensor(special * 100, dtype=torch.float32)
    bits = values.view(torch.int32).clone()
    # NaNs with distinct payloads and sign: a value-level round trip would lose these bits
    bits[::8] = torch.tensor([0x7FC00001, 0x7F800001, -0x00400001, 0x7FFFFFFF] * 25, dtype=torch.int32)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        tensor = bits.view(torch.float32) if dtype == torch.float32 else values.to(dtype)
        blob = round_trip(tensor)
        back = torch.frombuffer(bytearray(decompress_tensor_bytes(blob)), dtype=dtype)
        assert torch.equal(back.view(torch.uint8), tensor.view(torch.uint8))


def test_byte_grouping_compresses_trained_weights_better_than_plain_zstd(trained: torch.Tensor) -> None:
    for dtype, bound in ((torch.float32, 0.90), (torch.bfloat16, 0.75), (torch.float16, 0.90)):
        tensor = trained.to(dtype)
        data = raw_bytes(tensor)
        grouped = compress_tensor_bytes(data, tensor.element_size())
        plain = compress_tensor_bytes(data, 1)  # element size 1: the same zstd level on the interleaved bytes
        assert decompress_tensor_bytes(grouped) == data
        assert len(grouped) < 0.95 * len(plain), (dtype, len(grouped), len(plain), len(data))
        assert len(grouped) < bound * len(data)


def test_incompressible_planes_are_stored_raw_and_the_blob_never_grows_much() -> None:
    data = np.random.default_rng(1).integers(0, 256, size=100_000, dtype=np.uint8).tobytes()
    for element_size in (1, 2, 4, 8):
        blob = compress_tensor_bytes(data, element_size)
        # header + table only: random bytes are kept as they are rather than zstd-framed
        assert len(blob) <= len(data) + HEADER_SIZE + 9 * (element_size + 1)
        assert decompress_tensor_bytes(blob) == data


def test_decompress_into_a_tensor_buffer(trained: torch.Tensor) -> None:
    for dtype in (torch.bfloat16, torch.float32, torch.int64):
        tensor = trained.to(dtype) if dtype.is_floating_point else (trained * 1e6).to(dtype)
        blob = compress_tensor_bytes(raw_bytes(tensor), tensor.element_size())
        out = torch.empty(decompressed_size(blob) // tensor.element_size(), dtype=dtype)
        assert (
            decompress_tensor_into(blob, out.view(torch.uint8).numpy())
            == tensor.numel() * tensor.element_size()
        )
        assert torch.equal(out.view(torch.uint8), tensor.view(torch.uint8))
    with pytest.raises(ValueError, match="exactly"):
        decompress_tensor_into(blob, bytearray(len(raw_bytes(tensor)) - 1))
    with pytest.raises(ValueError, match="read-only"):
        decompress_tensor_into(blob, bytes(len(raw_bytes(tensor))))


@pytest.mark.parametrize("level", [-7, -1, 0, 1, 2, 9, 10, 12])
def test_every_kind_of_level_round_trips(trained: torch.Tensor, level: int) -> None:
    """Negative levels, zstd's default (0), the plane range that uses level 1's finder, and higher levels."""
    for dtype in (torch.bfloat16, torch.float32):
        round_trip(trained.to(dtype), level)


def test_compression_is_deterministic(trained: torch.Tensor) -> None:
    data = raw_bytes(trained.to(torch.bfloat16))
    assert compress_tensor_bytes(data, 2) == compress_tensor_bytes(memoryview(data), 2)
    assert compress_tensor_bytes(data, 2) == compress_tensor_bytes(bytearray(data), 2)
    # a typed buffer (float32 numpy memory) is read as its bytes
    floats = trained.numpy()
    assert compress_tensor_bytes(memoryview(floats), 4) == compress_tensor_bytes(floats.tobytes(), 4)


def test_threads_compress_and_decompress_at_once(trained: torch.Tensor) -> None:
    tensors = [(trained * (i + 1)).to(torch.bfloat16 if i % 2 else torch.float32) for i in range(8)]

    def work(tensor: torch.Tensor) -> bool:
        data = raw_bytes(tensor)
        return all(
            decompress_tensor_bytes(compress_tensor_bytes(data, tensor.element_size(), level)) == data
            for level in (1, 3)
        )

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, tensors * 3))


def _corrupt(blob: bytes, offset: int, value: int | None = None) -> bytes:
    damaged = bytearray(blob)
    damaged[offset] = (damaged[offset] ^ 0x5A) if value is None else value
    return bytes(damaged)


def test_damaged_header_raises_a_corruption_error(trained: torch.Tensor) -> None:
    blob = compress_tensor_bytes(raw_bytes(trained.to(torch.bfloat16)), 2)
    cases = {
        "magic": _corrupt(blob, 0),
        "format version": _corrupt(blob, 4, 9),
        "codec id": _corrupt(blob, 5, 7),
        "element size": _corrupt(blob, 6, 3),
        "flags": _corrupt(blob, 7, 0x80),
        "raw length": _corrupt(blob, 8),
        "checksum": _corrupt(blob, 16),
        "table": _corrupt(blob, HEADER_SIZE + 1),
        "truncated header": blob[: HEADER_SIZE - 1],
        "truncated payload": blob[:-1],
        "trailing bytes": blob + b"\0",
        "not a blob": b"PK\x03\x04" + bytes(40),
    }
    for what, damaged in cases.items():
        with pytest.raises(CompressedBlobError) as caught:
            decompress_tensor_bytes(damaged)
        assert isinstance(caught.value, CheckpointCorruptedError), what
        assert "weightslab verify" in str(caught.value), what
    with pytest.raises(CompressedBlobError, match=r"format version 9.*upgrade weightslab"):
        decompress_tensor_bytes(cases["format version"])


def test_a_damaged_blob_error_names_its_file(tmp_path: Path, trained: torch.Tensor) -> None:
    data = raw_bytes(trained.to(torch.bfloat16))
    path = tmp_path / "blobs" / "ab" / "abcd.zst"
    path.parent.mkdir(parents=True)
    path.write_bytes(_corrupt(compress_tensor_bytes(data, 2), HEADER_SIZE + 40))
    for call in (
        lambda: decompress_tensor_bytes(path.read_bytes(), where=path),
        lambda: decompress_tensor_into(path.read_bytes(), bytearray(len(data)), where=path),
    ):
        with pytest.raises(CompressedBlobError) as caught:
            call()
        assert caught.value.path == str(path)
        assert str(path) in str(caught.value) and "xxh3-64" in str(caught.value)


def test_damaged_payload_raises_in_every_segment(trained: torch.Tensor) -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.uint8):
        tensor = trained.to(dtype) if dtype.is_floating_point else (trained > 0).to(torch.uint8)
        blob = compress_tensor_bytes(raw_bytes(tensor), tensor.element_size())
        segments = 1 if dtype == torch.uint8 else tensor.element_size()
        table_end = HEADER_SIZE + 9 * segments
        lengths = [struct.unpack_from("<BQ", blob, HEADER_SIZE + 9 * i)[1] for i in range(segments)]
        start = table_end
        for length in lengths:
            for offset in (start, start + length // 2, start + length - 1):
                with pytest.raises(CheckpointCorruptedError, match="damaged"):
                    decompress_tensor_bytes(_corrupt(blob, offset))
                with pytest.raises(CheckpointCorruptedError):
                    decompress_tensor_into(_corrupt(blob, offset), bytearray(decompressed_size(blob)))
            start += length


def test_a_forged_length_with_a_valid_checksum_is_still_refused(trained: torch.Tensor) -> None:
    """A blob whose header checksum was recomputed after an edit still fails the decompressed-length check."""
    import xxhash

    blob = bytearray(compress_tensor_bytes(raw_bytes(trained), 4))
    raw_length = struct.unpack_from("<Q", blob, 8)[0]
    struct.pack_into("<Q", blob, 8, raw_length + 4)  # one more element per plane expected
    digest = xxhash.xxh3_64(bytes(blob[:16]))
    digest.update(bytes(blob[HEADER_SIZE:]))
    struct.pack_into("<Q", blob, 16, digest.intdigest())
    with pytest.raises(CompressedBlobError, match="byte plane 0"):
        decompress_tensor_bytes(bytes(blob))


@pytest.mark.parametrize(
    ("element_size", "level", "match"),
    [
        (0, 3, "element_size .* got 0"),
        (256, 3, "element_size .* got 256"),
        ("4", 3, "element_size .* got '4'"),
        (True, 3, "element_size .* got True"),
        (4, 23, "level .* got 23"),
        (4, -8, "level .* got -8"),
        (4, 1.5, "level .* got 1.5"),
    ],
)
def test_bad_arguments_name_the_value(element_size: object, level: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compress_tensor_bytes(b"\0" * 64, element_size, level)  # type: ignore[arg-type]


def test_non_contiguous_data_is_refused_with_the_fix() -> None:
    strided = memoryview(np.arange(100, dtype=np.uint8))[::2]
    with pytest.raises(ValueError, match=r"C-contiguous.*contiguous"):
        compress_tensor_bytes(strided, 1)


def test_missing_zstandard_names_the_extra_to_install() -> None:
    """In a fresh interpreter where zstandard cannot be imported, the codec says what to install."""
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'zstandard' or name.startswith('zstandard.'):\n"
        "            raise ImportError('No module named zstandard')\n"
        "sys.meta_path.insert(0, Block())\n"
        "try:\n"
        "    import weightslab.format.codec\n"
        "except ImportError as exc:\n"
        "    print('IMPORT-ERROR:', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert "IMPORT-ERROR:" in done.stdout, done.stdout + done.stderr
    assert "pip install 'weightslab[compression]'" in done.stdout


def test_importing_weightslab_does_not_import_the_codec() -> None:
    """The default path never pays for compression: neither the codec nor zstandard is loaded."""
    script = "import sys, weightslab; print(sorted(m for m in sys.modules if 'zstandard' in m or m.endswith('.codec')))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_module_constants_describe_the_format() -> None:
    assert codec.MAGIC == b"WLZT"
    assert codec.HEADER_SIZE == 24
    assert codec.GROUPED_SIZES == (2, 4, 8)
