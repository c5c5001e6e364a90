"""Hierarchical k-means with resampling (Vo et al., 2024; METHODS.md section 1).

In:  points (numpy/cupy in memory, or a Dask array streamed from the store), a list of
     :class:`LevelSpec` (k, resampling steps, points per cluster, "closest" or "random"), the
     metric (``cosine``: rows L2-normalised first; ``l2``: raw), an engine and a seed.
Out: :class:`HierarchicalKMeans` with ``levels_``: one :class:`ClusterLevel` per level, whose
     inputs are the samples (level 1) or the previous level's centroids, each counted once.

Per level ``t``: k-means (k-means++ seeding, k-means|| for large inputs: :mod:`tasks.cluster.kmeans`) on the level's input ``I``; then ``m`` times: take
the ``r`` members of every cluster closest to its centroid (or ``r`` random members), run a fresh
k-means on those only, and reassign all of ``I`` to the new centroids. The level keeps the
centroids fitted on the resampled points. On a Dask input the resampled points of level 1 stay
on the workers (the Dask array is indexed and persisted); levels 2+ cluster centroids in memory.

Split level 1 (the paper's cheap level 1, :mod:`tasks.cluster.split`): ``split > 0`` runs the
k-means above with ``k`` coarse clusters and then splits each into up to ``split``. By default a
level 1 that asks for ``k >= auto_split_from`` clusters (4096; 0 turns it off) and gives no
``split`` runs as a recursive split: a k-means with ``AUTO_BRANCHING`` (32) coarse clusters, then
every cluster split into 32 again, and again, the last round into just enough to reach ``k``
(``10^5`` clusters: 32 x 32 x 32 x 4). A k-means iteration then compares each point with about
``32 log_32(k)`` centroids instead of ``k`` (100 instead of 100,000 at ``k = 10^5``), so the level's
time grows as ``n log k``, not ``n k``. The level has about ``k`` clusters (fewer where a cluster
holds fewer points than its split); :meth:`HierarchicalKMeans.plan` and ``plans_`` say what ran.

A checkpoint object (see :class:`~tasks.cluster.tree.StoreCheckpoints`) saves the centroids after
every step and each finished level, so a killed run resumes at the last step; every step draws
from its own seed, so a resumed run ends exactly where an uninterrupted one does.

Memory of the driver: the labels (int64) and squared distances (float32) of every level-1 input
and the member order of every level (int64): per-sample numeric arrays of about 20 bytes a sample
(200 MB at 10 million, acceptable), plus centroids, one reduced set of k-means statistics and the
seeding candidates; the level-1 points themselves stay on the workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from tasks.cluster.kmeans import KMeans, assign_points, check_finite, is_dask_array
from tasks.cluster.lloyd import DEFAULT_CHUNK_ROWS, array_module, to_host
from tasks.cluster.split import split_clusters
from tasks.common.errors import InputError

METRICS = ("cosine", "l2")
RESAMPLING = ("closest", "random")
AUTO_SPLIT_FROM = 4096  # level-1 k from which the level runs split by default (0: never)
AUTO_BRANCHING = 32  # clusters per split round of the automatic split


@dataclass(frozen=True)
class LevelSpec:
    """One level: ``k`` clusters, ``resampling_steps`` (m), ``points_per_cluster`` (r; 0 means half
    the level's mean cluster size, as the paper's code), ``resampling`` "closest" or "random";
    ``split`` (level 1 only): split each of the ``k`` clusters into up to ``split`` by a local
    k-means, the paper's cheap level 1 for very large pools (:mod:`tasks.cluster.split`).

    With ``split = 0`` a level 1 with ``k >= auto_split_from`` (a setting of
    :class:`HierarchicalKMeans` and of the clustering config, 4096 by default, 0 = never) runs as
    a recursive split: 32 coarse clusters, each split into 32, and so on, the last round into
    ``ceil(k / clusters so far)`` (about ``k`` clusters in all; resampling steps apply to the
    coarse k-means). What ran is :meth:`HierarchicalKMeans.describe` (``plans_`` after a fit,
    ``ran`` in the stage's tree.json)."""

    k: int
    resampling_steps: int = 0
    points_per_cluster: int = 0
    resampling: str = "closest"
    split: int = 0

    @classmethod
    def from_value(cls, value: "LevelSpec | dict | int") -> "LevelSpec":
        if isinstance(value, LevelSpec):
            return value
        if isinstance(value, int):
            return cls(k=value)
        unknown = set(value) - {"k", "resampling_steps", "points_per_cluster", "resampling", "split"}
        if unknown:
            raise InputError(f"levels: unknown setting(s) {sorted(unknown)}")
        return cls(**value)

    def points_for(self, n_inputs: int) -> int:
        return self.points_per_cluster or max(1, round(n_inputs / self.k / 2))


@dataclass
class ClusterLevel:
    """One fitted level: ``centroids`` (k x d), and for each input its ``labels`` and squared
    ``distances``; ``order``/``offsets`` list every cluster's members sorted by distance."""

    centroids: np.ndarray
    labels: np.ndarray
    distances: np.ndarray
    order: np.ndarray = field(init=False)
    offsets: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.order, self.offsets = sort_members(self.labels, self.distances, len(self.centroids))

    @property
    def k(self) -> int:
        return len(self.centroids)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def members(self, cluster: int) -> np.ndarray:
        """Indices of the level's inputs in ``cluster``, closest to its centroid first."""
        return self.order[self.offsets[cluster]:self.offsets[cluster + 1]]


class Checkpoints(Protocol):
    def load_level(self, level: int) -> ClusterLevel | None: ...
    def save_level(self, level: int, result: ClusterLevel) -> None: ...
    def latest_step(self, level: int) -> tuple[int, np.ndarray] | None: ...
    def save_step(self, level: int, step: int, centroids: np.ndarray) -> None: ...


def sort_members(labels: np.ndarray, distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices sorted by (cluster, distance) and the ``k + 1`` offsets of each cluster's run."""
    order = np.lexsort((distances, labels))
    offsets = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(np.bincount(labels, minlength=k), out=offsets[1:])
    return order, offsets


def resample_indices(labels: np.ndarray, distances: np.ndarray, k: int, r: int, mode: str,
                     rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the ``r`` members of every cluster closest to its centroid (or random ones)."""
    key = distances if mode == "closest" else rng.random(len(labels))
    order, offsets = sort_members(labels, key, k)
    rank = np.arange(len(order)) - offsets[labels[order]]
    return np.sort(order[rank < r])


def step_seed(seed: int, level: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, level, step]).generate_state(1)[0])


def normalise_rows(points, what: str = "points"):
    """Rows scaled to unit L2 norm (float32); a zero row is an error naming it."""
    xp = array_module(points)
    x = xp.asarray(points, dtype=xp.float32)
    norms = xp.sqrt((x * x).sum(axis=1, keepdims=True))
    zero = norms[:, 0] == 0
    if bool(zero.any()):
        raise InputError(f"{what}: row {int(xp.flatnonzero(zero)[0])} is a zero vector, which has no direction "
                         f"(metric='cosine'); remove it or use metric='l2'")
    return x / norms


def _normalise_block(block):
    return normalise_rows(block, "a block of the input").astype(block.dtype, copy=False)


def check_levels(levels, metric: str = "cosine", auto_split_from: int = AUTO_SPLIT_FROM) -> list[LevelSpec]:
    """The tree's levels checked whole, before any level runs; an InputError names the level and setting.

    Each level: ``k`` and the other counts whole numbers, ``k >= 1``, no negative count, a known
    resampling, ``split`` on level 1 only. The tree: every level has fewer clusters than the level
    below asks for (``k * split`` for a split level 1), since a level that does not shrink groups
    nothing. Whether level 1's ``k`` fits the
    samples is :func:`check_level_k`, once their number is known.
    """
    if not isinstance(levels, (list, tuple)) or not levels:
        raise InputError(f"levels: expected a non-empty list of levels, e.g. [1000, {{\"k\": 100, "
                         f"\"resampling_steps\": 10}}], got {levels!r}")
    specs = []
    for number, value in enumerate(levels, 1):
        where = f"levels[{number - 1}]"
        if not (isinstance(value, (LevelSpec, dict)) or _whole(value)):
            raise InputError(f"level {number}: expected k (a whole number) or an object of settings, got {value!r} "
                             f"({where})")
        if isinstance(value, dict) and "k" not in value and not set(value) - set(LevelSpec.__dataclass_fields__):
            raise InputError(f"level {number}: no k given ({where}.k)")
        spec = LevelSpec.from_value(value)
        for name in ("k", "resampling_steps", "points_per_cluster", "split"):
            if not _whole(getattr(spec, name)):
                raise InputError(f"level {number}: {name}={getattr(spec, name)!r} must be a whole number "
                                 f"({where}.{name})")
        if spec.k < 1:
            raise InputError(f"level {number}: k={spec.k} must be at least 1 ({where}.k)")
        if spec.resampling not in RESAMPLING:
            raise InputError(f"level {number}: resampling={spec.resampling!r}: expected closest or random "
                             f"({where}.resampling)")
        if spec.resampling_steps < 0 or spec.points_per_cluster < 0 or spec.split < 0:
            raise InputError(f"level {number}: resampling_steps, points_per_cluster and split must not be negative "
                             f"({where})")
        if spec.split and number > 1:
            raise InputError(f"level {number}: split={spec.split} is only for level 1 ({where}.split)")
        specs.append(spec)
    if metric not in METRICS:
        raise InputError(f"metric={metric!r}: expected cosine or l2")
    if not _whole(auto_split_from) or auto_split_from < 0:
        raise InputError(f"auto_split_from={auto_split_from}: must be 0 (never split by default) or positive")
    below = _level1_clusters(specs[0])
    for number, spec in enumerate(specs[1:], 2):
        check_level_k(number, spec.k, below)
        if spec.k == below:
            raise InputError(f"level {number}: k={spec.k} does not shrink the tree: level {number - 1} has "
                             f"{below} centroids, each would be a cluster of its own; lower levels[{number - 1}].k")
        below = spec.k
    return specs


def check_level_k(number: int, k: int, n_inputs: int) -> None:
    """Level ``number``'s ``k`` is no larger than its ``n_inputs`` inputs (samples for level 1)."""
    if k > n_inputs:
        where = "samples" if number == 1 else f"centroids of level {number - 1}"
        raise InputError(f"level {number}: k={k} is larger than its {n_inputs} inputs ({where}); "
                         f"lower levels[{number - 1}].k")


def _whole(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _level1_clusters(level1: LevelSpec) -> int:
    """The clusters level 1 asks for: ``k``, or ``k * split`` (at most) for a split level."""
    return level1.k * level1.split if level1.split else level1.k


class HierarchicalKMeans:
    """Hierarchical k-means with resampling; ``fit`` returns self with ``levels_``."""

    def __init__(self, levels: list[LevelSpec | dict | int], *, metric: str = "cosine", engine: str = "auto",
                 max_iter: int = 50, tol: float = 1e-4, seed: int = 0, client=None,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, checkpoints: Checkpoints | None = None,
                 on_step=None, auto_split_from: int = AUTO_SPLIT_FROM):
        self.levels = check_levels(levels, metric, auto_split_from)
        self.auto_split_from = auto_split_from
        self.metric = metric
        self.engine = engine
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed
        self.client = client
        self.chunk_rows = chunk_rows
        self.checkpoints = checkpoints
        self.on_step = on_step  # called as on_step(level, step, steps) after each k-means of a level

    def plan(self, number: int, spec: LevelSpec) -> LevelSpec:
        """The level as it runs: ``spec``, or for a large level 1 without ``split`` the automatic
        recursive split (``AUTO_BRANCHING`` coarse clusters; :meth:`split_rounds` says the rest)."""
        if number != 1 or spec.split or not self.auto_split_from or spec.k < self.auto_split_from:
            return spec
        return replace(spec, k=min(AUTO_BRANCHING, spec.k), split=-1)

    @staticmethod
    def split_rounds(requested_k: int, coarse_k: int) -> list[int]:
        """Sub-clusters per cluster in each round of an automatic split from ``coarse_k`` to ``requested_k``."""
        rounds, clusters = [], coarse_k
        while clusters < requested_k:
            split = min(AUTO_BRANCHING, -(-requested_k // clusters))
            rounds.append(split)
            clusters *= split
        return rounds

    def describe(self, number: int) -> dict:
        """What level ``number`` ran: ``kmeans`` with its k, or ``split`` with the coarse k and the splits."""
        spec = self.levels[number - 1]
        ran = self.plan(number, spec)
        if not ran.split:
            return {"method": "kmeans", "k": spec.k}
        if ran.split < 0:
            return {"method": "split", "requested_k": spec.k, "coarse_k": ran.k,
                    "splits": self.split_rounds(spec.k, ran.k), "automatic": True}
        return {"method": "split", "requested_k": spec.k * spec.split, "coarse_k": ran.k, "splits": [ran.split],
                "automatic": False}

    def fit(self, points) -> "HierarchicalKMeans":
        inputs = self._prepared(points)
        self.levels_: list[ClusterLevel] = []
        self.plans_ = [self.describe(number) for number in range(1, len(self.levels) + 1)]
        for number, spec in enumerate(self.levels, 1):
            saved = self.checkpoints.load_level(number) if self.checkpoints else None
            if saved is None:
                self._check_k(number, spec, inputs)
            level = saved or self._fit_level(number, self.plan(number, spec), inputs)
            self.levels_.append(level)
            inputs = normalise_rows(level.centroids) if self.metric == "cosine" else level.centroids
        return self

    # -------------------------------------------------------------------------
    def _prepared(self, points):
        if getattr(points, "ndim", None) != 2 or 0 in points.shape:
            raise InputError(f"level 1: expected a non-empty 2-D array of points, got shape "
                             f"{getattr(points, 'shape', None)}")
        if is_dask_array(points):
            points = points.rechunk({1: -1})
            if self.metric == "cosine":
                points = points.map_blocks(_normalise_block, dtype=points.dtype)
            # held in the workers' memory for the whole level (k-means, then every resampling step)
            return self.client.persist(points) if self.client is not None else points.persist()
        check_finite(points, "level 1 points")
        if self.metric == "l2":
            return points
        # the normalised points keep the input's dtype, as the Dask blocks do (float16 stays float16)
        return normalise_rows(points, "level 1 points").astype(points.dtype, copy=False)

    def _kmeans(self, k: int, seed: int) -> KMeans:
        return KMeans(k, engine=self.engine, max_iter=self.max_iter, tol=self.tol, seed=seed, client=self.client,
                      chunk_rows=self.chunk_rows)

    @staticmethod
    def _check_k(number: int, spec: LevelSpec, inputs) -> None:
        check_level_k(number, spec.k, int(inputs.shape[0]))

    def _fit_level(self, number: int, spec: LevelSpec, inputs) -> ClusterLevel:
        n_inputs = int(inputs.shape[0])
        resumed = self.checkpoints.latest_step(number) if self.checkpoints else None
        if resumed is None:
            model = self._kmeans(spec.k, step_seed(self.seed, number, 0)).fit(inputs)
            step, centroids = 0, model.cluster_centers_
            labels, distances = model.labels_, model.distances_
            self._record(number, 0, centroids, spec.resampling_steps)
        else:
            step, centroids = resumed
            labels, distances = self._assign(inputs, centroids)
        r = spec.points_for(n_inputs)
        for step in range(step + 1, spec.resampling_steps + 1):
            rng = np.random.default_rng(step_seed(self.seed, number, step))
            chosen = resample_indices(labels, distances, spec.k, r, spec.resampling, rng)
            if len(chosen) >= spec.k:  # fewer resampled points than clusters: keep the centroids
                resampled = inputs[chosen]
                if is_dask_array(resampled):  # level 1: the resampled points stay on the workers
                    resampled = self.client.persist(resampled) if self.client is not None else resampled.persist()
                centroids = self._kmeans(spec.k, step_seed(self.seed, number, step)).fit(resampled).cluster_centers_
            labels, distances = self._assign(inputs, centroids)
            self._record(number, step, centroids, spec.resampling_steps)
        if spec.split < 0:  # the automatic split
            splits = self.split_rounds(self.levels[number - 1].k, spec.k)
        else:
            splits = [spec.split] if spec.split else []
        clusters = spec.k
        for round_number, split in enumerate(splits, 1):  # a few rounds: log_32 of k
            seed = step_seed(self.seed, number, spec.resampling_steps + round_number)
            centroids, offsets, labels, distances = split_clusters(inputs, labels, clusters, split, seed,
                                                                   max_iter=self.max_iter, tol=self.tol,
                                                                   client=self.client)
            clusters = int(offsets[-1])
        level = ClusterLevel(centroids=np.asarray(centroids, dtype=np.float32), labels=labels.astype(np.int64),
                             distances=distances.astype(np.float32))
        if self.checkpoints:
            self.checkpoints.save_level(number, level)
        return level

    def _assign(self, inputs, centroids) -> tuple[np.ndarray, np.ndarray]:
        return assign_points(inputs, centroids, self.chunk_rows, self.client)

    def _record(self, number: int, step: int, centroids, steps: int) -> None:
        if self.checkpoints:
            self.checkpoints.save_step(number, step, np.asarray(to_host(centroids), dtype=np.float32))
        if self.on_step:
            self.on_step(number, step, steps)
