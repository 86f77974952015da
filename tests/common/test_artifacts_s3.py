"""S3ArtifactStore against a real S3-compatible server on loopback (moto's standalone server, a stand-in for S3:
tests/support/s3_server.py), through the real boto3 client; and the same protocol-level behaviour of both stores."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from common.artifacts import ArtifactStore, LocalArtifactStore, get_store
from common.artifacts_s3 import S3ArtifactStore
from common.errors import InvalidRequest
from tests.support.s3_server import CREDENTIALS, S3Server

PART = 5 * 1024 * 1024  # S3's smallest part


@pytest.fixture
def s3(moto_s3: S3Server) -> S3ArtifactStore:
    return S3ArtifactStore(moto_s3.new_bucket(), "tq/artifacts", client=moto_s3.client(), part_size=PART)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, moto_s3: S3Server) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "store")
    return S3ArtifactStore(moto_s3.new_bucket(), "p", client=moto_s3.client(), part_size=PART)


def _objects(s3: S3ArtifactStore) -> list[str]:
    return [o["Key"] for o in s3.client.list_objects_v2(Bucket=s3.bucket).get("Contents", [])]


def test_a_file_larger_than_one_part_is_uploaded_in_parts_and_reads_back_whole(s3: S3ArtifactStore) -> None:
    data = os.urandom(2 * PART + 12345)
    with s3.writer("files/t/big.jsonl") as out:
        for start in range(0, len(data), 1 << 20):
            out.write(data[start:start + (1 << 20)])
    head = s3.client.head_object(Bucket=s3.bucket, Key="tq/artifacts/files/t/big.jsonl")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object's ETag counts its parts
    assert s3.size("files/t/big.jsonl") == len(data)
    with s3.open("files/t/big.jsonl") as fh:
        assert hashlib.sha256(fh.read()).digest() == hashlib.sha256(data).digest()


def test_the_writer_never_holds_more_than_one_part_in_memory(s3: S3ArtifactStore) -> None:
    with s3.writer("files/t/stream.bin") as out:
        for _ in range(3):
            out.write(b"x" * (PART - 1))
            assert len(out.buffer) < PART  # type: ignore[attr-defined]


def test_a_failed_writer_leaves_no_object_and_no_pending_upload(s3: S3ArtifactStore) -> None:
    with pytest.raises(RuntimeError), s3.writer("files/t/broken.bin") as out:
        out.write(b"y" * (PART + 10))  # one part is already sent
        raise RuntimeError("the client went away")
    assert not s3.exists("files/t/broken.bin") and _objects(s3) == []
    assert s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []


def test_an_object_is_not_visible_until_its_writer_completes(s3: S3ArtifactStore) -> None:
    with s3.writer("files/t/late.bin") as out:
        out.write(b"z" * (PART + 1))
        assert not s3.exists("files/t/late.bin")
    assert s3.exists("files/t/late.bin")


def test_reads_are_streamed_in_chunks(s3: S3ArtifactStore) -> None:
    data = os.urandom(3 << 20)
    with s3.writer("k/blob") as out:
        out.write(data)
    got = []
    with s3.open("k/blob") as fh:
        while chunk := fh.read(1 << 20):
            got.append(chunk)
    assert len(got) == 3 and b"".join(got) == data


def test_missing_objects_read_as_missing_files(store: ArtifactStore, tmp_path: Path) -> None:
    assert not store.exists("files/t/nothing")
    with pytest.raises(FileNotFoundError):
        store.open("files/t/nothing")
    with pytest.raises(FileNotFoundError):
        store.size("files/t/nothing")
    assert not (tmp_path / "dest").exists()


def test_list_and_delete_prefix_touch_only_that_prefix(store: ArtifactStore) -> None:
    for key in ("ckpt/j1/a/x.bin", "ckpt/j1/a/sub/y.bin", "ckpt/j1/ab/z.bin", "ckpt/j2/w.bin"):
        with store.writer(key) as out:
            out.write(key.encode())
    assert store.list_prefix("ckpt/j1/a") == ["ckpt/j1/a/sub/y.bin", "ckpt/j1/a/x.bin"]
    store.delete_prefix("ckpt/j1/a/")
    assert store.list_prefix("ckpt/j1") == ["ckpt/j1/ab/z.bin"] and store.exists("ckpt/j2/w.bin")
    store.delete("ckpt/j2/w.bin")
    assert not store.exists("ckpt/j2/w.bin")


def test_put_dir_and_fetch_dir_round_trip_a_folder(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.json").write_bytes(b"{}")
    (src / "sub" / "b.bin").write_bytes(b"b" * 100)
    assert store.put_dir("models/m", src) == [{"path": "a.json", "bytes": 2}, {"path": "sub/b.bin", "bytes": 100}]
    dest = store.fetch_dir("models/m", tmp_path / "dest")
    assert (dest / "a.json").read_bytes() == b"{}" and (dest / "sub" / "b.bin").read_bytes() == b"b" * 100


def test_local_copy_is_a_readable_path_in_the_callers_folder(store: ArtifactStore, tmp_path: Path) -> None:
    with store.writer("files/t/f.jsonl") as out:
        out.write(b"{}\n")
    with store.local_copy("files/t/f.jsonl", tmp_path / "work") as path:
        assert path.read_bytes() == b"{}\n"
    if isinstance(store, S3ArtifactStore):
        assert list((tmp_path / "work").iterdir()) == []  # the copy is gone with the block


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/key", "files/../../x", "", "files\\..\\x"])
def test_keys_that_climb_are_refused_by_both_stores(store: ArtifactStore, key: str) -> None:
    with pytest.raises(InvalidRequest):
        store.exists(key)
    with pytest.raises(InvalidRequest), store.writer(key) as out:
        out.write(b"no")


def test_check_writes_a_probe_and_leaves_nothing(s3: S3ArtifactStore) -> None:
    s3.check()
    assert _objects(s3) == []


def test_get_store_picks_s3_for_an_s3_url(moto_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = moto_s3.new_bucket()
    for name, value in {**CREDENTIALS, "TUNEQUEUE_S3_ENDPOINT_URL": moto_s3.endpoint_url}.items():
        monkeypatch.setenv(name, value)
    from common.settings import get_settings

    get_settings.cache_clear()
    try:
        found = get_store(f"s3://{bucket}/some/prefix")
        assert isinstance(found, S3ArtifactStore) and (found.bucket, found.prefix) == (bucket, "some/prefix")
        with found.writer("files/x") as out:
            out.write(b"1")
        assert moto_s3.client().get_object(Bucket=bucket, Key="some/prefix/files/x")["Body"].read() == b"1"
        assert get_store(f"s3://{bucket}/some/prefix") is found  # one client per location and process
    finally:
        get_settings.cache_clear()
    assert isinstance(get_store("var/elsewhere"), LocalArtifactStore)
