"""What keeps k-means affordable at scale: k-means|| seeding, sparse block statistics, the automatic
split of a large level 1, and resampled points that stay on the Dask workers."""

import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

import tasks.cluster.kmeans as kmeans_module
from tasks.cluster.hierarchical import HierarchicalKMeans
from tasks.cluster.init import candidate_bound, kmeans_parallel
from tasks.cluster.kmeans import Blocks, KMeans
from tasks.cluster.lloyd import BlockStatistics, assign, block_statistics, combine_statistics, updated_centroids
from tasks.cluster.run import CLUSTER_VERSION, ClusterConfig
from tasks.common.errors import InputError
from test_kmeans import blobs, same_partition


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture
def always_kmeans_parallel(monkeypatch):
    monkeypatch.setattr(kmeans_module, "FULL_SEEDING_LIMIT", 0)


# ----- k-means|| ----------------------------------------------------------------
def test_kmeans_parallel_is_deterministic_distinct_and_bounded():
    points, _ = blobs(n_per=400, centers=12, dim=6, seed=1)
    runs = [kmeans_parallel(Blocks(points), 12, np.random.default_rng(5)) for _ in range(2)]
    (seeds, candidates), (again, _) = runs
    np.testing.assert_array_equal(seeds, again)
    assert seeds.shape == (12, 6) and len(np.unique(seeds, axis=0)) == 12
    assert 12 <= candidates <= candidate_bound(12) == 1 + 5 * 24
    other, _ = kmeans_parallel(Blocks(points), 12, np.random.default_rng(6))
    assert not np.array_equal(other, seeds)


def test_kmeans_parallel_bound_holds_when_rounds_draw_many(monkeypatch):
    points = np.random.default_rng(0).normal(size=(5000, 4)).astype(np.float32)  # no structure: every round draws ~l
    seeds, candidates = kmeans_parallel(Blocks(points), 50, np.random.default_rng(0), rounds=5, oversampling=2.0)
    assert candidates <= candidate_bound(50, 5, 2.0) == 501
    assert len(np.unique(seeds, axis=0)) == 50


def test_kmeans_parallel_does_not_depend_on_the_blocks(client):
    points, _ = blobs(n_per=300, centers=8, dim=5, seed=2)
    in_memory, n1 = kmeans_parallel(Blocks(points), 8, np.random.default_rng(3))
    array = client.persist(da.from_array(points, chunks=(333, 5)))
    on_workers, n2 = kmeans_parallel(Blocks(array, client), 8, np.random.default_rng(3))
    assert n1 == n2
    np.testing.assert_allclose(on_workers, in_memory, atol=1e-6)


def test_kmeans_parallel_inertia_is_close_to_kmeans_plus_plus(always_kmeans_parallel):
    points, truth = blobs(n_per=200, centers=25, dim=10, seed=4, spread=1.0)
    parallel = KMeans(25, engine="dask", seed=1).fit(points)
    assert parallel.seeding_["method"] == "k-means||"
    assert parallel.seeding_["candidates"] <= parallel.seeding_["candidate_bound"]
    exact = KMeans(25, engine="dask", seed=1, init_sample_size=len(points)).fit(points)
    assert exact.seeding_["method"] == "k-means++"
    assert parallel.inertia_ <= 1.03 * exact.inertia_
    assert same_partition(parallel.labels_, truth)


def test_small_problems_keep_exact_kmeans_plus_plus():
    points, _ = blobs()
    model = KMeans(6, engine="dask", seed=3).fit(points)
    assert model.seeding_ == {"method": "k-means++", "points": len(points)}


def test_kmeans_parallel_on_workers_matches_in_memory_fit(client, always_kmeans_parallel):
    points, truth = blobs(n_per=250, centers=10, dim=8, seed=6)
    local = KMeans(10, engine="dask", seed=2).fit(points)
    distributed = KMeans(10, engine="dask", seed=2, client=client).fit(da.from_array(points, chunks=(700, 8)))
    assert distributed.seeding_["method"] == "k-means||"
    assert same_partition(local.labels_, truth)
    np.testing.assert_array_equal(distributed.labels_, local.labels_)
    np.testing.assert_allclose(distributed.cluster_centers_, local.cluster_centers_, atol=1e-4)


# ----- sparse block statistics ---------------------------------------------------------
def dense_statistics(points, centroids):
    labels, distances = assign(points, centroids)
    k, d = centroids.shape
    sums = np.zeros((k, d))
    np.add.at(sums, labels, points.astype(np.float64))
    return sums, np.bincount(labels, minlength=k)


