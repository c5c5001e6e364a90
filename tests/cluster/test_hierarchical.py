"""Hierarchical k-means with resampling: exact cases, tree consistency, checkpoints, store input."""

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from tasks.cluster.hierarchical import HierarchicalKMeans, LevelSpec, resample_indices, sort_members
from tasks.cluster.imported import import_embeddings
from tasks.cluster.pool_input import pool_embeddings
from tasks.cluster.tree import StoreCheckpoints, load_tree, sample_labels, samples_per_cluster
from tasks.common.catalog import Catalog
from tasks.common.errors import InputError
from tasks.common.store import Store

LEVELS = [60, {"k": 12, "resampling_steps": 3}, {"k": 4, "resampling_steps": 3, "resampling": "random"}]


def points(n=3000, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)).astype(np.float32) * np.linspace(1, 3, dim, dtype=np.float32)


def test_resampling_takes_the_r_closest_members():
    labels = np.array([0, 0, 0, 1, 1, 0, 1, 2])
    distances = np.array([5.0, 1.0, 3.0, 0.5, 0.1, 2.0, 9.0, 4.0])
    chosen = resample_indices(labels, distances, 3, 2, "closest", np.random.default_rng(0))
    np.testing.assert_array_equal(chosen, [1, 3, 4, 5, 7])  # cluster 0: rows 1, 5; cluster 1: rows 4, 3; cluster 2: 7
    randomly = resample_indices(labels, distances, 3, 2, "random", np.random.default_rng(0))
    assert len(randomly) == 5 and np.bincount(labels[randomly]).tolist() == [2, 2, 1]


def test_members_are_sorted_by_distance():
    labels = np.array([1, 0, 1, 1, 0])
    distances = np.array([0.3, 0.2, 0.1, 0.9, 0.05])
    order, offsets = sort_members(labels, distances, 3)
    np.testing.assert_array_equal(order, [4, 1, 2, 0, 3])
    np.testing.assert_array_equal(offsets, [0, 2, 5, 5])


def test_tree_is_consistent_across_levels():
    data = points()
    model = HierarchicalKMeans(LEVELS, metric="l2", engine="dask", seed=1).fit(data)
    levels = model.levels_
    assert [level.k for level in levels] == [60, 12, 4]
    assert [len(level.labels) for level in levels] == [3000, 60, 12]
    counts = samples_per_cluster(levels)
    assert all(c.sum() == 3000 for c in counts)
    paths = sample_labels(levels)
    np.testing.assert_array_equal(np.bincount(paths[:, 2], minlength=4), counts[2])
    for level in levels:  # every member is sorted closest first
        for cluster in range(level.k):
            assert np.all(np.diff(level.distances[level.members(cluster)]) >= 0)
    # resampling: the centroids kept are those fitted on the resampled points, not re-averaged
    level2 = levels[1]
    means = np.stack([levels[0].centroids[level2.labels == j].mean(0) for j in range(12) if (level2.labels == j).any()])
    assert not np.allclose(means, level2.centroids[np.unique(level2.labels)], atol=1e-5)


def test_cosine_normalises_and_rejects_zero_vectors():
    data = points()
    model = HierarchicalKMeans([10], metric="cosine", engine="dask").fit(data * 50)
    same = HierarchicalKMeans([10], metric="cosine", engine="dask").fit(data)
    np.testing.assert_array_equal(model.levels_[0].labels, same.levels_[0].labels)
    data[17] = 0
    with pytest.raises(InputError, match="row 17 is a zero vector"):
        HierarchicalKMeans([10], metric="cosine", engine="dask").fit(data)


