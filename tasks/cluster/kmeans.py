"""k-means with a scikit-learn-like API and two engines: ``dask`` (CPU or cupy blocks) and ``cuml``.

In:  points as a numpy or cupy array (clustered in this process, in chunks) or a Dask array whose
     blocks are numpy or cupy (clustered on the Dask workers, one reduction per iteration).
Out: a fitted :class:`KMeans`: ``cluster_centers_`` (``k x d`` float32 numpy), ``labels_``
     (numpy int64), ``distances_`` (squared L2 to the own centroid), ``inertia_``, ``n_iter_``.

Engines (``engine=``):

- ``dask``: Lloyd's algorithm of :mod:`tasks.cluster.lloyd`; each iteration sends the centroids
  to the blocks and gets back per-cluster sums and counts. k-means++ seeding on all points for
  small problems, on a uniform sample of ``init_sample_size`` points for large ones. Empty
  clusters take the points farthest from their centroid. Stops after ``max_iter`` iterations or
  when the inertia improves by less than ``tol`` (relative).
- ``cuml``: ``cuml.dask.cluster.KMeans`` (Dask arrays) or ``cuml.cluster.KMeans`` (in memory) on
  GPUs, see :mod:`tasks.cluster.cuml_engine`.
- ``auto``: ``cuml`` where cuML imports and a GPU is visible, else ``dask``. A GPU that the
  driver lists but cupy or cuML cannot use raises :class:`~tasks.common.errors.GpuSetupError`
  (a broken CUDA install is reported, not run on the CPU); ``engine="dask"`` asks for the CPU.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from tasks.cluster.init import kmeans_plus_plus
from tasks.cluster.lloyd import (DEFAULT_CHUNK_ROWS, BlockStatistics, array_module, assign, block_statistics,
                                 combine_statistics, lloyd, to_host)
from tasks.common.errors import InputError
from tasks.common.gpu import gpu_available, gpu_setup_error, visible_gpus

ENGINES = ("auto", "dask", "cuml")
FULL_SEEDING_LIMIT = 20_000_000  # n * k above which k-means++ seeds on a sample


def cuml_available() -> bool:
    """True where a GPU is usable (:func:`~tasks.common.gpu.gpu_available`) and cuML imports; False
    without a GPU or without cuML; :class:`GpuSetupError` where either is installed but broken."""
    if not gpu_available() or importlib.util.find_spec("cuml") is None:
        return False
    try:
        import cuml  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - an ImportError or a CUDA error: both a broken install
        raise gpu_setup_error(visible_gpus(), f"cuML fails to import: {type(exc).__name__}: {exc}") from exc
    return True


def resolve_engine(engine: str) -> str:
    """``engine``, with ``auto`` decided: ``cuml`` where :func:`cuml_available`, else ``dask``."""
    if engine not in ENGINES:
        raise InputError(f"engine={engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "auto":
        return "cuml" if cuml_available() else "dask"
    if engine == "cuml" and not cuml_available():
        raise InputError("engine='cuml': cuML or a GPU is not available here (install the 'gpu' extra on a GPU "
                         "machine, or use engine='dask')")
    return engine


def is_dask_array(points: Any) -> bool:
    try:
        import dask.array as da
    except ImportError:
        return False
    return isinstance(points, da.Array)


def check_finite(points, what: str = "points") -> None:
    """Raise an :class:`InputError` naming the first row that holds NaN or infinity."""
    xp = array_module(points)
    bad = ~xp.isfinite(points).all(axis=1)
    if bool(bad.any()):
        raise InputError(f"{what}: row {int(xp.flatnonzero(bad)[0])} holds NaN or infinite values "
                         f"({int(bad.sum())} such rows)")


class KMeans:
    """k-means; configuration in the constructor, ``fit`` returns self, fitted state ends with ``_``."""

    def __init__(self, n_clusters: int, *, engine: str = "auto", max_iter: int = 50, tol: float = 1e-4,
                 seed: int = 0, init_sample_size: int | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 client=None, reduce_fanin: int = 8):
        if int(n_clusters) < 1:
            raise InputError(f"n_clusters={n_clusters}: must be at least 1")
        if max_iter < 1:
            raise InputError(f"max_iter={max_iter}: must be at least 1")
        self.n_clusters = int(n_clusters)
        self.engine = engine
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed
        self.init_sample_size = init_sample_size
        self.chunk_rows = chunk_rows
        self.client = client
        self.reduce_fanin = reduce_fanin

    # ----- public API --------------------------------------------------------
    def fit(self, points, init: np.ndarray | None = None) -> "KMeans":
        """Cluster ``points``; ``init`` (``k x d``) replaces k-means++ seeding."""
        n, d = self._check_shape(points)
        engine = resolve_engine(self.engine)
        if init is not None:
            init = np.asarray(to_host(init), dtype=np.float32)
            if init.shape != (self.n_clusters, d):
                raise InputError(f"init: expected shape ({self.n_clusters}, {d}), got {init.shape}")
        if engine == "cuml":
            from tasks.cluster.cuml_engine import fit_cuml

            self.cluster_centers_, self.n_iter_ = fit_cuml(points, self.n_clusters, init, self.max_iter, self.tol,
                                                           self.seed, self.client)
        else:
            self._fit_lloyd(points, init)
        self.labels_, self.distances_ = self.assign(points)
        self.inertia_ = float(self.distances_.astype(np.float64).sum())
        return self

    def predict(self, points) -> np.ndarray:
        return self.assign(points)[0]

    def assign(self, points) -> tuple[np.ndarray, np.ndarray]:
        """Nearest fitted centroid and squared distance of every point (numpy arrays)."""
        return assign_points(points, self.cluster_centers_, self.chunk_rows, self.client)

    # ----- Lloyd on numpy, cupy or Dask arrays --------------------------------
    def _check_shape(self, points) -> tuple[int, int]:
        if getattr(points, "ndim", None) != 2:
            raise InputError(f"points: expected a 2-D array (n x d), got shape {getattr(points, 'shape', None)}")
        n, d = (int(s) for s in points.shape)
        if n == 0 or d == 0:
            raise InputError(f"points: empty input (shape {n} x {d})")
        if self.n_clusters > n:
            raise InputError(f"n_clusters={self.n_clusters} is larger than the {n} input points")
        return n, d

    def _fit_lloyd(self, points, init: np.ndarray | None) -> None:
        rng = np.random.default_rng(self.seed)
        distributed = is_dask_array(points)
        if distributed:
            points = points.rechunk({1: -1})
            points = self.client.persist(points) if self.client is not None else points.persist()
            bad_rows = self._compute([_nonfinite_rows(points)])[0]
            if len(bad_rows):
                raise InputError(f"points: row {int(bad_rows[0])} holds NaN or infinite values "
                                 f"({len(bad_rows)} such rows)")
            blocks = self._block_handles(points)
        else:
            check_finite(points)
        centroids = init if init is not None else self._seed(points, rng)
        if distributed:
            def statistics(current):
                return self._iteration_statistics(blocks, current)
        else:
            def statistics(current):
                return block_statistics(points, current, chunk_rows=self.chunk_rows)
        self.cluster_centers_, self.n_iter_ = lloyd(statistics, centroids, self.max_iter, self.tol)

    def _seed(self, points, rng: np.random.Generator) -> np.ndarray:
        n = int(points.shape[0])
        sample_size = self.init_sample_size or (n if n * self.n_clusters <= FULL_SEEDING_LIMIT
                                                else max(20 * self.n_clusters, FULL_SEEDING_LIMIT // self.n_clusters))
        sample_size = min(n, max(sample_size, self.n_clusters))
        if sample_size < n:
            rows = np.sort(rng.choice(n, sample_size, replace=False))
            sample = points[rows]
            if is_dask_array(sample):
                sample = self._compute([sample])[0]
        else:
            sample = self._compute([points])[0] if is_dask_array(points) else points
        seeds = kmeans_plus_plus(sample, self.n_clusters, rng)
        return np.asarray(to_host(sample[seeds]), dtype=np.float32)

    def _block_handles(self, points) -> list:
        """The persisted blocks: delayed objects, or with a client (future, worker holding it) pairs."""
        if self.client is None:
            return list(points.to_delayed().ravel())
        from dask.core import flatten
        from distributed import futures_of

        by_key = {future.key: future for future in futures_of(points)}
        futures = [by_key[key] for key in flatten(points.__dask_keys__())]
        holders = self.client.who_has(futures)
        return [(future, next(iter(holders.get(future.key) or []), None)) for future in futures]

    def _iteration_statistics(self, blocks: list, centroids: np.ndarray) -> BlockStatistics:
        if self.client is not None:
            return self._pinned_iteration_statistics(blocks, centroids)
        import dask

        shared = dask.delayed(centroids, pure=True)
        parts = [dask.delayed(block_statistics, pure=True)(block, shared, chunk_rows=self.chunk_rows)
                 for block in blocks]
        while len(parts) > 1:  # a tree of reductions: no single task receives every block's sums
            parts = [dask.delayed(combine_statistics, pure=True)(*parts[i:i + self.reduce_fanin])
                     for i in range(0, len(parts), self.reduce_fanin)]
        return dask.compute(parts[0])[0]

    def _pinned_iteration_statistics(self, blocks: list, centroids: np.ndarray) -> BlockStatistics:
        """One iteration with every block's task on the worker that holds the block.

        Dask's work stealing would otherwise copy blocks between workers and leave one worker
        with more blocks than the other: data never moves, only centroids and sums do.
        """
        client = self.client
        shared = client.scatter(centroids, broadcast=True, hash=False)
        parts = [client.submit(block_statistics, block, shared, chunk_rows=self.chunk_rows, pure=False,
                               workers=[worker] if worker else None, allow_other_workers=worker is None)
                 for block, worker in blocks]
        while len(parts) > 1:
            parts = [client.submit(combine_statistics, *parts[i:i + self.reduce_fanin], pure=False)
                     for i in range(0, len(parts), self.reduce_fanin)]
        return parts[0].result()

    def _compute(self, collections: list) -> list:
        return compute_on(self.client, collections)


def compute_on(client, collections: list) -> list:
    """Compute Dask collections on ``client``'s cluster, or with Dask's default scheduler."""
    import dask

    if client is not None:
        return client.gather(client.compute(collections))
    return list(dask.compute(*collections))


def assign_points(points, centroids, chunk_rows: int = DEFAULT_CHUNK_ROWS, client=None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid and squared distance of every point of a numpy, cupy or Dask array."""
    centroids = np.asarray(to_host(centroids), dtype=np.float32)
    if is_dask_array(points):
        import dask

        parts = [dask.delayed(_assign_on_host)(block, centroids, chunk_rows)
                 for block in points.rechunk({1: -1}).to_delayed().ravel()]
        results = compute_on(client, parts)
        return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])
    return _assign_on_host(points, centroids, chunk_rows)


def _assign_on_host(points, centroids, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    labels, distances = assign(points, centroids, chunk_rows)
    return to_host(labels), to_host(distances)


def _nonfinite_rows(points):
    """A Dask array of the row numbers that hold NaN or infinity."""
    import dask.array as da

    return da.flatnonzero(~da.isfinite(points).all(axis=1))
