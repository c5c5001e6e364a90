"""k-means engines: exact small cases, agreement with scikit-learn, Dask blocks, bad input."""

import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster
from sklearn.cluster import KMeans as SklearnKMeans

from tasks.cluster.kmeans import KMeans, resolve_engine
from tasks.cluster.lloyd import assign, block_statistics, cluster_sums, combine_statistics
from tasks.common.errors import InputError


def blobs(n_per=300, centers=6, dim=8, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centers, dim)) * 10
    truth = np.repeat(np.arange(centers), n_per)
    return (means[truth] + rng.normal(size=(len(truth), dim)) * spread).astype(np.float32), truth


def same_partition(labels, truth) -> bool:
    pairs = set(zip(labels.tolist(), truth.tolist()))
    return len(pairs) == len(set(labels.tolist())) == len(set(truth.tolist()))


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


def test_assignment_matches_brute_force():
    rng = np.random.default_rng(1)
    points, centroids = rng.normal(size=(1000, 5)).astype(np.float32), rng.normal(size=(7, 5)).astype(np.float32)
    labels, distances = assign(points, centroids, chunk_rows=128)
    full = ((points[:, None, :] - centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, full.argmin(1))
    np.testing.assert_allclose(distances, full.min(1), rtol=1e-4, atol=1e-4)


def test_block_statistics_add_up_over_blocks():
    points, _ = blobs()
    centroids = points[::300][:6]
    whole = block_statistics(points, centroids)
    parts = combine_statistics(*(block_statistics(points[i:i + 250], centroids) for i in range(0, len(points), 250)))
    np.testing.assert_allclose(parts.sums, whole.sums, rtol=1e-6)
    np.testing.assert_array_equal(parts.counts, whole.counts)
    assert parts.counts.sum() == len(points)


def test_float16_block_sums_without_a_float32_copy_of_the_block():
    import tracemalloc

    rng = np.random.default_rng(4)
    block = rng.normal(size=(60_000, 64)).astype(np.float16)
    labels = rng.integers(0, 500, len(block))
    labels[:10] = 7  # clusters spread over every chunk of the grouped rows
    tracemalloc.start()
    ids, sums, counts = cluster_sums(block, labels, 500, chunk_rows=4096)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    expected = np.zeros((500, 64))
    np.add.at(expected, labels, block.astype(np.float64))
    np.testing.assert_array_equal(ids, np.unique(labels))
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=500)[ids])
    np.testing.assert_allclose(sums, expected[ids], rtol=1e-6, atol=1e-6)
    assert peak < block.size * 4 / 2, f"peak {peak} bytes: the block was copied to float32 whole"


def test_separated_blobs_are_recovered_in_memory_and_on_dask(client):
    points, truth = blobs()
    local = KMeans(6, engine="dask", seed=3).fit(points)
    assert same_partition(local.labels_, truth)
    distributed = KMeans(6, engine="dask", seed=3, client=client).fit(da.from_array(points, chunks=(400, 8)))
    assert same_partition(distributed.labels_, truth)
    np.testing.assert_allclose(distributed.cluster_centers_, local.cluster_centers_, atol=1e-4)
    np.testing.assert_array_equal(distributed.predict(points), local.labels_)


def test_agrees_with_scikit_learn_from_the_same_init():
    rng = np.random.default_rng(5)
    points = rng.normal(size=(6000, 16)).astype(np.float32)
    init = points[rng.choice(len(points), 40, replace=False)]
    ours = KMeans(40, engine="dask", max_iter=300, tol=0).fit(points, init=init)
    theirs = SklearnKMeans(40, init=init, n_init=1, max_iter=300, tol=0).fit(points)
    assert abs(ours.inertia_ - theirs.inertia_) <= 0.01 * theirs.inertia_


def test_seed_makes_runs_reproducible_and_kmeanspp_on_a_sample():
    points, _ = blobs(n_per=500, centers=10, dim=4)
    a = KMeans(10, engine="dask", seed=7, init_sample_size=600).fit(points)
    b = KMeans(10, engine="dask", seed=7, init_sample_size=600).fit(points)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)


def test_empty_clusters_take_far_points():
    points, _ = blobs(n_per=100, centers=4, dim=3)
    init = np.repeat(points[:1], 4, axis=0)  # four identical seeds: three clusters start empty
    model = KMeans(4, engine="dask", max_iter=100).fit(points, init=init)
    assert (np.bincount(model.labels_, minlength=4) > 0).all()
    assert len(np.unique(model.cluster_centers_.round(3), axis=0)) == 4


def test_bad_input_names_the_problem(client):
    points, _ = blobs(n_per=5, centers=2)
    with pytest.raises(InputError, match="n_clusters=20 is larger than the 10 input points"):
        KMeans(20, engine="dask").fit(points)
    broken = points.copy()
    broken[7, 2] = np.nan
    with pytest.raises(InputError, match="row 7 holds NaN"):
        KMeans(2, engine="dask").fit(broken)
    with pytest.raises(InputError, match="row 7 holds NaN"):
        KMeans(2, engine="dask", client=client).fit(da.from_array(broken, chunks=(4, 8)))
    with pytest.raises(InputError, match="empty input"):
        KMeans(2, engine="dask").fit(np.zeros((0, 8), dtype=np.float32))
    with pytest.raises(InputError, match="engine='gpu'"):
        resolve_engine("gpu")
    with pytest.raises(InputError, match=r"init: expected shape \(2, 8\)"):
        KMeans(2, engine="dask").fit(points, init=points[:3])


def test_auto_engine_is_dask_without_a_gpu():
    from tasks.cluster.kmeans import cuml_available

    assert resolve_engine("auto") == ("cuml" if cuml_available() else "dask")
    if not cuml_available():
        with pytest.raises(InputError, match="engine='cuml': cuML or a GPU is not available"):
            resolve_engine("cuml")
