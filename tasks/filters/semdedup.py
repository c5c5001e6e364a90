"""Semantic deduplication (SemDeDup, Abbas et al. 2023): near-identical embeddings inside k-means clusters.

In:  per shard its image embeddings file and which rows take part (global row ids of the
     embedded samples), a cosine threshold, the average cluster size (the pool's eligible rows
     divided by the number of clusters), the k-means engine, a seed and a Dask client (or None:
     the same graph on Dask's local scheduler).
Out: :func:`semantic_duplicates`: the global ids of the rows that are semantic duplicates.
     Rows that do not take part are left to the other filters.

Two stages, each on the workers, so that no process holds the pool's embeddings:

1. a coarse :class:`~tasks.cluster.kmeans.KMeans` over the pool (a Dask array streamed from the
   store, ``sqrt(n / cluster_size)`` clusters: the count that balances the two stages' cost);
   a coarse cluster larger than ``max_partition_rows`` is split, from a bounded sample of its
   members, until none is (a partition never outgrows a worker);
2. the rows are shuffled by coarse cluster, packed into partitions of at most
   ``max_partition_rows``; on its worker each coarse cluster is clustered again into clusters of
   about ``cluster_size`` members (the project's KMeans, in memory), and only pairs inside a
   fine cluster are compared (:func:`later_duplicates`).

What this process holds per eligible sample: its row and global id (16 bytes, the caller's) and
the coarse k-means' labels and distances (12 bytes) until the partitions are packed; the
embeddings stay on the workers. A coarse cluster of near-identical members (one placeholder image
a million times) may not split by k-means: after ``REFINE_ROUNDS`` it stays one partition,
compared in windows (bounded memory, time quadratic in its size).

Inside a cluster the members are ranked, and a member is a duplicate when its cosine with any
better-ranked member exceeds the threshold, so exactly one member of every group of duplicates
stays. The ranking keeps the member farthest from the centroid first (SemDeDup's choice: the
least prototypical example of a group survives), ties by row. Comparisons run a window of rows
against a window of columns at a time, so memory is bounded by the window, never by the largest
cluster squared.
"""

from __future__ import annotations

import math

import numpy as np

from tasks.cluster.hierarchical import normalise_rows
from tasks.cluster.kmeans import KMeans, assign_points
from tasks.cluster.pool_input import npy_header
from tasks.common.shuffle import compute
from tasks.common.store import Store

WINDOW_ROWS = 2048
WINDOW_COLUMNS = 8192
MAX_PARTITION_ROWS = 250_000  # rows of one partition: 250k x 512 float32 is 0.5 GB on a worker
REFINE_SAMPLE = 20_000  # members of an oversized coarse cluster that reach the driver to split it
REFINE_ROUNDS = 3


def later_duplicates(points: np.ndarray, labels: np.ndarray, rank: np.ndarray, threshold: float,
                     window_rows: int = WINDOW_ROWS, window_columns: int = WINDOW_COLUMNS) -> np.ndarray:
    """True for every row whose cosine with a better-ranked row of its cluster exceeds ``threshold``.

    ``points`` are L2-normalised; ``rank`` orders the members of a cluster (lower is better).
    """
    n = len(points)
    order = np.lexsort((np.arange(n), rank, labels))
    ordered, ordered_labels = points[order], labels[order]
    cluster_end = np.searchsorted(ordered_labels, ordered_labels, side="right")
    best_earlier = np.full(n, -np.inf, dtype=np.float32)
    for first in range(0, n, window_rows):
        last = min(n, first + window_rows)
        rows = np.arange(first, last)
        for column_start in range(first, int(cluster_end[last - 1]), window_columns):
            column_stop = min(int(cluster_end[last - 1]), column_start + window_columns)
            columns = np.arange(column_start, column_stop)
            similarity = ordered[first:last] @ ordered[column_start:column_stop].T
            same_cluster_earlier = ((ordered_labels[first:last, None] == ordered_labels[None, column_start:column_stop])
                                    & (rows[:, None] < columns[None, :]))
            similarity[~same_cluster_earlier] = -np.inf
            np.maximum(best_earlier[column_start:column_stop], similarity.max(axis=0),
                       out=best_earlier[column_start:column_stop])
    duplicate = np.zeros(n, dtype=bool)
    duplicate[order] = best_earlier > threshold
    return duplicate


# ----- the distributed stages -------------------------------------------------------------
def load_rows(store: Store, embeddings: str, rows: np.ndarray) -> np.ndarray:
    """The given rows of one shard's embeddings, L2-normalised, as float16 (half the memory of float32)."""
    return normalise_rows(store.read_npy(embeddings)[rows], f"semdedup embeddings {embeddings}").astype(np.float16)


def _split_shard(store: Store, embeddings: str, rows: np.ndarray, ids: np.ndarray, centroids: np.ndarray,
                 partition_of_cluster: np.ndarray, n_partitions: int) -> tuple:
    """One shard's eligible rows, each assigned to its coarse cluster here, grouped by partition:
    (ids, coarse labels, float16 vectors) each."""
    from tasks.cluster.lloyd import assign, to_host

    vectors = load_rows(store, embeddings, rows)  # exactly the rows the coarse k-means was fitted on
    coarse = to_host(assign(vectors, centroids)[0])
    partition_of_row = partition_of_cluster[coarse]
    order = np.argsort(partition_of_row, kind="stable")
    bounds = np.searchsorted(partition_of_row[order], np.arange(n_partitions + 1))
    return tuple((ids[order[a:b]], coarse[order[a:b]], vectors[order[a:b]]) for a, b in zip(bounds[:-1], bounds[1:]))


