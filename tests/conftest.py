"""Shared fixtures: Prefect's test harness, a small demo web pool served on 127.0.0.1, moto's S3."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from tasks.demo_pool.generate import generate_demo_pool, pool_index_for  # noqa: E402
from tasks.demo_pool.server import DemoWebServer  # noqa: E402
from tests_support import FAST_DOWNLOAD, SMALL_POOL  # noqa: E402



def pytest_collection_modifyitems(config, items):
    """Skip the ``gpu`` tests where :func:`~tasks.common.gpu.gpu_available` says no GPU is usable.

    On a broken CUDA install (GpuSetupError) they run, and fail naming what is broken.
    """
    from tasks.common.errors import GpuSetupError
    from tasks.common.gpu import gpu_available

    gpu_items = [item for item in items if "gpu" in item.keywords]
    try:
        if not gpu_items or gpu_available():
            return
    except GpuSetupError:
        return
    skip = pytest.mark.skip(reason="no usable NVIDIA GPU here (no driver, no visible GPU or no 'gpu' extra)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def small_web(tmp_path_factory) -> Path:
    """A generated 600-sample web root (20 concepts, every defect planted)."""
    root = tmp_path_factory.mktemp("web")
    generate_demo_pool(SMALL_POOL, root)
    return root


@pytest.fixture(scope="session")
def small_truth(small_web) -> pd.DataFrame:
    return pd.read_parquet(small_web / "truth.parquet")


@pytest.fixture(scope="session")
def web_server(small_web):
    with DemoWebServer(small_web, hang_seconds=30) as server:
        yield server


@pytest.fixture(scope="session")
def small_index(small_web, web_server, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("index") / "pool.parquet"
    pool_index_for(small_web, web_server.base_url).to_parquet(path, index=False)
    return path


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1; s3fs finds it through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint, request) -> str:
    """A fresh, empty bucket; returns its s3:// URI."""
    import boto3

    name = "test-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=name)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield f"s3://{name}"


@pytest.fixture(scope="session")
def s3_options_endpoint():
    """A second moto S3 server on 127.0.0.1, reached only through options (no AWS_* variables)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_secret_store(prefect_harness, s3_options_endpoint, monkeypatch, request) -> dict:
    """An empty S3 bucket whose credentials live only in a Prefect Secret block.

    For the test's duration no AWS credential or endpoint is in the environment (nor any AWS
    config file or instance metadata to fall back on). Returns ``root`` (s3://bucket),
    ``storage_options`` ({"endpoint_url": ..., "credentials_block": name}: no secrets) and
    ``credentials`` (the secret values, for asserting that they appear nowhere).
    """
    import uuid

    import boto3
    import s3fs
    from prefect.blocks.system import Secret

    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    token = uuid.uuid4().hex
    credentials = {"key": f"key-{token[:12]}", "secret": f"secret-{token}"}
    block = "s3-creds-" + token[:8]
    Secret(value=credentials).save(block, overwrite=True)
    bucket = "sec-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    boto3.client("s3", endpoint_url=s3_options_endpoint, region_name="us-east-1", aws_access_key_id=credentials["key"],
                 aws_secret_access_key=credentials["secret"]).create_bucket(Bucket=bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    yield {"root": f"s3://{bucket}", "credentials": credentials, "block": block,
           "storage_options": {"endpoint_url": s3_options_endpoint, "credentials_block": block}}
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def small_pool(prefect_harness, small_index, web_server, tmp_path_factory) -> dict:
    """The small pool downloaded once by pool_refresh: its store, manifest and the requests it made."""
    from flows.pool_refresh import pool_refresh

    store = tmp_path_factory.mktemp("store")
    before = sum(web_server.requests.values())
    state = pool_refresh(pool_index=str(small_index), store=str(store), pool_name="e2e", return_state=True,
                         **FAST_DOWNLOAD)
    return {"state": state, "manifest": state.result(), "store": store,
            "requests": sum(web_server.requests.values()) - before}


@pytest.fixture(scope="session")
def tiny_checkpoint(small_pool, tmp_path_factory) -> str:
    """A tiny CLIP trained for a few steps on the small pool (the tests' embedder)."""
    from tasks.common.store import Store
    from tasks.train.run import train_clip
    from tasks.train.scales import scale_config
    from tasks.train.run import training_data

    store = Store(str(tmp_path_factory.mktemp("tiny-model")))
    shards, data_hash, n = training_data(small_pool["manifest"])
    config = scale_config("tiny", {"samples_seen": 256, "batch_size": 64, "checkpoint_steps": 4, "warmup": 1})
    return train_clip(store, shards, data_hash, n, config, "tiny-for-tests")["outputs"]["checkpoint"]
