"""S3Storage on a real S3 server (SeaweedFS): every Storage operation, round trip."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash

from weightslab.storage.base import HashingWriter
from weightslab.storage.s3 import ANCHOR, S3Storage, parse_s3_url

from .conftest import S3Server

pytestmark = pytest.mark.s3

MiB = 1 << 20


def blob(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that differ from one part to the next (so a misplaced part changes the checksum)."""
    return bytes((i * 7 + seed + i // 4099) & 0xFF for i in range(n))


# -- paths -------------------------------------------------------------------------------------
def test_url_maps_to_a_virtual_root_that_survives_resolve() -> None:
    s = S3Storage("s3://my-bucket/runs/exp1", {"endpoint_url": "http://127.0.0.1:1"})
    assert s.root == Path("/", ANCHOR, "my-bucket", "runs/exp1")
    assert str(s.root) == "/s3:/my-bucket/runs/exp1"
    # the layout's traversal checks resolve paths: a virtual path must come back unchanged
    assert Path(os.path.realpath(s.root / "checkpoints" / "x")) == s.root / "checkpoints" / "x"
    assert (s.root / "a").resolve() == s.root / "a"
    assert s.root.expanduser().absolute() == s.root
    assert s.key_for(s.root) == "runs/exp1"
    assert s.key_for(s.root / "logs" / "events.jsonl") == "runs/exp1/logs/events.jsonl"
    assert s.url_for(s.root / "logs" / "events.jsonl") == "s3://my-bucket/runs/exp1/logs/events.jsonl"
    assert s.path_for("s3://my-bucket/runs/exp1/logs/x") == s.root / "logs" / "x"
    assert s.path_for("runs/exp1/logs/x") == s.root / "logs" / "x"
    bare = S3Storage("s3://my-bucket", {})
    assert bare.root == Path("/s3:/my-bucket")
    assert bare.key_for(bare.root / "a" / "b") == "a/b"
    assert bare.url_for(bare.root) == "s3://my-bucket"


@pytest.mark.parametrize(
    "path",
    [
        "/s3:/my-bucket/other/x",
        "/s3:/other-bucket/runs/exp1/x",
        "/tmp/runs/exp1",
        "/s3:/my-bucket/runs/exp1/../x",
    ],
)
def test_paths_outside_the_root_are_refused(path: str) -> None:
    s = S3Storage("s3://my-bucket/runs/exp1", {})
    with pytest.raises(ValueError):
        s.key_for(Path(path))


@pytest.mark.parametrize(
    "url", ["my-bucket/x", "s3://AB/x", "s3://ab/x", "s3://my-bucket/a/../b", "gs://b-b/x"]
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_s3_url(url)


def test_prefix_slashes_are_normalised() -> None:
    assert parse_s3_url("s3://my-bucket//a//b/") == ("my-bucket", "a/b")


# -- reading and writing -----------------------------------------------------------------------
def test_write_read_and_metadata_round_trip(store: S3Storage) -> None:
    root = store.root
    f = root / "checkpoints" / "h" / "model" / "a.bin"
    assert not store.exists(f) and not store.is_file(f) and not store.is_dir(f.parent)
    written = store.write_bytes_atomic(f, b"hello")
    assert written.path == f and written.bytes == 5
    assert written.xxh3_128 == xxhash.xxh3_128_hexdigest(b"hello")
    assert store.read_bytes(f) == b"hello"
    assert store.exists(f) and store.is_file(f) and not store.is_dir(f)
    assert store.is_dir(f.parent) and store.is_dir(root / "checkpoints") and store.exists(root)
    assert store.size(f) == 5
    assert store.checksum(f) == (5, written.xxh3_128)
    assert abs(store.mtime(f) - store._server_now()) < 120
    assert store.read_with_etag(f)[0] == b"hello"
    # overwrite
    store.write_bytes_atomic(f, b"")
    assert store.read_bytes(f) == b"" and store.size(f) == 0
    assert store.checksum(f) == (0, xxhash.xxh3_128_hexdigest(b""))


def test_missing_objects_raise_file_not_found(store: S3Storage) -> None:
    p = store.root / "nope"
    for op in (
        store.read_bytes,
        store.size,
        store.mtime,
        store.checksum,
        store.local_file,
        store.read_with_etag,
    ):
        with pytest.raises(FileNotFoundError):
            op(p)
    assert store.listdir(p) == [] and list(store.files_under(p)) == []
    store.remove(p)  # absent is fine
    store.remove_dir(p)


def test_folders_listing_and_removal(store: S3Storage) -> None:
    root = store.root
    store.makedirs(root / "checkpoints")
    store.makedirs(root / "checkpoints")  # existing is fine
    store.makedirs(root / "data" / "deep" / "er")
    assert store.is_dir(root / "checkpoints") and store.listdir(root / "checkpoints") == []
    assert store.is_dir(root / "data") and store.listdir(root / "data") == ["deep"]
    store.write_bytes_atomic(root / "checkpoints" / "e1" / "manifest.json", b"{}")
    store.write_bytes_atomic(root / "checkpoints" / "e1" / "model" / "s1.pt", b"1")
    store.write_bytes_atomic(root / "checkpoints" / "b.txt", b"2")
    assert store.listdir(root) == ["checkpoints", "data"]
    assert store.listdir(root / "checkpoints") == ["b.txt", "e1"]
    assert store.listdir(root / "checkpoints" / "e1") == ["manifest.json", "model"]
    assert sorted(store.files_under(root / "checkpoints")) == sorted(
        [
            root / "checkpoints" / "e1" / "manifest.json",
            root / "checkpoints" / "e1" / "model" / "s1.pt",
            root / "checkpoints" / "b.txt",
        ]
    )
    with pytest.raises(OSError) as info:
        store.remove_dir(root / "checkpoints" / "e1")
    assert info.value.errno == errno.ENOTEMPTY
    store.remove(root / "checkpoints" / "e1" / "model" / "s1.pt")
    store.remove_dir(root / "checkpoints" / "e1" / "model")  # nothing left in it (SeaweedFS keeps the folder)
    assert store.listdir(root / "checkpoints" / "e1") == ["manifest.json"]
    store.remove_dir(root / "data" / "deep" / "er")  # only its marker: removed
    assert not store.is_dir(root / "data" / "deep" / "er")
    many = [root / "many" / f"f{i:04d}" for i in range(1005)]  # more than one listing page (1000)
    store.fs.pipe({store.fs_path(p): b"x" for p in many})
    assert store.listdir(root / "many") == [p.name for p in many]
    assert len(list(store.files_under(root / "many"))) == 1005


def test_write_atomic_streams_multipart_and_hashes(s3_server: S3Server, s3_url: str, tmp_path: Path) -> None:
    store = S3Storage(s3_url, s3_server.storage_options(), part_size=5 * MiB, max_inflight_parts=2)
    data = blob(13 * MiB + 12345)
    target = store.root / "big.bin"

    def produce(writer: HashingWriter) -> None:
        view = memoryview(data)
        for start in range(0, len(data), 3 * MiB + 17):  # writes that straddle part boundaries
            writer.write(view[start : start + 3 * MiB + 17])

    written = store.write_atomic(target, produce)
    assert written.bytes == len(data) and written.xxh3_128 == xxhash.xxh3_128_hexdigest(data)
    assert store.checksum(target) == (len(data), written.xxh3_128)
    assert store.read_bytes(target) == data
    assert store.incomplete_uploads() == []
    # exactly one part, and exactly an empty object
    for n in (5 * MiB, 0, 1):

        def produce_n(wr: HashingWriter, n: int = n) -> None:
            wr.write(data[:n])

        w = store.write_atomic(store.root / f"p{n}", produce_n)
        assert store.checksum(store.root / f"p{n}") == (n, w.xxh3_128)
    big = store.write_bytes_atomic(store.root / "big2.bin", data)
    assert store.checksum(store.root / "big2.bin") == (len(data), big.xxh3_128)


def test_a_failed_write_leaves_the_old_object_and_no_upload(s3_server: S3Server, s3_url: str) -> None:
    store = S3Storage(s3_url, s3_server.storage_options(), part_size=5 * MiB)
    target = store.root / "f.bin"
    store.write_bytes_atomic(target, b"old")

    def produce(writer: HashingWriter) -> None:
        writer.write(blob(12 * MiB))  # two parts are sent before the failure
        raise RuntimeError("serialiser failed")

    with pytest.raises(RuntimeError, match="serialiser failed"):
        store.write_atomic(target, produce)
    assert store.read_bytes(target) == b"old"
    assert store.incomplete_uploads() == []
    with pytest.raises(RuntimeError):
        store.write_atomic(store.root / "new.bin", produce)
    assert not store.exists(store.root / "new.bin")


def test_torch_save_through_write_atomic_and_mmap_load_from_local_file(store: S3Storage) -> None:
    state: dict[str, Any] = {"w": torch.arange(1000, dtype=torch.float32).reshape(10, 100), "step": 7}
    target = store.root / "model" / "s.pt"
    written = store.write_atomic(target, lambda w: torch.save(state, w))  # type: ignore[arg-type]
    local = store.local_file(target)
    assert local.is_file() and local.stat().st_size == written.bytes
    loaded = torch.load(local, mmap=True, weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 7
    assert store.local_file(target) == local  # cached while the object is unchanged
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    store.write_bytes_atomic(target, buf.getvalue())
    again = store.local_file(target)
    assert again != local and not local.exists()  # the old download is dropped
    assert torch.equal(torch.load(again, weights_only=True)["w"], torch.zeros(3))


def test_append_line_read_modify_write(store: S3Storage) -> None:
    f = store.root / "logs" / "events.jsonl"
    store.append_line(f, b'{"a": 1}\n')
    store.append_line(f, b'{"b": 2}\n')
    assert store.read_bytes(f) == b'{"a": 1}\n{"b": 2}\n'
    store.write_bytes_atomic(f, b'{"a": 1}\n{"torn')  # a torn last line: ended before appending
    store.append_line(f, b'{"c": 3}\n')
    assert store.read_bytes(f).splitlines() == [b'{"a": 1}', b'{"torn', b'{"c": 3}']


def test_create_exclusive_and_put_if_match(store: S3Storage) -> None:
    f = store.root / "commit.json"
    assert store.create_exclusive(f, b"first") is True
    assert store.create_exclusive(f, b"second") is False
    data, etag = store.read_with_etag(f)
    assert data == b"first"
    assert store.put_if_match(f, b"x", '"0123456789abcdef0123456789abcdef"') is None
    new = store.put_if_match(f, b"v2", etag)
    assert new is not None and new != etag
    assert store.put_if_match(f, b"v3", etag) is None  # stale ETag
    assert store.read_with_etag(f) == (b"v2", new)
    assert store.put_if_match(store.root / "absent", b"x", new) is None
    assert store.put_if_match(store.root / "fresh", b"x", None) is not None
    assert store.remove_if_match(f, etag) is False and store.exists(f)
    assert store.remove_if_match(f, new) is True and not store.exists(f)


def test_replace_copies_then_deletes(store: S3Storage) -> None:
    src, dst = store.root / "a" / "manifest.json", store.root / "a" / "manifest.json.broken-1"
    store.write_bytes_atomic(src, b"broken")
    store.write_bytes_atomic(dst, b"older")
    store.replace(src, dst)
    assert not store.exists(src) and store.read_bytes(dst) == b"broken"
    with pytest.raises(FileNotFoundError):
        store.replace(src, dst)


def test_abort_incomplete_multipart_uploads(s3_server: S3Server, s3_url: str) -> None:
    store = S3Storage(s3_url, s3_server.storage_options())
    other = S3Storage(s3_url + "-other", s3_server.storage_options())
    started = []
    for s, name in ((store, "a.pt"), (store, "sub/b.pt"), (other, "c.pt")):
        key = s.key_for(s.root / name)
        up = s._call("create_multipart_upload", Key=key)
        s._call("upload_part", Key=key, UploadId=up["UploadId"], PartNumber=1, Body=b"x" * 100)
        started.append((s, key, up["UploadId"]))
    mine = {(u.key, u.upload_id) for u in store.incomplete_uploads()}
    assert mine == {(k, u) for s, k, u in started if s is store}
    assert store.abort_incomplete_uploads(older_than_s=3600) == []  # too young: spared
    aborted = store.abort_incomplete_uploads()
    assert {(u.key, u.upload_id) for u in aborted} == mine
    assert store.incomplete_uploads() == []
    assert len(other.incomplete_uploads()) == 1  # another root's upload is not touched
    other.abort_incomplete_uploads()
    assert not store.exists(store.root / "a.pt")


def test_standard_aws_environment_variables(
    s3_server: S3Server, s3_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    store = S3Storage(s3_url)  # no options at all
    assert "endpoint_url" not in store.storage_options
    store.write_bytes_atomic(store.root / "env.txt", b"via env")
    assert store.read_bytes(store.root / "env.txt") == b"via env"
    # botocore itself honours AWS_ENDPOINT_URL too (S3Storage passes it on only for older versions)
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert fs.cat_file(store.fs_path(store.root / "env.txt")) == b"via env"


def test_checkpoint_manager_on_s3(s3_server: S3Server, s3_url: str, tmp_path: Path) -> None:
    from weightslab.components import CheckpointManager
    from weightslab.errors import RootLockedError
    from weightslab.format.layout import CHECKPOINT_FORMAT

    from ..conftest import mlp

    store = S3Storage(s3_url, s3_server.storage_options(), cache_dir=tmp_path / "cache")
    mgr = CheckpointManager(store.root, storage=store)
    try:
        h = "0123456789abcdef"
        mgr.create_experiment(
            exp_hash=h,
            architecture_hash="a" * 16,
            hyperparams_hash="b" * 16,
            parent=None,
            retention={"keep_last": None},
            hyperparams={"config": {"lr": 0.1}},
            models={"model": mlp()},
        )
        for step in (10, 20):
            payload: dict[str, Any] = {
                "format": CHECKPOINT_FORMAT,
                "exp_hash": h,
                "step": step,
                "models": {"model": {"w": torch.full((4, 4), float(step))}},
            }
            mgr.save(h, step, payload, trigger="step", metrics={"loss": 1.0 / step})
        with pytest.raises(RootLockedError, match=f"pid {os.getpid()}"):
            CheckpointManager(store.root, storage=S3Storage(s3_url, s3_server.storage_options()))
        reader = CheckpointManager(
            store.root,
            mode="r",
            storage=S3Storage(s3_url, s3_server.storage_options(), cache_dir=tmp_path / "c2"),
        )
        assert reader.experiments() == [h]
        assert [e.step for e in reader.checkpoints(h)] == [10, 20]
        state = reader.load(h)
        assert torch.equal(state["models"]["model"]["w"], torch.full((4, 4), 20.0))
        report = reader.verify()
        assert report.healthy and report.checked == 2 and report.writer_active, report.problems
        assert sum("checkpoint_saved" in str(e) for e in reader.events()) == 2
    finally:
        mgr.close()
    assert not store.exists(store.root / "logs" / "writer.lock")
    CheckpointManager(store.root, storage=store).close()  # the lease was released: a new writer opens


def test_dcp_writer_and_reader(store: S3Storage) -> None:
    import torch.distributed.checkpoint as dcp

    state = {"a": torch.arange(12.0).reshape(3, 4), "b": torch.ones(5, dtype=torch.int64)}
    folder = store.root / "checkpoints" / "h" / "model" / "shards"
    dcp.save(state, storage_writer=store.dcp_writer(folder))
    assert ".metadata" in store.listdir(folder)
    target = {"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.int64)}
    dcp.load(target, storage_reader=store.dcp_reader(folder))
    assert torch.equal(target["a"], state["a"]) and torch.equal(target["b"], state["b"])