def test_bad_levels_name_the_level_and_parameter():
    with pytest.raises(InputError, match=r"level 2: k=100 is larger than its 20 inputs \(centroids of level 1\); "
                                         r"lower levels\[1\].k"):
        HierarchicalKMeans([20, 100], engine="dask").fit(points())
    with pytest.raises(InputError, match="level 1: k=5000 is larger than its 3000 inputs"):
        HierarchicalKMeans([5000], engine="dask").fit(points())
    with pytest.raises(InputError, match="level 2: resampling='nearest'"):
        HierarchicalKMeans([20, {"k": 5, "resampling": "nearest"}])
    with pytest.raises(InputError, match="unknown setting"):
        LevelSpec.from_value({"k": 5, "steps": 2})
    with pytest.raises(InputError, match="non-empty 2-D"):
        HierarchicalKMeans([2], engine="dask").fit(np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(InputError, match="NaN"):
        HierarchicalKMeans([2], engine="dask").fit(np.full((5, 4), np.nan, dtype=np.float32))


class Crash(RuntimeError):
    pass


def test_resume_from_checkpoints_ends_where_an_uninterrupted_fit_does(tmp_path):
    data = points()
    reference = HierarchicalKMeans(LEVELS, engine="dask", seed=4).fit(data)

    def crash_at_level2_step2(level, step, steps):
        if (level, step) == (2, 2):
            raise Crash

    store = Store(str(tmp_path))
    with pytest.raises(Crash):
        HierarchicalKMeans(LEVELS, engine="dask", seed=4, checkpoints=StoreCheckpoints(store, "tree"),
                           on_step=crash_at_level2_step2).fit(data)
    assert store.exists("tree/level-1/level.json") and not store.exists("tree/level-2/level.json")
    steps_seen = []
    resumed = HierarchicalKMeans(LEVELS, engine="dask", seed=4, checkpoints=StoreCheckpoints(store, "tree"),
                                 on_step=lambda *a: steps_seen.append(a[:2])).fit(data)
    assert steps_seen == [(2, 3), (3, 0), (3, 1), (3, 2), (3, 3)]  # level 1 and level 2 steps 0-2 were not redone
    for ours, theirs in zip(resumed.levels_, reference.levels_):
        np.testing.assert_allclose(ours.centroids, theirs.centroids, atol=1e-6)
        np.testing.assert_array_equal(ours.labels, theirs.labels)
    reloaded = load_tree(store, "tree")
    np.testing.assert_array_equal(reloaded[2].labels, reference.levels_[2].labels)


def test_out_of_core_input_streamed_from_the_store(tmp_path):
    rng = np.random.default_rng(2)
    store = Store(str(tmp_path))
    shards = []
    for number in range(4):
        matrix = rng.normal(size=(500, 8)).astype(np.float16)
        keep = rng.random(500) > 0.2
        uids = np.array([f"{number}-{i}" for i in range(500)])
        shards.append((uids, matrix, keep))
    catalog = Catalog(store)
    import_embeddings(catalog, "imported", shards)
    pool = pool_embeddings(store, catalog.snapshot("imported"))
    assert pool.rows == sum(int(s[2].sum()) for s in shards)
    written = pd.read_parquet(store.path(pool.write_uids("inputs.parquet").split("/")[-1]))["uid"]
    np.testing.assert_array_equal(written.to_numpy(), np.concatenate([s[0][s[2]] for s in shards]))
    expected = np.concatenate([s[1][s[2]] for s in shards])
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        array = pool.as_dask_array()
        assert array.numblocks[0] == 4
        np.testing.assert_array_equal(array.compute(), expected)
        streamed = HierarchicalKMeans([30, {"k": 5, "resampling_steps": 2}], metric="l2", engine="dask", client=client).fit(array)
    in_memory = HierarchicalKMeans([30, {"k": 5, "resampling_steps": 2}], metric="l2", engine="dask").fit(expected.astype(np.float16))
    np.testing.assert_array_equal(streamed.levels_[0].labels, in_memory.levels_[0].labels)
    np.testing.assert_allclose(streamed.levels_[1].centroids, in_memory.levels_[1].centroids, atol=1e-5)


def test_shards_of_different_dimensions_are_refused(tmp_path):
    store = Store(str(tmp_path))
    shards = [(np.array(["a", "b"]), np.ones((2, 8), np.float16)), (np.array(["c"]), np.ones((1, 4), np.float16))]
    with pytest.raises(InputError, match="imported shard 1: dimension 4, earlier shards 8"):
        import_embeddings(Catalog(store), "bad", shards)
    with pytest.raises(InputError, match="no pool 'missing'.*run pool_refresh"):
        pool_embeddings(store, Catalog(store).snapshot("missing"))


def test_split_level_one_splits_every_coarse_cluster():
    from tasks.cluster.split import grouped_assign, split_clusters

    data = points(n=4000, dim=5)
    tree = HierarchicalKMeans([{"k": 10, "split": 6}, 8], metric="l2", engine="dask", seed=2).fit(data)
    level1 = tree.levels_[0]
    assert level1.k == 60 and len(level1.labels) == 4000
    assert tree.levels_[1].k == 8 and len(tree.levels_[1].labels) == 60
    # every point sits in a sub-cluster of its own coarse cluster, nearest among those
    coarse = HierarchicalKMeans([10], metric="l2", engine="dask", seed=2).fit(data).levels_[0].labels
    assert (level1.labels // 6 == coarse).all()
    centroids, offsets, labels, distances = split_clusters(data, coarse, 10, 6, seed=1)
    full = ((data[:, None, :] - centroids[None]) ** 2).sum(-1)
    own = np.where((np.arange(60)[None, :] // 6) == coarse[:, None], full, np.inf)
    np.testing.assert_array_equal(labels, own.argmin(1))
    np.testing.assert_allclose(distances, own.min(1), rtol=1e-4, atol=1e-4)
    small = np.array([0, 0, 1, 1, 1, 1, 1, 1])  # a coarse cluster of 2 gets 2 sub-clusters, not 6
    _, offsets, _, _ = split_clusters(data[:8], small, 2, 6)
    np.testing.assert_array_equal(offsets, [0, 2, 8])
    relabelled, _ = grouped_assign(data[:8], small, data[:8], offsets)
    np.testing.assert_array_equal(relabelled, np.arange(8))
    with pytest.raises(InputError, match="level 2: split=3 is only for level 1"):
        HierarchicalKMeans([10, {"k": 5, "split": 3}])
