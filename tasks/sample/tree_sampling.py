"""Balanced sampling from a hierarchical k-means tree (Vo et al., Sec. 3.3; METHODS.md section 2).

In:  the tree's levels (:class:`~tasks.cluster.hierarchical.ClusterLevel`, level 1 first: level 1
     labels every sample, level ``t`` every level ``t - 1`` centroid), a target number of samples,
     the mode, the selection inside a cluster, a seed, optionally a boolean mask of the samples
     that may be picked (a previous curation step) and, for flat "c"/"f", every sample's distance
     to its top-level centroid (:func:`top_level_distances`).
Out: the sorted int64 positions (among the level-1 inputs) of exactly ``target`` samples.

- "hierarchical": QUOTA over the top-level clusters (sizes = candidate samples under each), then
  QUOTA of every node's share among its children, level by level down to level 1, then inside
  every level-1 cluster pick its share: "r" at random, "c" closest to its centroid, "f" furthest.
- "flat": QUOTA over the top-level clusters once, then pick inside every top-level cluster among
  all its candidate samples, "c"/"f" by distance to the top-level centroid.

With one level the two modes are the same computation and give the same result for a seed.
Everything is whole-array numpy; the only loops are over the few levels of the tree, over the
rounds of random draws (about log2 of the largest share, see :func:`~tasks.sample.quota.random_subsets`) and over
row chunks in :func:`top_level_distances`. The level-1 member order that comes with the tree
(``ClusterLevel.order``, members sorted by distance) makes the work linear in the samples and
proportional to the target after that, except flat "c"/"f", which sorts by the given distances.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

from tasks.cluster.hierarchical import METRICS, ClusterLevel, normalise_rows
from tasks.common.errors import InputError
from tasks.sample.quota import (exclusive_cumsum, expand_ranges, grouped_order, grouped_quota, nonnegative_integer,
                                quota, random_subsets)

MODES = ("hierarchical", "flat")
SELECTIONS = ("r", "c", "f")
DISTANCE_CHUNK_ROWS = 65_536


def tree_labels(levels: Sequence[ClusterLevel]) -> list[np.ndarray]:
    """Every level's labels as int64, after checking that the levels chain (level ``t`` has one
    label per level ``t - 1`` cluster, each label below its level's ``k``)."""
    if len(levels) == 0:
        raise InputError("levels: the tree has no level")
    labels = []
    for number, level in enumerate(levels, 1):
        values = np.asarray(level.labels)
        expected = None if number == 1 else levels[number - 2].k
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
            raise InputError(f"level {number}: labels must be a 1-D integer array, got shape {values.shape} "
                             f"and dtype {values.dtype}")
        if expected is not None and len(values) != expected:
            raise InputError(f"level {number}: has {len(values)} labels but level {number - 1} has {expected} "
                             f"clusters; the levels do not form one tree")
        if len(values) == 0:
            raise InputError(f"level {number}: has no inputs")
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= level.k:
            raise InputError(f"level {number}: labels {low}..{high} fall outside its {level.k} clusters")
        labels.append(values.astype(np.int64, copy=False))
    return labels


def top_labels(labels: list[np.ndarray]) -> np.ndarray:
    """The top-level cluster of every sample (follows the tree up)."""
    top = labels[0]
    for above in labels[1:]:
        top = above[top]
    return top


def selected_per_cluster(levels: Sequence[ClusterLevel], selected: np.ndarray) -> list[np.ndarray]:
    """For each level, level 1 first, how many of the ``selected`` samples fall under each cluster."""
    labels = tree_labels(levels)
    selected = np.asarray(selected)
    if selected.ndim != 1 or not (np.issubdtype(selected.dtype, np.integer) or len(selected) == 0):
        raise InputError(f"selected: expected a 1-D array of sample positions, got shape {selected.shape}")
    if len(selected) and (selected.min() < 0 or selected.max() >= len(labels[0])):
        raise InputError(f"selected: positions must lie in [0, {len(labels[0])})")
    return _counts_up(labels, [level.k for level in levels], selected.astype(np.int64))


def _counts_up(labels: list[np.ndarray], ks: list[int], samples: np.ndarray | None) -> list[np.ndarray]:
    """Samples (all, or those at ``samples``) under every cluster of every level."""
    first = labels[0] if samples is None else labels[0][samples]
    counts = [np.bincount(first, minlength=ks[0]).astype(np.int64)]
    for above, k in zip(labels[1:], ks[1:]):
        # float64 weights are exact for any count below 2 ** 53
        counts.append(np.rint(np.bincount(above, weights=counts[-1], minlength=k)).astype(np.int64))
    return counts


def _check_choice(value: str, name: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise InputError(f"{name}={value!r}: expected one of {', '.join(valid)}")


def _integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name}={value!r}: expected an integer")
    return int(value)


