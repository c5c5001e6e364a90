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

Incremental runs (:func:`incremental_semantic_duplicates`, a grown pool filtered against its
previous run). A run from scratch keeps its k-means in the run folder: the coarse centroids (with
their packing into partitions and the number of rows they were fitted on) and, per partition, the
fine centroids of its coarse clusters (:meth:`~tasks.common.catalog.Catalog.filter_semdedup_centroids`).
A later run on the grown pool does not fit k-means again: every eligible row is assigned to its
nearest coarse centroid, then to the nearest fine centroid of that coarse cluster (exactly the
old rows' clusters and ranks, since the old run's labels and ranks were those of the same
centroids); only the partitions that received a new row are read further, and inside them only
the fine clusters with a new member. There every new member is compared with every member of
its fine cluster (:func:`new_vs_cluster_duplicates`, windows as above): a new member is a
duplicate when it is close to a better-ranked member (old or new); an old member becomes one
when a better-ranked new member is close to it (the new sample is the better copy by SemDeDup's
rank). Old-vs-old pairs are never compared again, so no old decision changes but by a new sample.
New rows in a coarse cluster that had no member when the centroids were fitted form one fine
cluster there, ranked by their distance to its mean. The centroid files are carried to
the new run's folder, so the run after it is incremental too.

What differs from a run from scratch: the clusters are the old pool's. A refit on the grown pool
would move cluster boundaries and ranks, so it removes a somewhat different (equally valid by
SemDeDup's approximation) set of near duplicates. The cost is one pass over the eligible rows'
embeddings (one assignment, no k-means iterations) plus new-by-cluster products. Once the pool
has grown past ``REFIT_GROWTH`` times the rows the centroids were fitted on, new samples would
dominate old clusters, so the caller runs SemDeDup from scratch (and reports it).
"""

from __future__ import annotations

import math

import numpy as np

from tasks.cluster.hierarchical import normalise_rows
from tasks.cluster.kmeans import KMeans, assign_points
from tasks.cluster.pool_input import npy_header
from tasks.common.catalog import Catalog
from tasks.common.shuffle import compute, split_ids
from tasks.common.store import Store

WINDOW_ROWS = 2048
WINDOW_COLUMNS = 8192
MAX_PARTITION_ROWS = 250_000  # rows of one partition: 250k x 512 float32 is 0.5 GB on a worker
REFINE_SAMPLE = 20_000  # members of an oversized coarse cluster that reach the driver to split it
REFINE_ROUNDS = 3
REFIT_GROWTH = 2.0  # an incremental run fits k-means again once the pool has this many times the fitted rows


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


def new_vs_cluster_duplicates(points: np.ndarray, labels: np.ndarray, rank: np.ndarray, new: np.ndarray,
                              threshold: float, window_rows: int = WINDOW_ROWS,
                              window_columns: int = WINDOW_COLUMNS) -> np.ndarray:
    """:func:`later_duplicates` restricted to the pairs with at least one ``new`` row.

    True for a row whose cosine with a better-ranked row of its cluster exceeds ``threshold``,
    where one of the two is new: old-vs-old pairs are not compared (their decision is kept).
    Work is (new rows) x (members of their clusters), in windows.
    """
    n = len(points)
    order = np.lexsort((np.arange(n), rank, labels))
    ordered, ordered_labels = points[order], labels[order]
    cluster_start = np.searchsorted(ordered_labels, ordered_labels, side="left")
    cluster_end = np.searchsorted(ordered_labels, ordered_labels, side="right")
    new_positions = np.flatnonzero(np.asarray(new, dtype=bool)[order])
    flagged = np.zeros(n, dtype=bool)
    for first in range(0, len(new_positions), window_rows):
        rows = new_positions[first:first + window_rows]
        start, stop = int(cluster_start[rows[0]]), int(cluster_end[rows[-1]])
        for column_start in range(start, stop, window_columns):
            columns = np.arange(column_start, min(stop, column_start + window_columns))
            close = ((ordered[rows] @ ordered[columns].T > threshold)
                     & (ordered_labels[rows, None] == ordered_labels[None, columns]))
            flagged[rows] |= (close & (columns[None, :] < rows[:, None])).any(axis=1)  # a better member is close
            flagged[columns] |= (close & (rows[:, None] < columns[None, :])).any(axis=0)  # a better new one is close
    duplicate = np.zeros(n, dtype=bool)
    duplicate[order] = flagged
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


def _partition_duplicates(*pieces: tuple, cluster_size: int, threshold: float, seed: int, engine: str,
                          store: Store | None = None, fine_target: str | None = None) -> np.ndarray:
    """One partition: every coarse cluster clustered again, then compared inside its fine clusters.

    With ``fine_target``, the fine centroids and their coarse clusters are written there (for incremental runs).
    """
    ids = np.concatenate([p[0] for p in pieces])
    coarse = np.concatenate([p[1] for p in pieces])
    dim = pieces[0][2].shape[1]
    centers, parents = [np.zeros((0, dim), dtype=np.float32)], [np.zeros(0, dtype=np.int64)]
    found = np.zeros(0, dtype=np.int64)
    if len(ids) >= 2:
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
            centers.append(np.asarray(model.cluster_centers_, dtype=np.float32))
            parents.append(np.full(k, cluster, dtype=np.int64))
            offset += k
        found = ids[later_duplicates(points, fine, rank, threshold)]
    if fine_target is not None:
        _write_npz(store, fine_target, centers=np.concatenate(centers), coarse=np.concatenate(parents))
    return found


def _write_npz(store: Store, target: str, **arrays) -> str:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return store.write_bytes(target, buffer.getvalue())


def _read_npz(store: Store, path: str) -> dict:
    import io

    with np.load(io.BytesIO(store.read_bytes(path)), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


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
                        max_partition_rows: int = MAX_PARTITION_ROWS, centroids_folder: str | None = None) -> np.ndarray:
    """Global ids of the semantic duplicates.

    ``shards``: per shard (embeddings file, store-relative; its rows that take part; their global ids).
    ``centroids_folder``: a filter run's folder where the k-means centroids are kept for incremental runs.
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
    fine_targets = [None if centroids_folder is None else Catalog.filter_semdedup_centroids(centroids_folder, p)
                    for p in range(n_partitions)]
    reduced = [dask.delayed(_partition_duplicates, pure=True)(*[pieces[p] for pieces in split],
                                                                cluster_size=cluster_size, threshold=threshold,
                                                                seed=seed, engine=engine, store=store,
                                                                fine_target=fine_targets[p])
               for p in range(n_partitions)]
    found = compute(client, reduced)
    if centroids_folder is not None:  # last: the fine files are written, the coarse file marks them complete
        _write_npz(store, Catalog.filter_semdedup_centroids(centroids_folder), centroids=centroids,
                   partition_of_cluster=partition_of_cluster, fitted_rows=np.int64(total))
    return np.sort(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def stored_centroids(store: Store, folder: str) -> dict | None:
    """The coarse k-means a run kept in ``folder`` (centroids, partition_of_cluster, fitted_rows), or None."""
    path = Catalog.filter_semdedup_centroids(folder)
    return _read_npz(store, path) if store.exists(path) else None


def _touched_partitions(store: Store, embeddings: str, rows: np.ndarray, centroids: np.ndarray,
                        partition_of_cluster: np.ndarray) -> np.ndarray:
    """The partitions that one (new) shard's eligible rows fall in."""
    from tasks.cluster.lloyd import assign, to_host

    if not len(rows):
        return np.zeros(0, dtype=np.int64)
    return np.unique(partition_of_cluster[to_host(assign(load_rows(store, embeddings, rows), centroids)[0])])


def _partition_new_duplicates(*pieces: tuple, store: Store, fine_file: str, new_shards: np.ndarray,
                              threshold: float) -> np.ndarray:
    """One partition of an incremental run: rows assigned to the stored fine centroids, new rows compared
    with the members of their fine cluster; returns the ids flagged (new duplicates and old rows a
    better-ranked new one duplicates)."""
    from tasks.cluster.lloyd import assign, to_host

    ids = np.concatenate([p[0] for p in pieces])
    coarse = np.concatenate([p[1] for p in pieces])
    order = np.argsort(ids, kind="stable")
    ids, coarse = ids[order], coarse[order]
    points = normalise_rows(np.concatenate([p[2] for p in pieces])[order], "semdedup embeddings")
    fine_centroids = _read_npz(store, fine_file)
    centers, parent = fine_centroids["centers"], fine_centroids["coarse"]
    fine = np.zeros(len(ids), dtype=np.int64)
    distance = np.zeros(len(ids), dtype=np.float32)
    for cluster in np.unique(coarse):  # the few coarse clusters of this partition
        members = np.flatnonzero(coarse == cluster)
        children = np.flatnonzero(parent == cluster)
        if not len(children):  # a coarse cluster empty when fitted: its new rows form one fine cluster
            children = np.array([len(centers) + int(cluster)])
            labels, distance[members] = [to_host(a) for a in assign(points[members], points[members].mean(axis=0,
                                                                                                      keepdims=True))]
        else:
            labels, distance[members] = [to_host(a) for a in assign(points[members], centers[children])]
        fine[members] = children[labels]
    new = np.isin(split_ids(ids)[0], new_shards)
    taking_part = np.isin(fine, fine[new])  # only fine clusters with a new member
    flagged = new_vs_cluster_duplicates(points[taking_part], fine[taking_part], -distance[taking_part],
                                        new[taking_part], threshold)
    return ids[taking_part][flagged]


def _copy_file(store: Store, source: str, target: str) -> str:
    return store.write_bytes(target, store.read_bytes(source))


def incremental_semantic_duplicates(store: Store, shards: list[tuple[str, np.ndarray, np.ndarray]],
                                    new_shards: np.ndarray, threshold: float, previous_folder: str, folder: str,
                                    client=None) -> np.ndarray:
    """Global ids flagged by SemDeDup against the k-means kept in ``previous_folder`` (see the module's docstring).

    ``shards`` as for :func:`semantic_duplicates`, old and new; ``new_shards``: the shard numbers
    (of the global ids) that are new. The centroid files are copied to ``folder``. Flagged old rows
    may have been duplicates already: the caller keeps what it knew.
    """
    import dask

    kept = stored_centroids(store, previous_folder)
    centroids, partition_of_cluster = kept["centroids"], kept["partition_of_cluster"]
    n_stored = int(partition_of_cluster.max()) + 1
    shards = [(path, np.asarray(rows, dtype=np.int64), np.asarray(ids, dtype=np.int64))
              for path, rows, ids in shards if len(rows)]
    new_shards = np.asarray(new_shards, dtype=np.int64)
    is_new = [bool(np.isin(split_ids(ids[:1])[0], new_shards)[0]) for _, _, ids in shards]
    shared = dask.delayed(centroids, pure=True), dask.delayed(partition_of_cluster, pure=True)
    touched = compute(client, [dask.delayed(_touched_partitions, pure=True)(store, path, rows, *shared)
                               for (path, rows, _), new in zip(shards, is_new) if new])
    touched = np.unique(np.concatenate(touched)) if touched else np.zeros(0, dtype=np.int64)
    compact = np.full(n_stored, -1, dtype=np.int64)  # an untouched partition's rows are not read further
    compact[touched] = np.arange(len(touched))
    copies = [dask.delayed(_copy_file, pure=True)(store, Catalog.filter_semdedup_centroids(previous_folder, p),
                                                  Catalog.filter_semdedup_centroids(folder, p))
              for p in range(n_stored)]
    found = []
    if len(touched):
        compact_of_cluster = dask.delayed(compact[partition_of_cluster], pure=True)
        split = [dask.delayed(_split_shard, nout=len(touched), pure=True)(store, path, rows, ids, shared[0],
                                                                          compact_of_cluster, len(touched))
                 for path, rows, ids in shards]
        found = [dask.delayed(_partition_new_duplicates, pure=True)(
            *[pieces[position] for pieces in split], store=store, new_shards=new_shards, threshold=threshold,
            fine_file=Catalog.filter_semdedup_centroids(previous_folder, int(partition)))
            for position, partition in enumerate(touched)]
    results = compute(client, found + copies)[:len(found)]
    _copy_file(store, Catalog.filter_semdedup_centroids(previous_folder), Catalog.filter_semdedup_centroids(folder))
    return np.sort(np.concatenate(results)) if results else np.zeros(0, dtype=np.int64)


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
