"""pool_refresh given a Dask address: every slice's task runs in a worker process of a real cluster.

A ``distributed.LocalCluster`` of 2 single-threaded worker processes stands for two download
machines; the demo pool (2 slices) is served on 127.0.0.1. What is checked: the pool is whole, the
slice tasks ran in the workers (Dask's task stream names the worker of each, and each task logs
the id of the process it ran in, which must be a worker's and not this one), img2dataset was a
child of that worker (the task waits for it there), the two slices ran at once although
``processes=1`` would run them one after the other in the flow's process, and a second run is
all cache hits. The S3 case checks that the store's credentials, held only in a Prefect Secret
block read by the flow, reach workers whose environment has none.
"""

from __future__ import annotations

import logging
import os
import re
import time

import pytest
from distributed import Client, LocalCluster, get_task_stream
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from flow_support import FAST_DOWNLOAD, shard_samples, task_run_states
from flows.pool_refresh import pool_refresh

# processes=1: in the flow's own threads one slice would download at a time; on Dask each worker thread takes one
OPTIONS = dict(FAST_DOWNLOAD, processes=1)
FLOW_LIMIT_S = 300  # a hung download fails the flow instead of the test run
SLICE_LOG = re.compile(r"slice (\d+): .* \(on .*, process (\d+)\)")


@pytest.fixture
def dask_client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.WARNING) as cluster, Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=120)
        yield client


def _refresh(**kwargs):
    return pool_refresh.with_options(timeout_seconds=FLOW_LIMIT_S)(return_state=True, **OPTIONS, **kwargs)


def _slice_processes(flow_run_id, n_slices: int, wait_s: float = 60) -> dict[int, int]:
    """slice index -> id of the process its task ran in, from the tasks' logs (workers send them in batches)."""
    deadline = time.monotonic() + wait_s
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        found = {int(m[1]): int(m[2]) for m in (SLICE_LOG.search(log.message) for log in logs) if m}
        if len(found) >= n_slices or time.monotonic() > deadline:
            return found
        time.sleep(1)


def _slice_tasks(stream) -> list[dict]:
    return [event for event in stream.data if event["key"].startswith("download_slice")]


def test_slices_download_in_the_dask_workers(prefect_harness, dask_client, small_index, small_truth, web_server,
                                             tmp_path):
    workers = dask_client.run(os.getpid)  # worker address -> process id
    store = tmp_path / "store"
    n_slices = -(-len(small_truth) // OPTIONS["slice_size"])
    assert n_slices >= 2
    before = sum(web_server.requests.values())
    with get_task_stream(dask_client) as stream:
        state = _refresh(pool_index=str(small_index), store=str(store), pool_name="ondask",
                         dask_address=dask_client.scheduler.address)
    manifest = state.result()
    flow_run_id = state.state_details.flow_run_id

    # the pool is whole
    assert manifest["rows"]["input"] == len(small_truth)
    assert manifest["rows"]["success"] == (small_truth["expected_status"] == "success").sum()
    assert len(manifest["outputs"]["slices"]) == n_slices
    samples = shard_samples(manifest)
    assert samples["uid"].is_unique
    assert set(samples["uid"]) == set(small_truth.loc[small_truth["expected_status"] == "success", "uid"])
    assert sum(web_server.requests.values()) - before == len(small_truth)
    assert task_run_states(flow_run_id)["download_slice"] == ["Completed"] * n_slices

    # ... downloaded by the workers: each slice's task ran in a worker process, not in this one
    ran = _slice_tasks(stream)
    assert len(ran) == n_slices and {event["worker"] for event in ran} <= set(workers)
    processes = _slice_processes(flow_run_id, n_slices)
    assert sorted(processes) == list(range(n_slices))
    assert set(processes.values()) <= set(workers.values()) and os.getpid() not in processes.values()
    # ... one slice per worker thread: both workers downloaded at the same time
    assert len({event["worker"] for event in ran}) == 2
    spans = [(min(s["start"] for s in e["startstops"]), max(s["stop"] for s in e["startstops"])) for e in ran]
    assert max(start for start, _ in spans) < min(stop for _, stop in spans)
    assert not list((store / "_staging").glob("pools/ondask/slices/*"))  # the workers cleaned their staging

    # a second run is all cache hits (looked up by the workers too), and downloads nothing
    before = sum(web_server.requests.values())
    with get_task_stream(dask_client) as stream:
        again = _refresh(pool_index=str(small_index), store=str(store), pool_name="ondask",
                         dask_address=dask_client.scheduler.address)
    assert task_run_states(again.state_details.flow_run_id)["download_slice"] == ["Cached"] * n_slices
    assert len(_slice_tasks(stream)) == n_slices
    assert sum(web_server.requests.values()) == before
    assert again.result()["content_hash"] == manifest["content_hash"]


def test_store_credentials_reach_the_workers(s3_secret_store, small_index, small_truth, web_server, tmp_path):
    """The workers start with no AWS variable; the S3 credentials live only in a Secret block the flow reads."""
    import pandas as pd

    assert not [name for name in os.environ if name.startswith("AWS_") and "DISABLED" not in name
                and "FILE" not in name]
    root, options = s3_secret_store["root"], s3_secret_store["storage_options"]
    index = tmp_path / "pool.parquet"
    pd.read_parquet(small_index).to_parquet(index)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.WARNING) as cluster, Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=120)
        workers = client.run(os.getpid)
        state = _refresh(pool_index=str(index), store=f"{root}/store", pool_name="s3dask",
                         storage_options=options, dask_address=client.scheduler.address)
        manifest = state.result()
        processes = _slice_processes(state.state_details.flow_run_id, 2)
    assert set(processes.values()) <= set(workers.values()) and len(processes) == 2
    assert manifest["rows"]["success"] == (small_truth["expected_status"] == "success").sum()
    assert all(shard["tar"].startswith(f"{root}/store/pools/s3dask/slices/") for shard in manifest["outputs"]["shards"])
