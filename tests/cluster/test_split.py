"""The split level runs the one Lloyd loop of k-means: same update, same max_iter and tol rule."""

import numpy as np

from tasks.cluster.kmeans import KMeans
from tasks.cluster.lloyd import BlockStatistics, lloyd
from tasks.cluster.split import split_clusters, split_seeds
from test_kmeans import blobs


def _statistics_with_inertias(inertias, seen):
    def statistics(centroids):
        seen.append(centroids.copy())
        k, d = centroids.shape
        return BlockStatistics(k=k, ids=np.arange(k), sums=np.ones((k, d)) * len(seen), counts=np.ones(k, dtype=np.int64),
                               inertia=inertias[len(seen) - 1], far_points=np.zeros((0, d), np.float32),
                               far_distances=np.zeros(0, np.float32))
    return statistics


def test_lloyd_stops_when_the_inertia_improves_by_at_most_tol():
    seen = []
    start = np.zeros((2, 3), dtype=np.float32)
    centroids, n_iter = lloyd(_statistics_with_inertias([100.0, 50.0, 49.999, 10.0], seen), start, 10, 1e-4)
    assert n_iter == 3 and len(seen) == 3  # 50 -> 49.999 improves by 2e-5 of the inertia: stop
    np.testing.assert_array_equal(centroids, np.full((2, 3), 3, dtype=np.float32))  # means after iteration 3
    seen.clear()
    _, n_iter = lloyd(_statistics_with_inertias([100.0, 50.0, 49.999, 10.0], seen), start, 2, 1e-4)
    assert n_iter == 2  # max_iter first


def test_split_of_one_coarse_cluster_is_plain_kmeans_from_the_same_seeds():
    points, _ = blobs(n_per=150, centers=5, dim=4, seed=4)
    groups = np.zeros(len(points), dtype=np.int64)
    seeds, _ = split_seeds(groups, 1, 5, seed=3)
    centroids, offsets, labels, distances = split_clusters(points, groups, 1, 5, seed=3, max_iter=30, tol=1e-4)
    plain = KMeans(5, engine="dask", max_iter=30, tol=1e-4).fit(points, init=points[seeds])
    np.testing.assert_array_equal(offsets, [0, 5])
    assert (labels == plain.labels_).mean() > 0.99
    np.testing.assert_allclose(centroids, plain.cluster_centers_, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(distances, plain.distances_, rtol=1e-3, atol=1e-3)
