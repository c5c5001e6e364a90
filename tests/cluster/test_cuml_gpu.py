"""The cuML engine on Dask-CUDA: the same contract as the CPU engine. Runs only where a GPU is."""

import numpy as np
import pytest

from tasks.cluster.hierarchical import HierarchicalKMeans
from tasks.cluster.kmeans import KMeans
from test_kmeans import blobs, same_partition

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_client():
    from dask_cuda import LocalCUDACluster
    from distributed import Client

    with LocalCUDACluster(dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def test_cuml_recovers_blobs_on_dask_cuda(cuda_client):
    import cupy
    import dask.array as da

    points, truth = blobs()
    gpu_blocks = da.from_array(points, chunks=(400, 8)).map_blocks(cupy.asarray)
    model = KMeans(6, engine="cuml", seed=3, client=cuda_client).fit(gpu_blocks)
    assert same_partition(model.labels_, truth)
    cpu = KMeans(6, engine="dask", seed=3).fit(points)
    assert abs(model.inertia_ - cpu.inertia_) <= 0.01 * cpu.inertia_


def test_dask_engine_runs_on_cupy_blocks(cuda_client):
    import cupy
    import dask.array as da

    points, truth = blobs()
    model = KMeans(6, engine="dask", seed=3, client=cuda_client).fit(
        da.from_array(points, chunks=(400, 8)).map_blocks(cupy.asarray))
    assert same_partition(model.labels_, truth)


def test_hierarchical_on_cuml(cuda_client):
    points, _ = blobs(n_per=200, centers=20, dim=16)
    tree = HierarchicalKMeans([40, {"k": 8, "resampling_steps": 3}], engine="cuml", client=cuda_client).fit(points)
    assert [level.k for level in tree.levels_] == [40, 8]
    assert np.bincount(tree.levels_[1].labels, minlength=8).sum() == 40
