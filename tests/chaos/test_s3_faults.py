"""S3 faults injected by a proxy on 127.0.0.1 in front of moto: 500 InternalError, 503 SlowDown and
connection resets, on a seeded schedule (tests/chaos/faults_support.py). The Store retries them with
backoff, so a stage run through the faults writes exactly what a fault-free run writes."""

from __future__ import annotations

import sys
from pathlib import Path

import boto3
import pandas as pd
import pytest
import s3fs

import tasks.common.store as store_module
from faults_support import FaultyS3Proxy
from tasks.common.store import Store, is_transient_error

sys.path.insert(0, str(Path(__file__).parents[1] / "filters"))
from test_poolwide import decisions, run_filters, write_pool  # noqa: E402 - the filter tests' small pool

FEW_LIBRARY_RETRIES = {"config_kwargs": {"retries": {"max_attempts": 2}}}  # botocore's: quick tests
NO_LIBRARY_RETRIES = {"config_kwargs": {"retries": {"max_attempts": 1}}}  # botocore's (s3fs still tries 5 times)


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(store_module, "TRANSIENT_BACKOFF_S", (0.05, 0.4))


def _bucket(endpoint: str, name: str) -> str:
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{name}"


def _exercise(store: Store) -> dict:
    """Every Store call that reaches the object store; returns what it read back."""
    for i in range(4):
        store.write_bytes(f"data/{i}.bin", bytes([i]) * 1000)
    assert store.create_exclusive("lease/one", b"first") and not store.create_exclusive("lease/one", b"second")
    store.remove("data/3.bin")
    return {"list": store.list("data"), "files": sorted(store.walk_files("")),
            "bytes": [store.read_bytes(f"data/{i}.bin") for i in range(3)], "lease": store.read_bytes("lease/one"),
            "exists": [store.exists(f"data/{i}.bin") for i in range(4)]}


def test_the_store_alone_rides_out_every_kind_of_fault(s3_endpoint, fast_backoff, monkeypatch):
    """botocore's own retries off: every request fails 1 to 3 times first (s3fs retries only SlowDown and
    resets, not a 500), and the Store's retries give the fault-free result; with a single Store attempt,
    requests failing 6 times in a row fail the call."""
    clean = _exercise(Store(_bucket(s3_endpoint, "faults-clean") + "/root"))
    root = _bucket(s3_endpoint, "faults-store") + "/root"
    with FaultyS3Proxy(s3_endpoint, seed=5, rate=1.0, max_failures=3) as proxy:
        faulty = _exercise(Store(root, {"endpoint_url": proxy.endpoint, **NO_LIBRARY_RETRIES}))
    assert faulty == clean
    assert set(proxy.injected) == {"500", "503", "reset"}, proxy.injected

    monkeypatch.setattr(store_module, "TRANSIENT_ATTEMPTS", 1)
    s3fs.S3FileSystem.clear_instance_cache()
    with FaultyS3Proxy(s3_endpoint, seed=5, rate=1.0, min_failures=6, max_failures=6) as proxy, \
            pytest.raises(Exception) as failed:
        Store(root + "-again", {"endpoint_url": proxy.endpoint, **NO_LIBRARY_RETRIES}).write_bytes("x", b"x")
    assert is_transient_error(failed.value)


def test_errors_that_are_not_transient_are_not_retried(s3_endpoint, fast_backoff):
    store = Store(_bucket(s3_endpoint, "faults-missing") + "/root")
    calls = []

    def missing(path):
        calls.append(path)
        raise FileNotFoundError(path)

    with pytest.raises(FileNotFoundError):
        store._call(missing, "nothing")
    assert len(calls) == 1


@pytest.mark.slow
def test_the_poolwide_filters_through_faults_equal_a_fault_free_run(s3_endpoint, fast_backoff):
    """The pool-wide filters stage (exact, perceptual and semantic dedup, CLIP score) on an S3 store whose
    requests fail by a seeded schedule, some more often than botocore retries (2 attempts here): same decisions, same
    outputs, nothing missing, no temporary object left."""
    clean = Store(_bucket(s3_endpoint, "filters-clean") + "/root")
    run, rows_files, _ = write_pool(clean, n_shards=2, rows=150)
    reference = run_filters(clean, run, rows_files, "filters/test/run")
    root = _bucket(s3_endpoint, "filters-faulty") + "/root"
    with FaultyS3Proxy(s3_endpoint, seed=13, rate=0.4, max_failures=5) as proxy:
        faulty = Store(root, {"endpoint_url": proxy.endpoint, **FEW_LIBRARY_RETRIES})
        faulty_run, faulty_rows, _ = write_pool(faulty, n_shards=2, rows=150)  # the same seeded inputs
        manifest = run_filters(faulty, faulty_run, faulty_rows, "filters/test/run")
        assert sum(proxy.injected.values()) > 0
        assert max(proxy.planned) > 2, proxy.planned  # some requests failed more often than botocore retries
        result = decisions(faulty, manifest)
    pd.testing.assert_frame_equal(result, decisions(clean, reference))
    assert manifest["rows"] == reference["rows"]
    assert {**manifest["stats"], "seconds": None} == {**reference["stats"], "seconds": None}
    assert sorted(Store(root).walk_files("")) == sorted(clean.walk_files(""))
