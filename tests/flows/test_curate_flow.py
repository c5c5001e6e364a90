"""curate: the cluster tree of an imported pool, resumed after a real kill; bad input."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from prefect.settings import PREFECT_API_URL

from flows.curate import curate
from tasks.cluster.hierarchical import HierarchicalKMeans
from tasks.cluster.imported import import_embeddings
from tasks.cluster.pool_input import pool_embeddings
from tasks.cluster.tree import load_tree
from tasks.common.catalog import Catalog
from tasks.common.dask_cluster import dask_client
from tasks.common.errors import InputError
from tasks.common.store import Store

LEVELS = [200, {"k": 40, "resampling_steps": 30}, {"k": 8, "resampling_steps": 30}]


def shards(n_shards=6, rows=10_000, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    for number in range(n_shards):
        uids = np.array([f"{number:02d}{i:08d}" for i in range(rows)])
        yield uids, rng.normal(size=(rows, dim)).astype(np.float16)


def test_killed_clustering_resumes_at_its_last_step(prefect_harness, tmp_path):
    store = Store(str(tmp_path))
    import_embeddings(Catalog(store), "synthetic", shards())
    levels_json = '[200, {"k": 40, "resampling_steps": 30}, {"k": 8, "resampling_steps": 30}]'
    args = [sys.executable, "-m", "flows.curate", "--store", store.root, "--pool-name", "synthetic", "--levels",
            levels_json, "--engine", "dask"]
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
    process = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while True:
        steps = store.list("clusters/synthetic", "*/level-2/steps/*.npy") if store.exists("clusters") else []
        if len(steps) >= 3:
            break
        assert process.poll() is None and time.monotonic() < deadline, "clustering never reached level 2"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    folder = steps[0].split("/level-2/")[0]
    assert store.exists(f"{folder}/level-1/level.json") and not store.exists(f"{folder}/manifest.json")
    before = {p: store.local_path(p).stat().st_mtime_ns
              for p in store.list(folder, "level-1/*") + store.list(folder, "level-2/steps/*.npy")}
    out = curate(store=store.root, pool_name="synthetic", clustering={"levels": LEVELS, "engine": "dask"})
    assert {p: store.local_path(p).stat().st_mtime_ns for p in before} == before  # finished work not redone
    assert out["tree"]["outputs"]["folder"] == store.uri(folder) and store.exists(f"{folder}/manifest.json")
    resumed = load_tree(store, folder)
    with dask_client(n_workers=2) as client:  # uninterrupted, on the same blocks
        reference = HierarchicalKMeans(LEVELS, engine="dask", client=client).fit(
            pool_embeddings(store, Catalog(store).snapshot("synthetic")).as_dask_array())
    for ours, theirs in zip(resumed, reference.levels_):
        np.testing.assert_array_equal(ours.labels, theirs.labels)
    assert store.local_path(f"{folder}/cluster_sizes.png").read_bytes().startswith(b"\x89PNG")


def test_bad_input(prefect_harness, tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(InputError, match="pool 'nothing'.*does not exist"):
        curate(store=store.root, pool_name="nothing")
    import_embeddings(Catalog(store), "small", shards(n_shards=1, rows=50))
    with pytest.raises(InputError, match="unknown setting"):
        curate(store=store.root, pool_name="small", clustering={"level": [3]})
    with pytest.raises(InputError, match="level 1: k=100 is larger than its 50 inputs"):
        curate(store=store.root, pool_name="small", clustering={"levels": [100], "engine": "dask"})
