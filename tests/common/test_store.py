"""The store: atomic writes, local and on S3 (moto's server on 127.0.0.1)."""

import os

import pytest

from tasks.common.errors import StoreError
from tasks.common.manifest import Manifest
from tasks.common.store import Store


def test_local_roundtrip_and_no_temporary_files(tmp_path):
    store = Store(str(tmp_path / "root"))
    store.write_json("a/b.json", {"x": 1})
    store.write_bytes("a/c.bin", b"abc")
    assert store.read_json("a/b.json") == {"x": 1}
    assert store.read_bytes("a/c.bin") == b"abc"
    assert store.list("a") == ["a/b.json", "a/c.bin"]
    assert sorted(os.listdir(tmp_path / "root" / "a")) == ["b.json", "c.bin"]


def test_file_uri_and_relative_roots_are_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Store("rel").root == str(tmp_path / "rel")
    assert Store(f"file://{tmp_path}/x").root == str(tmp_path / "x")


def test_failed_write_leaves_nothing_visible(tmp_path):
    store = Store(str(tmp_path))


    with pytest.raises(FileNotFoundError):
        store.put_file(tmp_path / "does-not-exist", "out/file.bin")
    assert not store.exists("out/file.bin")
    assert list((tmp_path / "out").iterdir()) == []


def test_put_file_move_is_atomic_rename(tmp_path):
    store = Store(str(tmp_path / "store"))
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 10)
    store.put_file(src, "d/dst.bin", move=True)
    assert not src.exists() and store.read_bytes("d/dst.bin") == b"x" * 10


def test_unwritable_store_names_the_root(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = Store(str(blocker / "store"))
    with pytest.raises(StoreError, match="a-file/store"):
        store.check_writable()


def test_manifest_hash_ignores_creation_time(tmp_path):
    store = Store(str(tmp_path))
    one = Manifest(stage="s", name="n", store=store.root, config={"a": 1}, code_version="v", rows={"x": 1})
    two = Manifest(stage="s", name="n", store=store.root, config={"a": 1}, code_version="v", rows={"x": 1},
                   created_at="2000-01-01")
    assert one.content_hash == two.content_hash
    assert Manifest(stage="s", name="n", store=store.root, config={"a": 2}, code_version="v").content_hash != \
        one.content_hash
    one.write(store, "m.json")
    assert Manifest.read(store, "m.json") == one


def test_s3_roundtrip(s3_bucket, tmp_path):
    store = Store(f"{s3_bucket}/prefix")
    assert not store.is_local and store.root == f"{s3_bucket}/prefix"
    store.write_json("a/b.json", {"y": 2})
    local = tmp_path / "f.bin"
    local.write_bytes(b"data")
    assert store.put_file(local, "a/f.bin") == f"{s3_bucket}/prefix/a/f.bin"
    assert store.read_json("a/b.json") == {"y": 2}
    assert store.read_bytes("a/f.bin") == b"data"
    assert store.list("a") == ["a/b.json", "a/f.bin"]
    store.check_writable()


def test_s3_missing_bucket_names_the_root(s3_endpoint):
    store = Store("s3://no-such-bucket-here/prefix")
    with pytest.raises(StoreError, match="no-such-bucket-here"):
        store.check_writable()
