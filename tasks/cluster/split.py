"""A cheap level 1 for very large pools: coarse k-means, then every cluster split by a local k-means.

In:  points (numpy/cupy, or a Dask array of numpy/cupy blocks), the coarse cluster of every point
     (``groups``, numpy int64), the number of coarse clusters, ``split`` (sub-clusters per coarse
     cluster, at most its size), ``max_iter`` and ``tol`` (as for k-means), a seed and an optional
     Dask client.
Out: :func:`split_clusters`: the sub-centroids (float32, those of coarse cluster ``g`` are rows
     ``offsets[g]:offsets[g + 1]``), and every point's sub-cluster and squared distance to it.

All coarse clusters are split at once: the Lloyd iteration of plain k-means
(:func:`~tasks.cluster.lloyd.lloyd`: same update, same ``max_iter`` and ``tol`` stopping rule)
in which each point is compared only with the sub-centroids of its own coarse cluster (the rows of
a block are ordered by coarse cluster and each cluster's rows multiplied by its sub-centroids: one
matrix product per coarse cluster present in the block); the partial sums are the same sparse
one-hot product.
A sub-cluster left empty keeps its centroid. The cost per iteration is ``n x split x d``,
``k_coarse / split`` times less than one level-1 k-means with ``k_coarse x split`` clusters.
Seeds are ``split`` random members of every coarse cluster.

On a Dask array the blocks stay on the workers that hold them: each block's slice of ``groups`` is
placed there once, the sub-centroids travel once per worker and iteration, and the statistics
(sparse in the sub-clusters, :class:`~tasks.cluster.lloyd.BlockStatistics`) are added up in a tree
of reductions. The driver holds ``groups``, the labels and distances (per-sample numeric arrays)
and the sub-centroids.
"""

from __future__ import annotations

import numpy as np

from tasks.cluster.lloyd import BlockStatistics, array_module, combine_statistics, lloyd, statistics_of, to_host

CANDIDATE_BUDGET = 1 << 24  # floats in one chunk's (rows x split) score matrix


def grouped_assign(points, groups, centroids, offsets: np.ndarray):
    """Each point's nearest sub-centroid among those of its group, and the squared distance."""
    xp = array_module(points)
    n = points.shape[0]
    table = xp.asarray(centroids, dtype=xp.float32)
    squared = (table * table).sum(axis=1)
    groups = xp.asarray(groups)
    order = xp.argsort(groups)
    present, starts = np.unique(to_host(groups[order]), return_index=True)
    ends = np.append(starts[1:], n)
    labels = xp.empty(n, dtype=xp.int64)
    distances = xp.empty(n, dtype=xp.float32)
    rows_per_chunk = max(1, CANDIDATE_BUDGET // max(1, int(np.diff(offsets).max())))
    # one matrix product per coarse cluster present (k_c of them, not one per point): the points of a
    # group are compared with that group's sub-centroids only, without copying them per point
    for group, first, last in zip(present.tolist(), starts.tolist(), ends.tolist()):
        low, high = int(offsets[group]), int(offsets[group + 1])
        for begin in range(first, last, rows_per_chunk):
            rows = order[begin:min(last, begin + rows_per_chunk)]
            x = xp.asarray(points[rows], dtype=xp.float32)
            scores = x @ table[low:high].T - 0.5 * squared[low:high]
            best = scores.argmax(axis=1)
            top = xp.take_along_axis(scores, best[:, None], axis=1)[:, 0]
            labels[rows] = low + best
            distances[rows] = xp.maximum((x * x).sum(axis=1) - 2.0 * top, 0.0)
    return labels, distances


def _block_statistics(points, groups, centroids, offsets) -> BlockStatistics:
    """One block's sums, counts and inertia; no far points, so a sub-cluster left empty keeps its
    centroid (a far point of another coarse cluster must not re-seed it)."""
    labels, distances = grouped_assign(points, groups, centroids, offsets)
    return statistics_of(points, labels, distances, len(centroids), 0)


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
    from tasks.cluster.kmeans import Blocks, is_dask_array

    groups = np.asarray(groups, dtype=np.int64)
    seeds, offsets = split_seeds(groups, k_coarse, split, seed)
    if is_dask_array(points):
        points = points.rechunk({1: -1})
        points = client.persist(points) if client is not None else points.persist()
    blocks = Blocks(points, client)
    centroids = blocks.rows(np.sort(seeds))[np.argsort(np.argsort(seeds))]
    bounds = np.append(blocks.starts, blocks.n)
    block_groups = [(g,) for g in blocks.put([groups[bounds[i]:bounds[i + 1]] for i in range(len(blocks.starts))])]

    def statistics(current):
        return blocks.map_reduce(_block_statistics, combine_statistics, current, offsets, per_block=block_groups)

    centroids, _ = lloyd(statistics, centroids, max_iter, tol)
    parts = blocks.gather(blocks.map(_block_assign, centroids, offsets, per_block=block_groups))
    return centroids, offsets, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