def _partition_duplicates(*pieces: tuple, cluster_size: int, threshold: float, seed: int, engine: str) -> np.ndarray:
    """One partition: every coarse cluster clustered again, then compared inside its fine clusters."""
    ids = np.concatenate([p[0] for p in pieces])
    coarse = np.concatenate([p[1] for p in pieces])
    if len(ids) < 2:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(ids, kind="stable")  # the same rows in the same order, whatever the arrival
    ids, coarse = ids[order], coarse[order]
    points = normalise_rows(np.concatenate([p[2] for p in pieces])[order], "semdedup embeddings")
    fine = np.zeros(len(ids), dtype=np.int64)
    rank = np.zeros(len(ids), dtype=np.float32)
    offset = 0
    for cluster in np.unique(coarse):  # the few coarse clusters of this partition
        members = np.flatnonzero(coarse == cluster)
        k = max(1, min(len(members), math.ceil(len(members) / cluster_size)))
        model = KMeans(k, engine=engine, seed=int(np.random.SeedSequence([seed, int(cluster)]).generate_state(1)[0]),
                       max_iter=20).fit(points[members])
        fine[members] = model.labels_ + offset
        rank[members] = -model.distances_
        offset += k
    return ids[later_duplicates(points, fine, rank, threshold)]


def coarse_cluster_count(rows: int, cluster_size: int) -> int:
    return max(1, min(rows, math.ceil(math.sqrt(rows / max(1, cluster_size)))))


def partitions_of_clusters(sizes: np.ndarray, max_rows: int) -> np.ndarray:
    """Consecutive clusters packed into partitions of at most ``max_rows`` (a larger cluster alone)."""
    partition = np.zeros(len(sizes), dtype=np.int64)
    filled = 0
    current = 0
    # a Python loop over coarse clusters: there are sqrt(n / cluster_size) of them (hundreds)
    for cluster, size in enumerate(sizes):
        if filled and filled + size > max_rows:
            current += 1
            filled = 0
        partition[cluster] = current
        filled += int(size)
    return partition


def semantic_duplicates(store: Store, shards: list[tuple[str, np.ndarray, np.ndarray]], threshold: float,
                        cluster_size: int, seed: int = 0, engine: str = "auto", client=None,
                        max_partition_rows: int = MAX_PARTITION_ROWS) -> np.ndarray:
    """Global ids of the semantic duplicates.

    ``shards``: per shard (embeddings file, store-relative; its rows that take part; their global ids).
    """
    import dask
    import dask.array as da

    shards = [(path, np.asarray(rows, dtype=np.int64), np.asarray(ids, dtype=np.int64))
              for path, rows, ids in shards if len(rows)]
    total = sum(len(rows) for _, rows, _ in shards)
    if total < 2:
        return np.zeros(0, dtype=np.int64)
    dim = int(npy_header(store, shards[0][0])[0][1])
    blocks = [da.from_delayed(dask.delayed(load_rows, pure=True)(store, path, rows), shape=(len(rows), dim),
                              dtype=np.float16) for path, rows, _ in shards]
    points = da.concatenate(blocks, axis=0)
    points = client.persist(points) if client is not None else points.persist()
    k = coarse_cluster_count(total, cluster_size)
    model = KMeans(k, engine=engine, seed=seed, max_iter=20, client=client).fit(points)
    centroids, labels = model.cluster_centers_, model.labels_
    del model
    rng = np.random.default_rng(seed)
    for _ in range(REFINE_ROUNDS):
        sizes = np.bincount(labels, minlength=len(centroids))
        oversized = np.flatnonzero(sizes > max_partition_rows)
        if not len(oversized):
            break
        centroids = _refined(points, labels, centroids, oversized, sizes, max_partition_rows, rng, engine, client)
        labels, _ = assign_points(points, centroids, client=client)
    sizes = np.bincount(labels, minlength=len(centroids))
    partition_of_cluster = partitions_of_clusters(sizes, max_partition_rows)
    n_partitions = int(partition_of_cluster.max()) + 1
    del labels
    shared = dask.delayed(centroids, pure=True), dask.delayed(partition_of_cluster, pure=True)
    split = [dask.delayed(_split_shard, nout=n_partitions, pure=True)(store, path, rows, ids, *shared, n_partitions)
             for path, rows, ids in shards]
    reduced = [dask.delayed(_partition_duplicates, pure=True)(*[pieces[p] for pieces in split],
                                                                cluster_size=cluster_size, threshold=threshold,
                                                                seed=seed, engine=engine)
               for p in range(n_partitions)]
    found = compute(client, reduced)
    return np.sort(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def _refined(points, labels: np.ndarray, centroids: np.ndarray, oversized: np.ndarray, sizes: np.ndarray,
             max_rows: int, rng: np.random.Generator, engine: str, client) -> np.ndarray:
    """Centroids with every oversized cluster replaced by sub-centroids fitted on a bounded sample of it."""
    replaced = []
    for cluster in oversized:  # a few oversized clusters, each from a sample of REFINE_SAMPLE rows
        members = np.flatnonzero(labels == cluster)
        sample_rows = np.sort(rng.choice(members, min(len(members), REFINE_SAMPLE), replace=False))
        sample = compute(client, [points[sample_rows]])[0]
        parts = min(len(sample), math.ceil(sizes[cluster] / max_rows) + 1)
        replaced.append(KMeans(parts, engine=engine, seed=int(rng.integers(1 << 31)), max_iter=20)
                        .fit(sample).cluster_centers_)
    keep = np.setdiff1d(np.arange(len(centroids)), oversized)
    return np.concatenate([centroids[keep]] + replaced).astype(np.float32)
