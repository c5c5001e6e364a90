"""Semantic deduplication (SemDeDup, Abbas et al. 2023): near-identical embeddings inside k-means clusters.

In:  image embeddings (``n x d``), which rows may take part (``eligible``), the number of k-means
     clusters, a cosine-similarity threshold and a seed.
Out: ``keep_semdedup`` / ``reason_semdedup`` per row (``semantic_duplicate``); ineligible rows
     are kept and left to the other filters.

The pool is clustered with :class:`~tasks.cluster.kmeans.KMeans` (L2-normalised rows); only
pairs inside a cluster are compared. Inside a cluster the members are ranked, and a member is a
duplicate when its cosine with any better-ranked member exceeds the threshold, so exactly one
member of every group of duplicates stays. The ranking keeps the member farthest from the
centroid first (SemDeDup's choice: the least prototypical example of a group survives), ties by
row. Comparisons run over the members sorted by cluster, a window of rows against a window of
columns at a time, so memory is bounded by the window, never by the largest cluster squared.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.cluster.hierarchical import normalise_rows
from tasks.cluster.kmeans import KMeans

WINDOW_ROWS = 2048
WINDOW_COLUMNS = 8192


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


def semantic_duplicates(embeddings: np.ndarray, eligible: np.ndarray, index: pd.Index, n_clusters: int,
                        threshold: float, seed: int = 0) -> pd.DataFrame:
    rows = np.flatnonzero(eligible)
    duplicate = np.zeros(len(embeddings), dtype=bool)
    if len(rows) > 1:
        points = normalise_rows(embeddings[rows], "semdedup embeddings")
        model = KMeans(min(n_clusters, len(rows)), engine="auto", seed=seed, max_iter=20).fit(points)
        duplicate[rows] = later_duplicates(points, model.labels_, -model.distances_, threshold)
    return pd.DataFrame({"keep_semdedup": ~duplicate,
                         "reason_semdedup": np.where(duplicate, "semantic_duplicate", "")}, index=index)
