"""Clusters against true concepts: majority owner per cluster, clusters per concept, the spread summary."""

import numpy as np
import pandas as pd

from tasks.cluster.hierarchical import ClusterLevel
from tasks.cluster.tree import StoreCheckpoints
from tasks.common.store import Store
from tasks.evaluate.cluster_truth import clusters_per_concept, spread_summary


def test_clusters_per_concept_follow_the_tree_to_the_top(tmp_path):
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
    truth = pd.DataFrame({"uid": uids, "concept": ["a"] * 5 + ["b"] * 3})
    per_concept = clusters_per_concept(store, "tree", truth)
    # top cluster 0 holds samples 0-5 (5 a, 1 b): owned by a; top cluster 1 holds samples 6-7: owned by b
    assert per_concept.to_dict("index") == {"a": {"samples": 5, "clusters": 1}, "b": {"samples": 3, "clusters": 1}}


def test_spread_summary_slope():
    sizes = np.array([1000, 500, 100, 50, 10])
    proportional = pd.DataFrame({"samples": sizes, "clusters": sizes // 10})
    even = pd.DataFrame({"samples": sizes, "clusters": [3, 3, 3, 3, 3]})
    assert spread_summary(proportional)["loglog_slope"] > 0.8
    assert spread_summary(even)["loglog_slope"] == 0.0
    assert spread_summary(even)["concepts_with_a_cluster"] == 5
