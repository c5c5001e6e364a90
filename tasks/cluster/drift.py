"""How far a grown pool has drifted from the cluster tree its new samples were assigned to.

In:  the tree's levels (:class:`~tasks.cluster.hierarchical.ClusterLevel`, level 1 first), samples
     (rows of embeddings, normalised as the tree's metric wants) with their level-1 cluster; per
     level the reference: the ``quantile`` (0.95) of the squared distance of the samples the tree
     was *fitted* on to their cluster's centroid at that level, and the normalised entropy of the
     fitted samples per cluster; per level how many assigned samples lie beyond the reference
     distance; the samples per cluster now.
Out: :class:`TreeUpdateConfig` (when to assign instead of fitting, the thresholds, what to do on
     drift), :class:`TreeShape` (a tree's centroids and parents; per sample and level the cluster and the
     squared distance to its centroid),
     :func:`beyond_reference` (per level, how many of them exceed the reference),
     :func:`size_entropies` and :func:`drift_report`: per level the share of this run's new samples
     and of every sample assigned since the fit that lie beyond the reference distance, the
     normalised entropy of the samples per cluster at the fit and now and its change, and whether
     the tree drifted: at some level, the share beyond the reference since the fit exceeds
     ``max_far_share`` or the entropy moved by more than ``max_entropy_change``.

Without drift about ``1 - quantile`` (5%) of new samples lie beyond the fitted samples' 95th
percentile; the default ``max_far_share`` (0.15) is three times that. A sample's distance at level
``n`` is to the centroid of its level-``n`` cluster, the parent of its level-``(n - 1)`` cluster: the
tree's upper levels cluster the centroids of the level below (METHODS.md section 1), so that is
the only level-``n`` cluster a sample belongs to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tasks.cluster.hierarchical import ClusterLevel
from tasks.common.errors import InputError
from tasks.common.options import check_known_settings

UPDATE_MODES = ("assign", "fit")
ON_DRIFT = ("warn", "recluster")


@dataclass(frozen=True)
class TreeUpdateConfig:
    """How a pool's tree follows the pool when it grows.

    ``mode``: ``"assign"`` (default) puts the samples of a grown pool into the newest tree of the pool
    made with the same clustering config (nearest centroid, level by level; old samples keep their
    clusters); ``"fit"`` always fits a new tree. ``quantile``: the fitted samples' distance
    quantile that counts a sample as far. ``max_far_share``, ``max_entropy_change``: the drift
    thresholds (see the module doc). ``on_drift``: ``"warn"`` (default: the run says so in its
    manifest, logs and artifact, and the subsets come from the assigned tree; a re-fit changes every
    cluster and so every subset, a cost and a change a scheduled run should not make unasked) or
    ``"recluster"`` (fit a new tree of the grown pool and sample from it).
    """

    mode: str = "assign"
    quantile: float = 0.95
    max_far_share: float = 0.15
    max_entropy_change: float = 0.05
    on_drift: str = "warn"

    @classmethod
    def from_dict(cls, values: dict | None) -> "TreeUpdateConfig":
        values = dict(values or {})
        check_known_settings("tree_update", values, cls.__dataclass_fields__)
        config = cls(**values)
        if config.mode not in UPDATE_MODES:
            raise InputError(f"tree_update mode={config.mode!r}: expected one of {', '.join(UPDATE_MODES)}")
        if config.on_drift not in ON_DRIFT:
            raise InputError(f"tree_update on_drift={config.on_drift!r}: expected one of {', '.join(ON_DRIFT)}")
        if not 0 < config.quantile < 1:
            raise InputError(f"tree_update quantile={config.quantile!r}: expected a fraction in (0, 1)")
        if not 0 <= config.max_far_share <= 1 or not config.max_entropy_change >= 0:
            raise InputError(f"tree_update max_far_share={config.max_far_share!r} (a fraction in [0, 1]) and "
                             f"max_entropy_change={config.max_entropy_change!r} (non-negative)")
        return config

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TreeShape:
    """What a worker needs of a tree to place samples: the centroids of every level, level 1 first,
    and for every upper level the parent of each cluster of the level below (its ``labels``) - no
    per-sample array."""

    centroids: tuple
    parents: tuple

    @classmethod
    def of(cls, levels: list[ClusterLevel]) -> "TreeShape":
        return cls(centroids=tuple(np.asarray(level.centroids, dtype=np.float32) for level in levels),
                   parents=tuple(np.asarray(level.labels, dtype=np.int64) for level in levels[1:]))

    def labels(self, level1: np.ndarray) -> np.ndarray:
        """``n x levels``: the cluster at every level of samples whose level-1 clusters are ``level1``."""
        columns = [np.asarray(level1, dtype=np.int64)]
        for parents in self.parents:
            columns.append(parents[columns[-1]])
        return np.stack(columns, axis=1)

    def distances(self, points: np.ndarray, level1: np.ndarray) -> np.ndarray:
        """float32 ``n x levels``: each sample's squared L2 distance to its cluster's centroid at every
        level; ``points`` as the tree saw them (rows L2-normalised for the cosine metric)."""
        points = np.asarray(points, dtype=np.float32)
        labels = self.labels(level1)
        out = np.empty((len(points), len(self.centroids)), dtype=np.float32)
        for number, centroids in enumerate(self.centroids):  # a few levels, each vectorised over the samples
            difference = points - centroids[labels[:, number]]
            out[:, number] = np.einsum("ij,ij->i", difference, difference)
        return out


def beyond_reference(distances: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """int64 per level: how many of the samples' distances (``n x levels``) exceed the level's reference."""
    return (np.asarray(distances) > np.asarray(reference, dtype=np.float64)[None, :]).sum(axis=0).astype(np.int64)


def size_entropies(per_cluster: list[np.ndarray]) -> list[float]:
    """Per level, the normalised entropy of the samples per cluster (1: every cluster equally full)."""
    from tasks.sample.indicators import indicators

    return [float(indicators(counts)["normalised_entropy"]) for counts in per_cluster]


def drift_report(config: TreeUpdateConfig, reference: dict, new_samples: int, new_far: np.ndarray,
                 assigned_samples: int, assigned_far: np.ndarray, entropies_now: list[float]) -> dict:
    """The drift figures per level and the verdict.

    ``reference``: ``{"distance": [per level], "entropy": [per level], "samples": n}`` of the fitted
    tree; ``new_*``: this run's new samples and how many of them lie beyond the reference per level;
    ``assigned_*``: the same for every sample assigned since the fit (this run's included).
    """
    levels, reasons = [], []
    for number, (distance, entropy_fit, entropy_now) in enumerate(
            zip(reference["distance"], reference["entropy"], entropies_now), 1):
        far_new = float(new_far[number - 1] / new_samples) if new_samples else 0.0
        far_since_fit = float(assigned_far[number - 1] / assigned_samples) if assigned_samples else 0.0
        change = float(entropy_now - entropy_fit)
        levels.append({"level": number, "reference_distance": distance, "far_share_new": far_new,
                       "far_share_since_fit": far_since_fit, "entropy_at_fit": entropy_fit,
                       "entropy_now": entropy_now, "entropy_change": change})
        if far_since_fit > config.max_far_share:
            reasons.append(f"level {number}: {far_since_fit:.1%} of the samples assigned since the fit lie beyond "
                           f"the fitted samples' {config.quantile:.0%} distance (max_far_share "
                           f"{config.max_far_share:.1%})")
        if abs(change) > config.max_entropy_change:
            reasons.append(f"level {number}: the normalised entropy of samples per cluster moved by {change:+.3f} "
                           f"since the fit (max_entropy_change {config.max_entropy_change})")
    return {"levels": levels, "new_samples": int(new_samples), "assigned_since_fit": int(assigned_samples),
            "fitted_samples": int(reference["samples"]), "quantile": config.quantile,
            "thresholds": {"max_far_share": config.max_far_share, "max_entropy_change": config.max_entropy_change},
            "drifted": bool(reasons), "reasons": reasons, "on_drift": config.on_drift}
