"""Assigning a grown pool to its cluster tree (tasks/cluster/assign.py) and the drift figures (drift.py)."""

import numpy as np
import pandas as pd
import pytest

from tasks.cluster.assign import assign_tree, base_inputs, previous_tree
from tasks.cluster.drift import TreeShape, TreeUpdateConfig, drift_report
from tasks.cluster.hierarchical import normalise_rows
from tasks.cluster.imported import import_embeddings
from tasks.cluster.run import ClusterConfig, cluster_pool
from tasks.cluster.tree import load_tree
from tasks.common.catalog import Catalog
from tasks.common.errors import InputError
from tasks.common.store import Store

CONFIG = ClusterConfig.from_dict({"levels": [12, {"k": 3, "resampling_steps": 2}], "engine": "dask"})
ROWS, DIM = 200, 8
CENTRES = np.random.default_rng(99).normal(size=(6, DIM)) * 4


def shard(number, shift=0.0, seed=None):
    rng = np.random.default_rng(number if seed is None else seed)
    points = CENTRES[rng.integers(0, len(CENTRES), ROWS)] + rng.normal(size=(ROWS, DIM)) + shift
    return np.array([f"{number:02d}-{i:05d}" for i in range(ROWS)]), points.astype(np.float32)


def import_pool(catalog, specs):
    """Import shards given as (number, shift, keep) and return the pool's snapshot."""
    shards = []
    for number, shift, keep in specs:
        uids, points = shard(number, shift)
        shards.append((uids, points, np.ones(ROWS, dtype=bool) if keep is None else keep))
    import_embeddings(catalog, "grow", shards)
    return catalog.snapshot("grow")


def nearest(points, centroids):
    distances = ((normalise_rows(points)[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    return distances.argmin(axis=1)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    catalog = Catalog(Store(str(tmp_path_factory.mktemp("grow"))))
    snapshot = import_pool(catalog, [(n, 0.0, None) for n in range(3)])
    return catalog, cluster_pool(catalog, snapshot, CONFIG)


def test_new_samples_go_to_their_nearest_centroid_and_old_ones_stay(fitted):
    catalog, tree = fitted
    store = catalog.store
    drop = np.ones(ROWS, dtype=bool)
    drop[:10] = False  # the filters no longer keep 10 old samples of shard 1
    snapshot = import_pool(catalog, [(0, 0.0, None), (1, 0.0, drop), (2, 0.0, None), (3, 0.0, None)])
    base = previous_tree(catalog, snapshot, CONFIG)
    assert base["content_hash"] == tree["content_hash"]
    other = ClusterConfig.from_dict({**CONFIG.to_dict(), "seed": 1})
    assert previous_tree(catalog, snapshot, other) is None  # another config: a tree is fitted
    grown = assign_tree(catalog, snapshot, CONFIG, TreeUpdateConfig(), base)
    old, new = (load_tree(store, store.relative(t["outputs"]["folder"])) for t in (tree, grown))
    keep = np.concatenate([np.ones(ROWS, bool), drop, np.ones(ROWS, bool)])
    np.testing.assert_array_equal(new[0].labels[:3 * ROWS - 10], old[0].labels[keep])  # old samples unchanged
    np.testing.assert_array_equal(new[0].centroids, old[0].centroids)
    np.testing.assert_array_equal(new[1].labels, old[1].labels)
    np.testing.assert_array_equal(new[0].labels[3 * ROWS - 10:], nearest(shard(3)[1], old[0].centroids))
    assigned = grown["stats"]["assigned"]
    assert (assigned["new_samples"], assigned["dropped_samples"]) == (ROWS, 10)
    assert grown["rows"]["samples"] == 4 * ROWS - 10 and grown["inputs"] == snapshot.hashes
    drift = grown["stats"]["drift"]
    assert [level["level"] for level in drift["levels"]] == [1, 2]
    # same distribution: about 5% of the new samples lie beyond the fitted samples' 95th percentile
    assert all(level["far_share_new"] < 0.15 for level in drift["levels"]) and not drift["drifted"]
    assert store.read_json(store.relative(grown["outputs"]["drift"])) == drift
    # the reference is the exact 95th percentile of the fitted samples' distances at each level
    points = normalise_rows(np.concatenate([shard(n)[1] for n in range(3)]))
    distances = TreeShape.of(old).distances(points, old[0].labels)
    np.testing.assert_allclose(assigned["reference"]["distance"], np.quantile(distances, 0.95, axis=0), rtol=1e-5)
    np.testing.assert_allclose(old[0].distances, distances[:, 0], rtol=1e-3, atol=1e-5)
    # a grown pool of a grown pool: assigned from the assigned tree, counted since the fit
    snapshot = import_pool(catalog, [(0, 0.0, None), (1, 0.0, drop), (2, 0.0, None), (3, 0.0, None),
                                     (4, 0.0, None)])
    again = assign_tree(catalog, snapshot, CONFIG, TreeUpdateConfig(), previous_tree(catalog, snapshot, CONFIG))
    assert again["stats"]["assigned"]["base"] == grown["outputs"]["folder"]
    assert again["stats"]["assigned"]["fitted"]["content_hash"] == tree["content_hash"]
    assert again["stats"]["assigned"]["since_fit"]["samples"] == 2 * ROWS
    latest = load_tree(store, store.relative(again["outputs"]["folder"]))
    np.testing.assert_array_equal(latest[0].labels[:len(new[0].labels)], new[0].labels)


def test_samples_from_elsewhere_are_drift(fitted):
    catalog, tree = fitted
    snapshot = import_pool(catalog, [(0, 0.0, None), (1, 0.0, None), (2, 0.0, None), (5, 30.0, None),
                                     (6, 30.0, None)])
    update = TreeUpdateConfig(on_drift="recluster")
    grown = assign_tree(catalog, snapshot, CONFIG, update, tree)
    drift = grown["stats"]["drift"]
    assert drift["drifted"] and drift["on_drift"] == "recluster"
    assert drift["levels"][0]["far_share_new"] > 0.5 and drift["reasons"]


def test_a_tree_without_shard_ids_in_its_inputs_is_refused(fitted, tmp_path):
    catalog, tree = fitted
    store = Store(str(tmp_path))
    store.write_bytes("old/inputs.parquet", pd.DataFrame({"uid": ["a", "b"]}).to_parquet(index=False))
    with pytest.raises(InputError, match="no shard_id and row columns"):
        base_inputs(store, "old/inputs.parquet")


def test_drift_report_and_settings():
    reference = {"distance": [1.0, 2.0], "entropy": [0.9, 0.8], "samples": 100}
    report = drift_report(TreeUpdateConfig(), reference, 10, np.array([1, 1]), 20, np.array([2, 5]), [0.9, 0.7])
    assert [level["far_share_since_fit"] for level in report["levels"]] == [0.1, 0.25]
    assert report["levels"][1]["entropy_change"] == pytest.approx(-0.1)
    assert report["drifted"] and len(report["reasons"]) == 2  # level 2: far share and entropy
    with pytest.raises(InputError, match="on_drift='refit'"):
        TreeUpdateConfig.from_dict({"on_drift": "refit"})
    with pytest.raises(InputError, match="unknown setting"):
        TreeUpdateConfig.from_dict({"threshold": 0.2})
