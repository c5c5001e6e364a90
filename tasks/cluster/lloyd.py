"""The per-block arithmetic of Lloyd's k-means, written once for numpy and cupy arrays.

In:  a block of points (``n x d``, numpy or cupy, any float dtype) and centroids (``k x d``).
Out: :func:`assign` the nearest centroid and squared L2 distance of every point;
     :func:`block_statistics` one block's partial sums and counts (only for the clusters the block
     touches), inertia and farthest points, the only thing that leaves a worker in an iteration;
     :func:`combine_statistics` adds them up over the union of the clusters;
     :func:`lloyd` the iteration itself (update and stopping rule), for every k-means here.

Assignment is one matrix product per chunk of rows (never an ``n x k`` matrix for the whole
block): with ``x' = [x, 1]`` and ``c' = [c, -|c|^2 / 2]`` the score ``x' . c'`` is largest for the
nearest centroid, so the product already holds everything the argmax needs (the inner size is
padded with zeros to a multiple of 8, and the product is written into one reused buffer). Partial sums are a
sparse one-hot ``touched x n`` matrix times the block: linear in ``n d``, unlike a dense one-hot product,
and never a dense ``k x d`` matrix per block (at ``k = 100,000`` and ``d = 512`` that would be 400 MB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

DEFAULT_CHUNK_ROWS = 2048  # rows per matrix product: its scores stay in cache
SUM_CHUNK_ROWS = 16384  # rows of a float16 block converted to float32 at a time for the partial sums


def array_module(array):
    """``cupy`` for a cupy array, else ``numpy``."""
    try:
        import cupy

        return cupy.get_array_module(array)
    except ImportError:
        return np


def to_host(array) -> np.ndarray:
    """A numpy copy of a numpy or cupy array."""
    return array.get() if hasattr(array, "get") and not isinstance(array, np.ndarray) else np.asarray(array)


def _sparse_module(xp):
    if xp is np:
        import scipy.sparse

        return scipy.sparse
    import cupyx.scipy.sparse

    return cupyx.scipy.sparse


def augmented_centroids(centroids, xp, width: int):
    """``[c, -|c|^2 / 2, 0...]`` transposed (``width x k`` float32) on the device of ``xp``."""
    c = xp.asarray(centroids, dtype=xp.float32)
    table = xp.zeros((width, len(c)), dtype=xp.float32)
    table[: c.shape[1]] = c.T
    table[c.shape[1]] = -0.5 * (c * c).sum(axis=1)
    return table


def padded_width(d: int) -> int:
    """``d + 1`` rounded up to a multiple of 8: BLAS kernels run faster on aligned inner sizes."""
    return (d + 1 + 7) // 8 * 8


def assign(points, centroids, chunk_rows: int = DEFAULT_CHUNK_ROWS):
    """Nearest centroid (int64) and squared L2 distance (float32) of every row of ``points``."""
    xp = array_module(points)
    n, d = points.shape
    width = padded_width(d)
    target = augmented_centroids(centroids, xp, width)
    labels = xp.empty(n, dtype=xp.int64)
    distances = xp.empty(n, dtype=xp.float32)
    rows = xp.zeros((min(chunk_rows, max(n, 1)), width), dtype=xp.float32)
    rows[:, d] = 1.0
    scores_buffer = xp.empty((len(rows), len(centroids)), dtype=xp.float32)
    row_offsets = xp.arange(len(rows), dtype=xp.int64) * len(centroids)  # flat index of each row's first score
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        chunk = rows[: stop - start]
        chunk[:, :d] = points[start:stop]
        scores = scores_buffer[: stop - start]
        xp.matmul(chunk, target, out=scores)
        best = scores.argmax(axis=1)
        top = scores.ravel()[best + row_offsets[: stop - start]]
        x = chunk[:, :d]
        labels[start:stop] = best
        distances[start:stop] = xp.maximum(xp.einsum("ij,ij->i", x, x) - 2.0 * top, 0.0)
    return labels, distances


def cluster_sums(points, labels, k: int, chunk_rows: int = SUM_CHUNK_ROWS):
    """The clusters that ``labels`` touch (sorted ids), their sums of ``points`` (float64, one row
    per id) and counts, by a sparse one-hot product: the cost and the result grow with the block,
    not with ``k``.

    A float32 (or float64) block is multiplied as it is. A narrower block (float16) is never copied
    whole to float32: its rows are grouped by cluster and summed ``chunk_rows`` at a time, each chunk
    touching one contiguous range of the sorted ids.
    """
    xp = array_module(points)
    sparse = _sparse_module(xp)
    n, d = points.shape
    ids, inverse = xp.unique(labels, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = xp.bincount(inverse, minlength=len(ids)).astype(xp.int64)
    if points.dtype in (xp.float32, xp.float64):
        one_hot = sparse.csr_matrix((xp.ones(n, dtype=points.dtype), (inverse, xp.arange(n))), shape=(len(ids), n))
        return ids.astype(xp.int64), xp.asarray(one_hot @ points, dtype=xp.float64), counts
    sums = xp.zeros((len(ids), d), dtype=xp.float64)
    grouped = xp.argsort(inverse)
    for start in range(0, n, chunk_rows):
        rows = grouped[start:start + chunk_rows]
        group = inverse[rows]
        first, last = int(group[0]), int(group[-1])
        one_hot = sparse.csr_matrix((xp.ones(len(rows), dtype=xp.float32), (group - first, xp.arange(len(rows)))),
                                    shape=(last - first + 1, len(rows)))
        sums[first:last + 1] += one_hot @ points[rows].astype(xp.float32)
    return ids.astype(xp.int64), sums, counts


@dataclass
class BlockStatistics:
    """What one block (or several, combined) contributes to an iteration (host numpy arrays).

    Sparse in the clusters: ``ids`` are the sorted clusters with at least one point, ``sums`` and
    ``counts`` their rows; a cluster absent from ``ids`` is empty. A block of ``m`` rows sends at
    most ``m`` rows of sums, however large ``k`` is.
    """

    k: int
    ids: np.ndarray  # sorted int64 cluster ids
    sums: np.ndarray  # len(ids) x d float64
    counts: np.ndarray  # len(ids) int64
    inertia: float
    far_points: np.ndarray  # up to n_far points farthest from their centroid (float32)
    far_distances: np.ndarray

    def dense_sums(self) -> np.ndarray:
        dense = np.zeros((self.k, self.sums.shape[1]), dtype=np.float64)
        dense[self.ids] = self.sums
        return dense

    def dense_counts(self) -> np.ndarray:
        dense = np.zeros(self.k, dtype=np.int64)
        dense[self.ids] = self.counts
        return dense


def statistics_of(points, labels, distances, k: int, far: int) -> BlockStatistics:
    """The statistics of an assigned block, with its ``far`` points farthest from their centroid."""
    xp = array_module(points)
    ids, sums, counts = cluster_sums(points, labels, k)
    far = min(far, len(distances))
    if far == 0:
        farthest = xp.zeros(0, dtype=xp.int64)
    else:  # the far largest distances, in decreasing order, without sorting the whole block
        candidates = xp.argpartition(-distances, far - 1)[:far] if far < len(distances) else xp.arange(far)
        farthest = candidates[xp.argsort(-distances[candidates])]
    return BlockStatistics(k=k, ids=to_host(ids), sums=to_host(sums), counts=to_host(counts),
                           inertia=float(distances.astype(xp.float64).sum()),
                           far_points=to_host(points[farthest]).astype(np.float32).reshape(far, points.shape[1]),
                           far_distances=to_host(distances[farthest]).astype(np.float32))


def block_statistics(points, centroids, n_far: int = 16, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> BlockStatistics:
    """Assign one block and sum it per cluster; the farthest points re-seed empty clusters."""
    labels, distances = assign(points, centroids, chunk_rows)
    return statistics_of(points, labels, distances, len(centroids), n_far)


def combine_statistics(*parts: BlockStatistics) -> BlockStatistics:
    """The sum of several blocks' statistics over the union of their clusters (keeps the globally
    farthest points); partial sums of one cluster are added in the order of ``parts``."""
    far_distances = np.concatenate([p.far_distances for p in parts])
    order = np.argsort(-far_distances, kind="stable")[: max(len(p.far_distances) for p in parts)]
    ids = np.concatenate([p.ids for p in parts])
    by_id = np.argsort(ids, kind="stable")
    union, starts = np.unique(ids[by_id], return_index=True)
    width = parts[0].sums.shape[1]
    rows = np.concatenate([p.sums.reshape(-1, width) for p in parts])[by_id]
    counts = np.concatenate([p.counts for p in parts])[by_id]
    empty = len(union) == 0
    return BlockStatistics(
        k=parts[0].k, ids=union.astype(np.int64),
        sums=np.zeros((0, width)) if empty else np.add.reduceat(rows, starts, axis=0),
        counts=np.zeros(0, dtype=np.int64) if empty else np.add.reduceat(counts, starts).astype(np.int64),
        inertia=float(sum(p.inertia for p in parts)),
        far_points=np.concatenate([p.far_points for p in parts])[order],
        far_distances=far_distances[order],
    )


def updated_centroids(stats: BlockStatistics, previous: np.ndarray) -> tuple[np.ndarray, int]:
    """Means of the clusters; an empty cluster takes one of the farthest points (else keeps its centroid).

    Returns the new centroids (float32) and the number of empty clusters that were seen.
    """
    centroids = previous.astype(np.float32, copy=True)
    filled = stats.counts > 0
    ids = stats.ids[filled]
    centroids[ids] = (stats.sums[filled] / stats.counts[filled, None]).astype(np.float32)
    is_empty = np.ones(len(previous), dtype=bool)
    is_empty[ids] = False
    empty = np.flatnonzero(is_empty)
    reseed = min(len(empty), len(stats.far_points))
    centroids[empty[:reseed]] = stats.far_points[:reseed]
    return centroids, len(empty)


def lloyd(statistics: Callable[[np.ndarray], BlockStatistics], centroids: np.ndarray, max_iter: int,
          tol: float) -> tuple[np.ndarray, int]:
    """Lloyd's iteration from ``centroids``: ``statistics(centroids)`` sums all points per cluster
    (in memory or on Dask workers), :func:`updated_centroids` moves the centroids.

    Stops after ``max_iter`` iterations or when the inertia improved by at most ``tol`` times itself.
    Returns the centroids (float32) and the number of iterations run.
    """
    previous_inertia = np.inf
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        stats = statistics(centroids)
        centroids, _ = updated_centroids(stats, centroids)
        if previous_inertia - stats.inertia <= tol * stats.inertia:
            break
        previous_inertia = stats.inertia
    return centroids, n_iter