def _candidate_mask(candidates, n_samples: int) -> np.ndarray | None:
    if candidates is None:
        return None
    mask = np.asarray(candidates)
    if mask.dtype != bool or mask.shape != (n_samples,):
        raise InputError(f"candidates: expected a boolean mask with one entry per sample ({n_samples}), got "
                         f"shape {mask.shape} and dtype {mask.dtype}")
    return mask


def _per_sample_distances(values, n_samples: int, name: str) -> np.ndarray:
    distances = np.asarray(values)
    if distances.shape != (n_samples,) or not np.issubdtype(distances.dtype, np.number):
        raise InputError(f"{name}: expected one number per sample ({n_samples}), got shape {distances.shape}")
    distances = distances.astype(np.float32, copy=False)
    if not np.isfinite(distances).all():
        raise InputError(f"{name}: holds NaN or infinite values")
    return distances


def _sortable(distances: np.ndarray) -> np.ndarray:
    """float32 -> unsigned integers (below 2 ** 32) in the same order, negative values included."""
    bits = distances.view(np.uint32)
    negative = bits >> np.uint32(31) == 1
    return np.where(negative, ~bits, bits | np.uint32(1 << 31)).astype(np.uint64)


def first_in_runs(sequence: np.ndarray, starts: np.ndarray, allocation: np.ndarray, values: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Positions of the first ``allocation[g]`` items of every run ``starts[g]:starts[g + 1]`` of
    ``sequence``, whose runs are sorted by ``values[sequence]``; when items tie in value with the
    last one taken, the ones taken from the tie are drawn at random."""
    sizes = np.diff(starts)
    partial = np.flatnonzero((allocation > 0) & (allocation < sizes))
    last = starts[partial] + allocation[partial] - 1
    boundary = np.zeros(len(allocation), dtype=values.dtype)
    boundary[partial] = values[sequence[last]]
    tied = partial[boundary[partial] == values[sequence[last + 1]]]
    plain = np.ones(len(allocation), dtype=bool)
    plain[tied] = False
    chosen = [expand_ranges(starts[:-1][plain], allocation[plain])]
    if len(tied):
        run = expand_ranges(starts[tied], sizes[tied])
        run_group = np.repeat(tied, sizes[tied])
        in_tie = values[sequence[run]] == boundary[run_group]
        tie, tie_group = run[in_tie], run_group[in_tie]
        tie_starts = exclusive_cumsum(np.bincount(tie_group, minlength=len(allocation))[tied])
        closer = tie[tie_starts[:-1]] - starts[tied]  # items before the tie are strictly closer
        # the tie in sample order, so that the draw does not depend on how a sort ordered equal values
        tie = tie[np.lexsort((sequence[tie], tie_group))]
        chosen += [expand_ranges(starts[tied], closer),
                   tie[random_subsets(tie_starts, allocation[tied] - closer, rng)]]
    return np.concatenate(chosen)


def last_in_runs(sequence: np.ndarray, starts: np.ndarray, allocation: np.ndarray, values: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """:func:`first_in_runs` from the end of every run (the largest values)."""
    n = len(sequence)
    return n - 1 - first_in_runs(sequence[::-1], n - starts[::-1], allocation[::-1], values, rng)


def _level_one_runs(level: ClusterLevel, labels: np.ndarray, mask: np.ndarray | None,
                    counts: np.ndarray) -> np.ndarray:
    """The candidate samples grouped by level-1 cluster, closest to the centroid first: the tree's
    member order (``ClusterLevel.order``), checked against the labels."""
    everyone = counts if mask is None else np.bincount(labels, minlength=level.k)
    if len(level.order) != len(labels) or not np.array_equal(np.diff(level.offsets), everyone):
        raise InputError("level 1: its member order (order, offsets) does not match its labels; "
                         "build the ClusterLevel again after changing them")
    return level.order if mask is None else level.order[mask[level.order]]


def _hierarchical_allocation(labels: list[np.ndarray], counts: list[np.ndarray], target: int,
                             rng: np.random.Generator) -> np.ndarray:
    """Every level-1 cluster's share: QUOTA at the top, then each node's share among its children."""
    allocation = quota(counts[-1], target, rng)
    for below in range(len(labels) - 2, -1, -1):
        # the children of node j of level below + 2 are the level below + 1 clusters labelled j
        allocation = grouped_quota(counts[below], labels[below + 1], allocation, rng)
    return allocation


def balanced_sample(levels: Sequence[ClusterLevel], target: int, mode: str = "hierarchical", selection: str = "r",
                    seed: int = 0, candidates: np.ndarray | None = None,
                    distances: np.ndarray | None = None) -> np.ndarray:
    """Sorted int64 positions of ``target`` samples drawn evenly over the tree (see the module doc).

    ``candidates``: boolean mask over the samples; only these are picked and cluster sizes count
    only these. ``distances``: per sample, distance to its top-level centroid, read by
    ``mode="flat"`` with selection "c"/"f" only (a one-level tree uses its level-1 distances when
    it is not given); it is checked whenever it is given.

    Inside a cluster, "r" is a uniform random subset, "c"/"f" the closest/furthest, with the
    samples tied in distance at the cut drawn at random. Deterministic for a seed.
    """
    _check_choice(mode, "mode", MODES)
    _check_choice(selection, "selection", SELECTIONS)
    labels = tree_labels(levels)
    n_samples = len(labels[0])
    seed = nonnegative_integer(seed, "seed")
    target = _integer(target, "target")
    mask = _candidate_mask(candidates, n_samples)
    available = n_samples if mask is None else int(mask.sum())
    if target <= 0:
        raise InputError(f"target={target}: must be at least 1")
    if target > available:
        raise InputError(f"target={target}: larger than the {available} candidate samples")
    if distances is not None:
        distances = _per_sample_distances(distances, n_samples, "distances")
    flat = mode == "flat"
    if flat and selection != "r" and distances is None and len(levels) > 1:
        raise InputError(f"distances: mode='flat' with selection={selection!r} needs every sample's distance "
                         f"to its top-level centroid (see top_level_distances)")

    rng = np.random.default_rng(seed)
    counts = _counts_up(labels, [level.k for level in levels], None if mask is None else np.flatnonzero(mask))
    allocation = quota(counts[-1], target, rng) if flat else _hierarchical_allocation(labels, counts, target, rng)
    if flat and selection != "r" and distances is not None:
        samples = np.arange(n_samples) if mask is None else np.flatnonzero(mask)
        groups = top_labels(labels)[samples]
        sequence = samples[grouped_order(groups, levels[-1].k, _sortable(distances[samples]), 32)]
        values = distances
    else:
        sequence = _level_one_runs(levels[0], labels[0], mask, counts[0])
        values = None if selection == "r" else _per_sample_distances(levels[0].distances, n_samples,
                                                                      "level 1: distances")
        if flat:
            # level-1 runs put one after the other by top-level cluster: runs of top-level clusters
            cluster_top = top_labels([np.arange(levels[0].k)] + labels[1:])
            by_top = np.argsort(cluster_top, kind="stable")
            sequence = sequence[expand_ranges(exclusive_cumsum(counts[0])[:-1][by_top], counts[0][by_top])]
    starts = exclusive_cumsum(counts[-1] if flat else counts[0])
    if selection == "r":
        chosen = random_subsets(starts, allocation, rng)
    elif selection == "c":
        chosen = first_in_runs(sequence, starts, allocation, values, rng)
    else:
        chosen = last_in_runs(sequence, starts, allocation, values, rng)
    return np.sort(sequence[chosen])


def top_level_distances(levels: Sequence[ClusterLevel], embeddings: np.ndarray, metric: str,
                        chunk_rows: int = DISTANCE_CHUNK_ROWS) -> np.ndarray:
    """float32 squared L2 distance of every sample to its top-level centroid, in the space the tree
    was fitted in (rows L2-normalised for ``metric="cosine"``, raw for ``"l2"``); ``chunk_rows``
    rows at a time, so memory stays bounded for a memory-mapped input."""
    _check_choice(metric, "metric", METRICS)
    labels = tree_labels(levels)
    top = top_labels(labels)
    centroids = np.asarray(levels[-1].centroids, dtype=np.float32)
    shape = getattr(embeddings, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != len(top) or shape[1] != centroids.shape[1]:
        raise InputError(f"embeddings: expected {len(top)} rows (one per sample) of {centroids.shape[1]} values, "
                         f"got shape {shape}")
    return centroid_distances(embeddings, centroids, top, metric, chunk_rows)


def centroid_distances(embeddings, centroids: np.ndarray, labels: np.ndarray, metric: str,
                       chunk_rows: int = DISTANCE_CHUNK_ROWS) -> np.ndarray:
    """float32 squared L2 distance of every row of ``embeddings`` to ``centroids[labels[row]]`` (rows
    L2-normalised first for ``metric="cosine"``), ``chunk_rows`` rows at a time. Row by row, so any
    slice of the rows (a shard's) gets exactly its part of the whole computation."""
    _check_choice(metric, "metric", METRICS)
    if chunk_rows < 1:
        raise InputError(f"chunk_rows={chunk_rows}: must be at least 1")
    centroids = np.asarray(centroids, dtype=np.float32)
    labels = np.asarray(labels)
    out = np.empty(len(labels), dtype=np.float32)
    for start in range(0, len(labels), chunk_rows):
        stop = min(start + chunk_rows, len(labels))
        rows = np.asarray(embeddings[start:stop], dtype=np.float32)
        if metric == "cosine":
            rows = normalise_rows(rows, f"embeddings[{start}:{stop}]")
        difference = rows - centroids[labels[start:stop]]
        out[start:stop] = np.einsum("ij,ij->i", difference, difference)
    return out
