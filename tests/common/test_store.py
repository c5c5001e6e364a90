"""The store: atomic writes, local and on S3 (moto's server on 127.0.0.1)."""

import json
import os
import pickle
import re

import pytest

from tasks.common.errors import InputError, StoreError
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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_published_files_follow_the_umask(tmp_path, umask, mode):
    store = Store(str(tmp_path / "store"))
    src = tmp_path / "src.bin"
    previous = os.umask(umask)
    try:
        src.write_bytes(b"x")
        os.chmod(src, 0o600)  # a producer's private file becomes readable once published
        paths = [store.write_bytes("a/written.bin", b"abc"), store.put_file(src, "a/copied.bin"),
                 store.put_file(src, "a/moved.bin", move=True)]
    finally:
        os.umask(previous)
    assert [oct(os.stat(p).st_mode & 0o777) for p in paths] == [oct(mode)] * 3
    assert oct(os.stat(tmp_path / "store" / "a").st_mode & 0o777) == oct(0o777 & ~umask)


@pytest.mark.parametrize("options, named", [
    ({"key": "AKIA..."}, "'key'"),
    ({"secret": "s"}, "'secret'"),
    ({"token": "t"}, "'token'"),
    ({"password": "p"}, "'password'"),
    ({"endpoint_url": "http://x", "client_kwargs": {"aws_secret_access_key": "s"}},
     "'client_kwargs.aws_secret_access_key'"),
    ({"client_kwargs": {"aws_access_key_id": "k"}}, "'client_kwargs.aws_access_key_id'"),
    ({"client_kwargs": {"aws_session_token": "t"}}, "'client_kwargs.aws_session_token'"),
])
def test_secrets_in_storage_options_are_refused(options, named):
    with pytest.raises(InputError, match=f"storage_options {re.escape(named)}.*credentials_block"):
        Store("s3://bucket/prefix", options)


def test_a_missing_credentials_block_is_named(prefect_harness):
    with pytest.raises(InputError, match="credentials_block.*'no-such-creds'.*no Prefect Secret block"):
        Store("s3://bucket/prefix", {"credentials_block": "no-such-creds"})


def test_credentials_block_must_hold_a_json_object(prefect_harness):
    from prefect.blocks.system import Secret

    Secret(value="just-a-string").save("not-an-object", overwrite=True)
    with pytest.raises(InputError, match="'not-an-object'.*JSON object"):
        Store("s3://bucket/prefix", {"credentials_block": "not-an-object"})


def test_s3_with_credentials_from_a_secret_block(s3_secret_store):
    secret = s3_secret_store["credentials"]["secret"]
    from botocore.exceptions import NoCredentialsError

    with pytest.raises(NoCredentialsError):  # no credentials anywhere in the environment
        Store(s3_secret_store["root"], {"endpoint_url": s3_secret_store["storage_options"]["endpoint_url"]}) \
            .write_bytes("x.bin", b"x")
    store = Store(f"{s3_secret_store['root']}/prefix", s3_secret_store["storage_options"])
    store.write_json("a/b.json", {"z": 3})
    assert store.read_json("a/b.json") == {"z": 3}
    assert store.storage_options == s3_secret_store["storage_options"]
    assert secret not in repr(store) + json.dumps(store.storage_options)
    copy = pickle.loads(pickle.dumps(store))
    assert copy.read_json("a/b.json") == {"z": 3} and copy.storage_options == store.storage_options


def _read_in_worker(store: Store) -> tuple[bytes, dict, dict]:
    return store.read_bytes("w/file.bin"), store.storage_options, {k: v for k, v in os.environ.items()
                                                                  if k.startswith("AWS_ACCESS")}


def test_a_dask_worker_reads_through_a_pickled_store(s3_secret_store):
    from distributed import Client, LocalCluster

    store = Store(s3_secret_store["root"], s3_secret_store["storage_options"])
    store.write_bytes("w/file.bin", b"from the flow")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        data, options, environment = client.submit(_read_in_worker, store, pure=False).result(timeout=120)
    assert data == b"from the flow"
    assert options == s3_secret_store["storage_options"] and environment == {}


def test_a_store_given_as_a_flow_parameter_is_not_dumped(tmp_path):
    from prefect import flow

    @flow
    def uses(store: Store) -> None:
        pass

    assert uses.serialize_parameters({"store": Store(str(tmp_path))}) == {"store": "<Store>"}
