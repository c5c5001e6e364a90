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


def test_dask_engine_on_an_in_memory_cupy_array():
    """The path of one GPU without Dask: the same centroids as on the CPU from the same init."""
    import cupy

    points, truth = blobs()
    init = points[np.arange(6) * 300 + 7]  # one point of every blob (blobs() lists them blob by blob)
    gpu = KMeans(6, engine="dask", max_iter=20).fit(cupy.asarray(points), init=init)
    cpu = KMeans(6, engine="dask", max_iter=20).fit(points, init=init)
    assert isinstance(gpu.labels_, np.ndarray) and isinstance(gpu.cluster_centers_, np.ndarray)
    assert same_partition(gpu.labels_, truth) and (gpu.labels_ == cpu.labels_).all()
    np.testing.assert_allclose(gpu.cluster_centers_, cpu.cluster_centers_, rtol=1e-4, atol=1e-4)


def test_dask_engine_on_float16_cupy_points():
    """float16 points are summed in float32 chunks (never copied whole), on the GPU as on the CPU."""
    import cupy

    points, truth = blobs()
    model = KMeans(6, engine="dask", seed=3).fit(cupy.asarray(points, dtype=cupy.float16))
    assert same_partition(model.labels_, truth)


def test_cuml_engine_on_an_in_memory_cupy_array():
    import cupy

    points, truth = blobs()
    model = KMeans(6, engine="cuml", seed=3).fit(cupy.asarray(points))
    assert same_partition(model.labels_, truth)


def test_split_level_on_cupy_points():
    """An automatic split level 1 (grouped assignment per coarse cluster) on a cupy array."""
    import cupy

    points, _ = blobs(n_per=200, centers=20, dim=16)
    tree = HierarchicalKMeans([64, {"k": 8, "resampling_steps": 2}], engine="dask",
                              auto_split_from=32).fit(cupy.asarray(points))
    assert tree.plans_[0]["method"] == "split"
    assert [level.k for level in tree.levels_] == [64, 8]
    assert len(tree.levels_[0].labels) == len(points)


def test_project_dask_client_starts_a_cuda_cluster():
    """dask_client(gpu=True) is the LocalCUDACluster the stages use; its worker sees the GPU."""
    from tasks.common.dask_cluster import dask_client

    with dask_client(gpu=True) as client:
        counts = client.run(lambda: __import__("cupy").cuda.runtime.getDeviceCount())
    assert counts and all(count >= 1 for count in counts.values())
