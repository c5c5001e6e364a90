"""The cluster tree in the store: checkpoints while fitting, and the reload for sampling.

Layout under a tree folder (``clusters/<pool>/<key>/``):

- ``level-<t>/steps/<s>.npy``: centroids after resampling step ``s`` (0 is the first k-means);
- ``level-<t>/centroids.npy``, ``labels.npy`` (int32, one per input of the level: the samples at
  level 1, the level ``t - 1`` centroids above), ``distances.npy`` (float32, squared L2), then
  ``level-<t>/level.json`` written last: its presence marks the level finished;
- ``inputs.parquet`` (written by the caller): the ``uid`` of every level-1 input, row-aligned, with
  its ``shard_id`` and ``row`` in that shard (trees made before these columns have only ``uid``);
- ``drift_reference-<q>.json``: the fitted samples' distance quantile ``q`` and size entropy per
  level, computed when a grown pool is first assigned to the tree (:mod:`tasks.cluster.assign`);
- ``drift.json`` (an assigned tree only): the drift figures of its assignment.

In:  a :class:`~tasks.common.store.Store` and the folder. Out: :class:`StoreCheckpoints` (what
:class:`~tasks.cluster.hierarchical.HierarchicalKMeans` saves through) and :func:`load_tree`.
"""

from __future__ import annotations

import numpy as np

from tasks.cluster.hierarchical import ClusterLevel
from tasks.common.errors import InputError
from tasks.common.store import Store


class StoreCheckpoints:
    """Saves each resampling step and each finished level of a fit under ``folder``."""

    def __init__(self, store: Store, folder: str):
        self.store = store
        self.folder = folder.rstrip("/")

    def _level(self, level: int) -> str:
        return f"{self.folder}/level-{level}"

    def save_step(self, level: int, step: int, centroids: np.ndarray) -> None:
        self.store.write_npy(f"{self._level(level)}/steps/{step:04d}.npy", centroids)

    def latest_step(self, level: int) -> tuple[int, np.ndarray] | None:
        steps = sorted(p for p in self.store.list(f"{self._level(level)}/steps", "*.npy"))
        if not steps:
            return None
        latest = steps[-1]
        number = int(latest.rsplit("/", 1)[-1].removesuffix(".npy"))
        return number, self.store.read_npy(f"{self._level(level)}/steps/{number:04d}.npy")

    def save_level(self, level: int, result: ClusterLevel) -> None:
        folder = self._level(level)
        self.store.write_npy(f"{folder}/centroids.npy", result.centroids.astype(np.float32))
        self.store.write_npy(f"{folder}/labels.npy", result.labels.astype(np.int32))
        self.store.write_npy(f"{folder}/distances.npy", result.distances.astype(np.float32))
        self.store.write_json(f"{folder}/level.json", {"level": level, "k": result.k, "inputs": len(result.labels),
                                                       "sizes": size_summary(result.sizes)})

    def load_level(self, level: int) -> ClusterLevel | None:
        folder = self._level(level)
        if not self.store.exists(f"{folder}/level.json"):
            return None
        return ClusterLevel(centroids=self.store.read_npy(f"{folder}/centroids.npy"),
                            labels=self.store.read_npy(f"{folder}/labels.npy").astype(np.int64),
                            distances=self.store.read_npy(f"{folder}/distances.npy"))


def reference_path(folder: str, quantile: float) -> str:
    """Where the drift reference of quantile ``quantile`` of the tree in ``folder`` is cached."""
    return f"{folder.rstrip('/')}/drift_reference-{round(quantile * 1000):04d}.json"


def size_summary(sizes: np.ndarray) -> dict:
    return {"clusters": int(len(sizes)), "empty": int((sizes == 0).sum()), "min": int(sizes.min()),
            "median": float(np.median(sizes)), "max": int(sizes.max()), "mean": float(sizes.mean())}


def load_tree(store: Store, folder: str) -> list[ClusterLevel]:
    """Every finished level of the tree in ``folder``, level 1 first; an error if there is none."""
    checkpoints = StoreCheckpoints(store, folder)
    levels = []
    while (level := checkpoints.load_level(len(levels) + 1)) is not None:
        levels.append(level)
    if not levels:
        raise InputError(f"cluster tree {store.uri(folder)}: no finished level (no level-1/level.json)")
    return levels


def samples_per_cluster(levels: list[ClusterLevel]) -> list[np.ndarray]:
    """For each level, how many level-1 inputs (samples) fall under each of its clusters."""
    counts = [levels[0].sizes]
    for level in levels[1:]:
        counts.append(np.bincount(level.labels, weights=counts[-1], minlength=level.k).astype(np.int64))
    return counts


def sample_labels(levels: list[ClusterLevel]) -> np.ndarray:
    """``n_samples x levels``: the cluster of every sample at every level (follows the tree up)."""
    columns = [levels[0].labels]
    for level in levels[1:]:
        columns.append(level.labels[columns[-1]])
    return np.stack(columns, axis=1)
