"""Clusters against true concepts: majority owner per cluster, clusters per concept, the spread summary."""

import numpy as np
import pandas as pd
import pytest

from tasks.cluster.hierarchical import ClusterLevel
from tasks.cluster.tree import StoreCheckpoints
from tasks.common.store import Store
from tasks.demo_pool.cluster_truth import clusters_per_concept, least_squares_slope, spread_summary


def _two_level_tree(tmp_path):
    store = Store(str(tmp_path))
    # 8 samples -> 4 level-1 clusters -> 2 top clusters
    level1 = ClusterLevel(centroids=np.zeros((4, 2), np.float32), labels=np.array([0, 0, 1, 1, 2, 2, 3, 3]),
                          distances=np.zeros(8, np.float32))
    level2 = ClusterLevel(centroids=np.zeros((2, 2), np.float32), labels=np.array([0, 0, 0, 1]),
                          distances=np.zeros(4, np.float32))
    checkpoints = StoreCheckpoints(store, "tree")
    checkpoints.save_level(1, level1)
    checkpoints.save_level(2, level2)
    uids = [f"u{i}" for i in range(8)]
    store.write_bytes("tree/inputs.parquet", pd.DataFrame({"uid": uids}).to_parquet(index=False))
    TREE.update(outputs={"folder": store.uri("tree"), "inputs": store.uri("tree/inputs.parquet")})
    return store, uids


TREE: dict = {}  # the tree's manifest, as the clustering stage publishes it (its outputs are what is read)


def test_clusters_per_concept_follow_the_tree_to_the_top(tmp_path):
    store, uids = _two_level_tree(tmp_path)
    truth = pd.DataFrame({"uid": uids, "concept": ["a"] * 5 + ["b"] * 3})
    per_concept = clusters_per_concept(store, TREE, truth)
    # top cluster 0 holds samples 0-5 (5 a, 1 b): owned by a; top cluster 1 holds samples 6-7: owned by b
    assert per_concept.to_dict("index") == {"a": {"samples": 5, "clusters": 1}, "b": {"samples": 3, "clusters": 1}}


def test_clusters_per_concept_without_truth_or_with_one_concept(tmp_path):
    store, uids = _two_level_tree(tmp_path)
    nothing = clusters_per_concept(store, TREE, pd.DataFrame({"uid": ["x"], "concept": ["a"]}))
    assert len(nothing) == 0 and spread_summary(nothing)["concepts"] == 0
    one = clusters_per_concept(store, TREE, pd.DataFrame({"uid": uids, "concept": ["a"] * 7 + [None]}))
    assert one.to_dict("index") == {"a": {"samples": 7, "clusters": 2}}
    assert spread_summary(one)["loglog_slope"] is None


def test_spread_summary_slope():
    sizes = np.array([1000, 500, 100, 50, 10])
    proportional = pd.DataFrame({"samples": sizes, "clusters": sizes // 10})
    even = pd.DataFrame({"samples": sizes, "clusters": [3, 3, 3, 3, 3]})
    assert spread_summary(proportional)["loglog_slope"] > 0.8
    assert spread_summary(even)["loglog_slope"] == 0.0
    assert spread_summary(even)["concepts_with_a_cluster"] == 5


@pytest.mark.parametrize("samples,clusters", [
    ([], []),                                   # no concepts
    ([300], [4]),                               # one concept
    ([120, 100, 80], [1, 0, 0]),                # one cluster: a slope, but no error
    ([100, 100, 100, 100], [2, 1, 3, 1]),       # all sizes equal: the reported LinAlgError
    ([0, 0, 0], [0, 0, 0]),                     # zeros
    ([50, np.nan, 20], [2, 1, np.nan]),         # NaN
])
def test_spread_summary_survives_degenerate_counts(samples, clusters):
    summary = spread_summary(pd.DataFrame({"samples": samples, "clusters": clusters}))
    assert summary["concepts"] == len(samples)
    slope = summary["loglog_slope"]
    assert slope is None or np.isfinite(slope)
    if len(samples) < 2 or len(set(samples)) == 1:
        assert slope is None
    assert summary["clusters"] == int(np.nansum(clusters))


def test_least_squares_slope():
    assert least_squares_slope([1, 2, 3], [2, 4, 6]) == pytest.approx(2.0)
    assert least_squares_slope([0, 1, np.nan, 2, 3], [1, 0, 5, -1, np.inf]) == pytest.approx(-1.0)  # finite points only
    assert least_squares_slope([2, 2, 2], [1, 2, 3]) is None and least_squares_slope([1], [1]) is None
