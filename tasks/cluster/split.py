"""A cheap level 1 for very large pools: coarse k-means, then every cluster split by a local k-means.

In:  points (numpy/cupy, or a Dask array of numpy/cupy blocks), the coarse cluster of every point
     (``groups``, numpy int64), the number of coarse clusters, ``split`` (sub-clusters per coarse
     cluster, at most its size), ``max_iter`` and ``tol`` (as for k-means), a seed and an optional
     Dask client.
Out: :func:`split_clusters`: the sub-centroids (float32, those of coarse cluster ``g`` are rows
     ``offsets[g]:offsets[g + 1]``), and every point's sub-cluster and squared distance to it.

All coarse clusters are split at once: the Lloyd iteration of plain k-means
(:func:`~tasks.cluster.lloyd.lloyd`: same update, same ``max_iter`` and ``tol`` stopping rule)
in which each point is compared only with the sub-centroids of its own coarse cluster (a batched
matrix-vector product per chunk of rows); the partial sums are the same sparse one-hot product.
A sub-cluster left empty keeps its centroid. The cost per iteration is ``n x split x d``,
``k_coarse / split`` times less than one level-1 k-means with ``k_coarse x split`` clusters.
Seeds are ``split`` random members of every coarse cluster.
"""

from __future__ import annotations

import numpy as np

from tasks.cluster.lloyd import BlockStatistics, array_module, cluster_sums, combine_statistics, lloyd, to_host

CANDIDATE_BUDGET = 1 << 24  # floats in one chunk's (rows x split x d) candidate block


def grouped_assign(points, groups, centroids, offsets: np.ndarray):
    """Each point's nearest sub-centroid among those of its group, and the squared distance."""
    xp = array_module(points)
    n, d = points.shape
    sizes = np.diff(offsets)
    width = int(sizes.max())
    rows_per_chunk = max(1, CANDIDATE_BUDGET // max(1, width * d))
    table = xp.asarray(centroids, dtype=xp.float32)
    squared = (table * table).sum(axis=1)
    groups = xp.asarray(groups)
    starts, counts = xp.asarray(offsets[:-1]), xp.asarray(sizes)
    labels = xp.empty(n, dtype=xp.int64)
    distances = xp.empty(n, dtype=xp.float32)
    slots = xp.arange(width)
    for first in range(0, n, rows_per_chunk):
        last = min(n, first + rows_per_chunk)
        x = xp.asarray(points[first:last], dtype=xp.float32)
        g = groups[first:last]
        valid = slots[None, :] < counts[g][:, None]
        ids = xp.where(valid, starts[g][:, None] + slots[None, :], 0)
        scores = xp.einsum("md,msd->ms", x, table[ids]) - 0.5 * squared[ids]
        scores = xp.where(valid, scores, -xp.inf)
        best = scores.argmax(axis=1)
        top = xp.take_along_axis(scores, best[:, None], axis=1)[:, 0]
        labels[first:last] = xp.take_along_axis(ids, best[:, None], axis=1)[:, 0]
        distances[first:last] = xp.maximum((x * x).sum(axis=1) - 2.0 * top, 0.0)
    return labels, distances


def _block_statistics(points, groups, centroids, offsets) -> BlockStatistics:
    """One block's sums, counts and inertia; no far points, so a sub-cluster left empty keeps its
    centroid (a far point of another coarse cluster must not re-seed it)."""
    xp = array_module(points)
    labels, distances = grouped_assign(points, groups, centroids, offsets)
    k, d = centroids.shape
    return BlockStatistics(sums=to_host(cluster_sums(points, labels, k)),
                           counts=to_host(xp.bincount(labels, minlength=k)).astype(np.int64),
                           inertia=float(distances.astype(xp.float64).sum()),
                           far_points=np.zeros((0, d), dtype=np.float32), far_distances=np.zeros(0, dtype=np.float32))


def _block_assign(points, groups, centroids, offsets):
    labels, distances = grouped_assign(points, groups, centroids, offsets)
    return to_host(labels), to_host(distances)


def split_seeds(groups: np.ndarray, k_coarse: int, split: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``min(split, size)`` random members of every group (grouped) and the offsets."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(groups)), groups))
    sizes = np.bincount(groups, minlength=k_coarse)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(len(order)) - starts[groups[order]]
    chosen = order[rank < split]
    offsets = np.zeros(k_coarse + 1, dtype=np.int64)
    np.cumsum(np.minimum(sizes, split), out=offsets[1:])
    return chosen[np.argsort(groups[chosen], kind="stable")], offsets


def split_clusters(points, groups: np.ndarray, k_coarse: int, split: int, seed: int = 0, max_iter: int = 50,
                   tol: float = 1e-4, client=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (sub-centroids, offsets per coarse cluster, labels, squared distances).

    ``max_iter`` and ``tol`` mean what they mean for :class:`~tasks.cluster.kmeans.KMeans`: both run
    the same :func:`~tasks.cluster.lloyd.lloyd` iteration.
    """
    from tasks.cluster.kmeans import compute_on, is_dask_array

    groups = np.asarray(groups, dtype=np.int64)
    seeds, offsets = split_seeds(groups, k_coarse, split, seed)
    seed_rows = points[seeds]
    if is_dask_array(seed_rows):
        seed_rows = compute_on(client, [seed_rows])[0]
    centroids = np.asarray(to_host(seed_rows), dtype=np.float32)
    if is_dask_array(points):
        import dask

        blocks = list(points.rechunk({1: -1}).to_delayed().ravel())
        bounds = np.concatenate([[0], np.cumsum(points.chunks[0])])
        block_groups = [groups[bounds[i]:bounds[i + 1]] for i in range(len(blocks))]

        def run(function, shared):
            return compute_on(client, [dask.delayed(function)(b, g, shared, offsets)
                                     for b, g in zip(blocks, block_groups)])
    else:
        def run(function, shared):
            return [function(points, groups, shared, offsets)]

    centroids, _ = lloyd(lambda current: combine_statistics(*run(_block_statistics, current)), centroids,
                         max_iter, tol)
    parts = run(_block_assign, centroids)
    return centroids, offsets, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
