"""A Dask worker SIGKILLed while it runs a task: the task runs again elsewhere and the stage completes with
the outputs of an uninterrupted run. Real ``distributed.LocalCluster``s of 2 single-threaded worker
processes; the worker is killed (``os.kill`` of the pid ``client.run(os.getpid)`` gives) when it is
seen executing a task of the stage, and the test checks that the kill happened before the stage ended.

- the tree's k-means (tasks/cluster): Lloyd's block statistics on the workers;
- the download on Dask (flows/pool_refresh.py with a Dask address: one task per slice in a worker,
  img2dataset its child process);
- the embedding of shards on Dask (flows/embed_filter.py: one Prefect task per shard on the workers).
"""

from __future__ import annotations

import logging
import os

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from faults_support import kill_in_background, task_run_states
from tasks.cluster.kmeans import KMeans
from tasks.common.catalog import Catalog, EmbeddedShard, ShardRecord
from tasks.common.store import Store
from tests_support import FAST_DOWNLOAD


@pytest.fixture(scope="module")
def cluster_client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.WARNING) as cluster, Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=120)
        yield client


def _slow_block_statistics(dask_worker, seconds: float) -> None:
    """On a worker: Lloyd's block statistics take ``seconds`` longer (a task long enough to be killed in)."""
    import time

    import tasks.cluster.lloyd as lloyd

    original = lloyd.block_statistics

    def block_statistics(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    block_statistics.__wrapped__ = original
    lloyd.block_statistics = block_statistics


def test_kmeans_with_a_worker_killed_mid_task_equals_an_uninterrupted_fit(cluster_client):
    rng = np.random.default_rng(7)
    means = rng.normal(size=(6, 8)) * 10
    points = (means[np.repeat(np.arange(6), 1000)] + rng.normal(size=(6000, 8))).astype(np.float32)
    blocks = da.from_array(points, chunks=(1500, 8))
    with cluster_client.as_current():
        reference = KMeans(6, engine="dask", seed=3, max_iter=4, client=cluster_client).fit(cluster_client.persist(blocks))
        cluster_client.run(_slow_block_statistics, seconds=0.25)
        killer, killed = kill_in_background(cluster_client, "block_statistics", timeout=60)
        fitted = KMeans(6, engine="dask", seed=3, max_iter=4, client=cluster_client).fit(cluster_client.persist(blocks))
        killer.join()
    assert killed, "no worker was seen running a k-means task: the test proves nothing"
    assert killed["pid"] not in cluster_client.run(os.getpid).values()
    np.testing.assert_array_equal(fitted.labels_, reference.labels_)
    np.testing.assert_allclose(fitted.cluster_centers_, reference.cluster_centers_, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def downloaded_with_a_kill(prefect_harness, cluster_client, small_index, web_server, tmp_path_factory):
    """pool_refresh on Dask with the worker of one slice's task killed while it downloads (once for the module)."""
    from flows.pool_refresh import pool_refresh

    store = tmp_path_factory.mktemp("killed") / "store"
    before = sum(web_server.requests.values())
    killer, killed = kill_in_background(cluster_client, "download_slice", timeout=120)
    state = pool_refresh.with_options(timeout_seconds=400)(
        pool_index=str(small_index), store=str(store), pool_name="killed", return_state=True,
        dask_address=cluster_client.scheduler.address, **dict(FAST_DOWNLOAD, processes=1))
    killer.join()
    return {"state": state, "killed": killed, "store": store, "client": cluster_client,
            "requests": sum(web_server.requests.values()) - before}


@pytest.mark.slow
def test_download_on_dask_with_a_worker_killed_mid_slice(downloaded_with_a_kill, small_truth):
    state, killed = downloaded_with_a_kill["state"], downloaded_with_a_kill["killed"]
    assert killed, "no worker was seen downloading a slice: the test proves nothing"
    manifest = state.result()
    assert manifest["rows"]["input"] == len(small_truth)
    assert manifest["rows"]["success"] == (small_truth["expected_status"] == "success").sum()
    store, frames = Store(str(downloaded_with_a_kill["store"])), []
    for shard in manifest["outputs"]["shards"]:
        with store.open(store.relative(shard["parquet"])) as handle:
            frames.append(pd.read_parquet(handle, columns=["uid", "status"]))
    meta = pd.concat(frames, ignore_index=True)
    assert meta["uid"].is_unique and set(meta["uid"]) == set(small_truth["uid"])  # nothing lost, nothing twice
    truth = small_truth.set_index("uid")["expected_status"]
    assert set(meta.loc[meta["status"] == "success", "uid"]) == set(truth[truth == "success"].index)
    assert task_run_states(state.state_details.flow_run_id, "download") == ["Completed"] * len(
        manifest["outputs"]["slices"])


@pytest.mark.slow
def test_embedding_on_dask_with_a_worker_killed_mid_shard(downloaded_with_a_kill, tiny_checkpoint, tmp_path):
    from flows.embed_filter import run_embed_filter
    from tasks.embed.run import embed_shard
    from tasks.embed.spec import EmbedderSpec

    client, root = downloaded_with_a_kill["client"], str(downloaded_with_a_kill["store"])
    embedder = {"model": "Tiny-ViT-48px", "checkpoint": tiny_checkpoint, "batch_size": 64}
    killer, killed = kill_in_background(client, "embed_shard", timeout=120)
    out = run_embed_filter(root, "killed", embedder, {"min_image_side": 48, "clip_score_top_fraction": 0.9},
                           dask_address=client.scheduler.address)
    killer.join()
    assert killed, "no worker was seen embedding a shard: the test proves nothing"

    store, reference_store = Store(root), Store(str(tmp_path / "reference"))
    pool = downloaded_with_a_kill["state"].result()
    embedded = {shard["shard_id"]: EmbeddedShard.from_dict(shard) for shard in out["embeddings"]["outputs"]["shards"]}
    assert sorted(embedded) == sorted(s["shard_id"] for s in pool["outputs"]["shards"] if s["n_success"] > 0)
    for shard in pool["outputs"]["shards"]:
        if shard["shard_id"] not in embedded:
            continue
        files = Catalog.embedded_shard("reference", shard["shard_id"])
        embed_shard(reference_store, ShardRecord.from_dict(shard), EmbedderSpec(**embedder), files)  # uninterrupted
        got = embedded[shard["shard_id"]]
        with store.open(store.relative(got.parquet)) as handle, reference_store.open(files.parquet) as expected:
            table, reference = pd.read_parquet(handle), pd.read_parquet(expected)
        exact = [c for c in reference if c != "clip_score"]
        pd.testing.assert_frame_equal(table[exact], reference[exact])
        np.testing.assert_allclose(table["clip_score"], reference["clip_score"], atol=2e-3)
        np.testing.assert_allclose(store.read_npy(store.relative(got.image_embeddings)).astype(np.float32),
                                   reference_store.read_npy(files.image_embeddings).astype(np.float32), atol=2e-3)
    assert out["filters"]["rows"]["samples"] == pool["rows"]["success"]