def test_sparse_statistics_equal_the_dense_computation():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(3000, 7)).astype(np.float32)
    centroids = rng.normal(size=(400, 7)).astype(np.float32) * 2  # many clusters: most blocks touch few
    parts = [block_statistics(points[i:i + 100], centroids) for i in range(0, 3000, 100)]
    assert all(len(p.ids) <= 100 and p.sums.shape == (len(p.ids), 7) for p in parts)  # sent rows grow with the block
    combined = combine_statistics(*[combine_statistics(*parts[i:i + 8]) for i in range(0, len(parts), 8)])
    sums, counts = dense_statistics(points, centroids)
    np.testing.assert_allclose(combined.dense_sums(), sums, rtol=1e-5, atol=1e-4)  # blocks sum in float32
    np.testing.assert_array_equal(combined.dense_counts(), counts)
    assert np.all(np.diff(combined.ids) > 0) and (combined.counts > 0).all()
    updated, empty = updated_centroids(combined, centroids)
    filled = counts > 0
    expected = centroids.copy()
    expected[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
    far = combined.far_points[: int((~filled).sum())]
    expected[np.flatnonzero(~filled)[: len(far)]] = far
    assert empty == int((~filled).sum()) > 0
    np.testing.assert_allclose(updated, expected, rtol=1e-5, atol=1e-5)


def test_combining_blocks_without_common_clusters():
    a = BlockStatistics(k=5, ids=np.array([0, 3]), sums=np.ones((2, 2)), counts=np.array([1, 2]), inertia=1.0,
                        far_points=np.zeros((0, 2), np.float32), far_distances=np.zeros(0, np.float32))
    b = BlockStatistics(k=5, ids=np.array([3, 4]), sums=np.full((2, 2), 2.0), counts=np.array([4, 1]), inertia=2.0,
                        far_points=np.zeros((0, 2), np.float32), far_distances=np.zeros(0, np.float32))
    both = combine_statistics(a, b)
    np.testing.assert_array_equal(both.ids, [0, 3, 4])
    np.testing.assert_array_equal(both.counts, [1, 6, 1])
    np.testing.assert_array_equal(both.sums, [[1, 1], [3, 3], [2, 2]])
    assert both.inertia == 3.0


# ----- automatic split of level 1 ---------------------------------------------------------
def grid_points(n=3000, dim=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_auto_split_engages_from_the_threshold_only():
    data = grid_points()
    split = HierarchicalKMeans([64, 6], metric="l2", engine="dask", auto_split_from=64).fit(data)
    assert split.plans_[0] == {"method": "split", "requested_k": 64, "coarse_k": 32, "splits": [2], "automatic": True}
    assert split.plans_[1] == {"method": "kmeans", "k": 6}
    assert 56 <= split.levels_[0].k <= 64 and len(split.levels_[0].labels) == 3000
    deep = HierarchicalKMeans([200], metric="l2", engine="dask", auto_split_from=64).fit(data)
    assert deep.plans_[0]["splits"] == [7] and 180 <= deep.levels_[0].k <= 224
    sizes = np.bincount(deep.levels_[0].labels, minlength=deep.levels_[0].k)
    assert sizes.sum() == 3000 and sizes.max() < 100  # no fine cluster holds most of the points
    assert split.levels_[1].k == 6
    plain = HierarchicalKMeans([64], metric="l2", engine="dask", auto_split_from=65).fit(data)
    assert plain.plans_[0] == {"method": "kmeans", "k": 64} and plain.levels_[0].k == 64
    off = HierarchicalKMeans([64], metric="l2", engine="dask", auto_split_from=0).fit(data)
    assert off.plans_[0]["method"] == "kmeans"
    np.testing.assert_array_equal(off.levels_[0].labels, plain.levels_[0].labels)
    explicit = HierarchicalKMeans([{"k": 4, "split": 3}], metric="l2", engine="dask", auto_split_from=2).fit(data)
    assert explicit.plans_[0] == {"method": "split", "requested_k": 12, "coarse_k": 4, "splits": [3], "automatic": False}


def test_default_threshold_leaves_small_trees_alone():
    model = HierarchicalKMeans([60, {"k": 12, "resampling_steps": 3}], metric="l2", engine="dask")
    assert model.auto_split_from == 4096
    assert model.plan(1, model.levels[0]) is model.levels[0]
    big = HierarchicalKMeans([10_000, 100])
    assert big.describe(1) == {"method": "split", "requested_k": 10_000, "coarse_k": 32, "splits": [32, 10],
                               "automatic": True}  # 32 x 32 x 10 = 10,240 clusters at most
    assert HierarchicalKMeans([100_000]).describe(1)["splits"] == [32, 32, 4]
    assert big.describe(2) == {"method": "kmeans", "k": 100}
    with pytest.raises(InputError, match="level 1: k=5000 is larger than its 3000 inputs"):
        HierarchicalKMeans([5000], engine="dask", auto_split_from=100).fit(grid_points())
    with pytest.raises(InputError, match="auto_split_from=-1"):
        HierarchicalKMeans([10], auto_split_from=-1)


def test_cluster_config_carries_the_auto_split_setting():
    assert CLUSTER_VERSION == 3
    assert ClusterConfig().auto_split_from == 4096
    config = ClusterConfig.from_dict({"levels": [100, 10], "auto_split_from": 0})
    assert config.auto_split_from == 0 and config.to_dict()["auto_split_from"] == 0
    with pytest.raises(InputError, match="auto_split_from=-3"):
        ClusterConfig.from_dict({"auto_split_from": -3})


# ----- level 1 on the workers ---------------------------------------------------------
def test_resampling_and_split_on_workers_match_in_memory(client):
    data, _ = blobs(n_per=300, centers=8, dim=6, seed=8, spread=1.0)
    levels = [{"k": 8, "resampling_steps": 2}, 3]
    local = HierarchicalKMeans(levels, metric="l2", engine="dask", seed=3).fit(data)
    array = da.from_array(data, chunks=(500, 6))
    remote = HierarchicalKMeans(levels, metric="l2", engine="dask", seed=3, client=client).fit(array)
    for ours, theirs in zip(remote.levels_, local.levels_):
        np.testing.assert_array_equal(ours.labels, theirs.labels)
        np.testing.assert_allclose(ours.centroids, theirs.centroids, atol=1e-4)
    split_levels = [{"k": 4, "split": 3}]
    local = HierarchicalKMeans(split_levels, metric="l2", engine="dask", seed=3).fit(data)
    remote = HierarchicalKMeans(split_levels, metric="l2", engine="dask", seed=3, client=client).fit(array)
    np.testing.assert_array_equal(remote.levels_[0].labels, local.levels_[0].labels)
    np.testing.assert_allclose(remote.levels_[0].centroids, local.levels_[0].centroids, atol=1e-4)
