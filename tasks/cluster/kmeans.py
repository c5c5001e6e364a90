"""k-means with a scikit-learn-like API and two engines: ``dask`` (CPU or cupy blocks) and ``cuml``.

In:  points as a numpy or cupy array (clustered in this process, in chunks) or a Dask array whose
     blocks are numpy or cupy (clustered on the Dask workers, one reduction per iteration).
Out: a fitted :class:`KMeans`: ``cluster_centers_`` (``k x d`` float32 numpy), ``labels_``
     (numpy int64), ``distances_`` (squared L2 to the own centroid), ``inertia_``, ``n_iter_``.

Engines (``engine=``):

- ``dask``: Lloyd's algorithm of :mod:`tasks.cluster.lloyd`; each iteration sends the centroids
  to the blocks and gets back per-cluster sums and counts (only for the clusters a block touches),
  added up in a tree of reductions on the workers. Seeding (:mod:`tasks.cluster.init`): exact
  k-means++ on all points when ``n * k <= FULL_SEEDING_LIMIT`` and, for a Dask input, ``n <=
  GATHER_LIMIT`` (or when k-means|| would draw as many candidates as there are points); k-means++ on a uniform sample of ``init_sample_size`` points when
  that is given; otherwise k-means|| over the blocks where they are, on a uniform sample of
  ``max(50 k, FULL_SEEDING_LIMIT / k)`` of their rows that stays on the workers (seeding then costs
  ``O(k^2 d)`` and one pass over the points, not rounds over all of them), which brings at most
  ``1 + 5 * 2k`` candidate rows to the driver (``seeding_`` says which ran). Empty clusters take the
  points farthest from their centroid. Stops after ``max_iter`` iterations or when the inertia
  improves by less than ``tol`` (relative).

- ``cuml``: ``cuml.dask.cluster.KMeans`` (Dask arrays) or ``cuml.cluster.KMeans`` (in memory) on
  GPUs, see :mod:`tasks.cluster.cuml_engine`.
- ``auto``: ``cuml`` where cuML imports and a GPU is visible, else ``dask``. A GPU that the
  driver lists but cupy or cuML cannot use raises :class:`~tasks.common.errors.GpuSetupError`
  (a broken CUDA install is reported, not run on the CPU); ``engine="dask"`` asks for the CPU.

Memory of the driver for a Dask input: the centroids, the candidates of seeding, one reduced set
of statistics per iteration (at most ``k x d`` float64), and the labels (int64) and distances
(float32) of every point, which the caller asked for. The blocks never leave the workers.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from tasks.cluster.init import candidate_bound, kmeans_parallel, kmeans_plus_plus
from tasks.cluster.lloyd import (DEFAULT_CHUNK_ROWS, array_module, assign, block_statistics,
                                 combine_statistics, lloyd, to_host)
from tasks.common.errors import InputError
from tasks.common.shuffle import compute
from tasks.common.gpu import gpu_available, gpu_setup_error, visible_gpus

ENGINES = ("auto", "dask", "cuml")
FULL_SEEDING_LIMIT = 20_000_000  # n * k above which k-means|| seeds instead of k-means++ on all points
GATHER_LIMIT = 200_000  # rows of a Dask input that exact k-means++ may bring into the driver
SEEDING_POINTS_PER_CLUSTER = 50  # k-means|| runs on a uniform sample of max(50 k, FULL_SEEDING_LIMIT / k) points


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
            points = self._fit_lloyd(points, init)
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

    def _fit_lloyd(self, points, init: np.ndarray | None):
        """Fits the centroids; returns the points as clustered (a Dask input persisted)."""
        rng = np.random.default_rng(self.seed)
        if is_dask_array(points):
            points = points.rechunk({1: -1})
            points = self.client.persist(points) if self.client is not None else points.persist()
            bad_rows = self._compute([_nonfinite_rows(points)])[0]
            if len(bad_rows):
                raise InputError(f"points: row {int(bad_rows[0])} holds NaN or infinite values "
                                 f"({len(bad_rows)} such rows)")
        else:
            check_finite(points)
        blocks = Blocks(points, self.client)
        if init is not None:
            centroids, self.seeding_ = init, {"method": "init"}
        else:
            centroids = self._seed(points, rng, blocks)

        def statistics(current):
            return blocks.map_reduce(block_statistics, combine_statistics, current, fanin=self.reduce_fanin,
                                     chunk_rows=self.chunk_rows)

        self.cluster_centers_, self.n_iter_ = lloyd(statistics, centroids, self.max_iter, self.tol)
        return points

    def _seed(self, points, rng: np.random.Generator, blocks: "Blocks") -> np.ndarray:
        n, k = int(points.shape[0]), self.n_clusters
        large = n * k > FULL_SEEDING_LIMIT or (is_dask_array(points) and n > GATHER_LIMIT)
        if self.init_sample_size is None and large and candidate_bound(k) < n:
            sample = min(n, max(SEEDING_POINTS_PER_CLUSTER * k, FULL_SEEDING_LIMIT // k))
            seeds, candidates = kmeans_parallel(blocks, k, rng, sample_size=sample, chunk_rows=self.chunk_rows)
            self.seeding_ = {"method": "k-means||", "sample": sample, "candidates": candidates,
                             "candidate_bound": candidate_bound(k)}
            return seeds
        sample_size = min(n, max(self.init_sample_size or n, k))
        if sample_size < n:
            rows = np.sort(rng.choice(n, sample_size, replace=False))
            sample = points[rows]
            if is_dask_array(sample):
                sample = self._compute([sample])[0]
        else:
            sample = self._compute([points])[0] if is_dask_array(points) else points
        self.seeding_ = {"method": "k-means++", "points": sample_size}
        seeds = kmeans_plus_plus(sample, k, rng)
        return np.asarray(to_host(sample[seeds]), dtype=np.float32)

    def _compute(self, collections: list) -> list:
        return compute(self.client, collections)


MAP_REDUCE_ATTEMPTS = 3


class Blocks:
    """The blocks of a numpy/cupy array (one block) or of a persisted Dask array, and one way to run a
    function on each of them where it is.

    ``map(function, *shared, per_block=...)`` calls ``function(block, *per_block[i], *shared)``: in
    this process for an in-memory array; with Dask's default scheduler for a Dask array without a
    client (its results are local values); with a client, every task on the worker that holds its
    block (work stealing would otherwise copy blocks between workers), shared arrays scattered to
    every worker once per call, and the results kept there as futures until :meth:`gather`.
    """

    def __init__(self, points, client=None):
        self.client = client
        self.n = int(points.shape[0])
        if not is_dask_array(points):
            self.handles, self.workers, self.starts = [points], [None], np.zeros(1, dtype=np.int64)
            self.mode = "memory"
            return
        self.starts = np.concatenate([[0], np.cumsum(points.chunks[0])[:-1]]).astype(np.int64)
        if client is None:
            self.handles, self.mode = list(points.to_delayed().ravel()), "dask"
            self.workers = [None] * len(self.handles)
            return
        from dask.core import flatten
        from distributed import futures_of, wait

        self.mode = "client"
        by_key = {future.key: future for future in futures_of(points)}
        self.handles = [by_key[key] for key in flatten(points.__dask_keys__())]
        wait(self.handles)  # where each block is, once it is there
        holders = client.who_has(self.handles)
        self.workers = [next(iter(holders.get(future.key) or []), None) for future in self.handles]

    def map(self, function, *shared, per_block: list[tuple] | None = None, **keywords) -> list:
        per_block = per_block or [()] * len(self.handles)
        if self.mode == "memory":
            return [function(block, *args, *shared, **keywords) for block, args in zip(self.handles, per_block)]
        if self.mode == "dask":
            import dask

            wrapped = [dask.delayed(value, pure=True) if hasattr(value, "shape") else value for value in shared]
            return list(dask.compute(*[dask.delayed(function, pure=True)(block, *args, *wrapped, **keywords)
                                       for block, args in zip(self.handles, per_block)]))
        client = self.client
        wrapped = [client.scatter(value, broadcast=True, hash=False) if hasattr(value, "shape") else value
                   for value in shared]
        # pinned to the block's worker, but free to run elsewhere when that worker has died (its block is recomputed)
        return [client.submit(function, block, *args, *wrapped, pure=False, workers=[worker] if worker else None,
                              allow_other_workers=True, **keywords)
                for block, worker, args in zip(self.handles, self.workers, per_block)]

    def put(self, values: list) -> list:
        """One value per block, placed (with a client) on the worker that holds the block."""
        if self.mode != "client":
            return list(values)
        return [self.client.scatter(value, workers=[worker] if worker else None, hash=False)
                for value, worker in zip(values, self.workers)]

    def gather(self, handles: list) -> list:
        return self.client.gather(handles) if self.mode == "client" else list(handles)

    def map_reduce(self, function, combine, *shared, per_block: list[tuple] | None = None, fanin: int = 8,
                   **keywords):
        """``combine`` over every block's ``function`` result, in a tree of reductions on the workers
        (or in one Dask graph): no task receives every block's result."""
        if self.mode == "dask":
            import dask

            wrapped = [dask.delayed(value, pure=True) if hasattr(value, "shape") else value for value in shared]
            parts = [dask.delayed(function, pure=True)(block, *args, *wrapped, **keywords)
                     for block, args in zip(self.handles, per_block or [()] * len(self.handles))]
            while len(parts) > 1:
                parts = [dask.delayed(combine, pure=True)(*parts[i:i + fanin]) for i in range(0, len(parts), fanin)]
            return dask.compute(parts[0])[0]
        if self.mode == "memory":
            parts = self.map(function, *shared, per_block=per_block, **keywords)
            return combine(*parts) if len(parts) > 1 else parts[0]
        from distributed.client import FutureCancelledError

        for attempt in range(MAP_REDUCE_ATTEMPTS):
            # a worker that dies can take scattered inputs with it, and Dask then cancels what depends on
            # them: the whole round is submitted again (the blocks themselves are recomputed from the store)
            parts = self.map(function, *shared, per_block=per_block, **keywords)
            held = list(parts)  # every intermediate result stays referenced until the round is done
            while len(parts) > 1:
                parts = [self.client.submit(combine, *parts[i:i + fanin], pure=False)
                         for i in range(0, len(parts), fanin)]
                held += parts
            try:
                return parts[0].result()
            except FutureCancelledError:
                if attempt == MAP_REDUCE_ATTEMPTS - 1:
                    raise
            finally:
                del held

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """The rows at sorted global ``indices`` (float32 numpy), read from the blocks that hold them."""
        indices = np.asarray(indices, dtype=np.int64)
        bounds = np.searchsorted(indices, np.append(self.starts, self.n))
        wanted = [i for i in range(len(self.handles)) if bounds[i + 1] > bounds[i]]
        local = [(indices[bounds[i]:bounds[i + 1]] - self.starts[i],) for i in wanted]
        picked = self.gather(self._subset(wanted).map(_take, per_block=local))
        return np.concatenate(picked).astype(np.float32).reshape(len(indices), -1)

    def derived(self, function, *shared, per_block: list[tuple] | None = None) -> "Blocks":
        """The blocks that ``function(block, ...)`` makes of these, kept where these are."""
        made = self.map(function, *shared, per_block=per_block)
        sizes = self.gather(self.map(_length, per_block=[(h,) for h in made])) if self.mode == "client" else \
            [len(h) for h in made]
        result = object.__new__(Blocks)
        result.client, result.mode, result.workers, result.handles = self.client, self.mode, self.workers, made
        if self.mode == "dask":  # computed values in this process
            result.mode = "memory"
        result.n = int(np.sum(sizes))
        result.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return result

    def _subset(self, chosen: list[int]) -> "Blocks":
        result = object.__new__(Blocks)
        result.__dict__.update(self.__dict__)
        result.handles = [self.handles[i] for i in chosen]
        result.workers = [self.workers[i] for i in chosen]
        return result


def _take(block, local_rows):
    return to_host(block[array_module(block).asarray(local_rows)]).astype(np.float32)


def _length(block, made) -> int:
    return len(made)


def assign_points(points, centroids, chunk_rows: int = DEFAULT_CHUNK_ROWS, client=None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid and squared distance of every point of a numpy, cupy or Dask array."""
    centroids = np.asarray(to_host(centroids), dtype=np.float32)
    if is_dask_array(points):
        import dask

        shared = dask.delayed(centroids, pure=True)  # one key: the centroids travel once per worker, not per block
        parts = [dask.delayed(_assign_on_host, pure=True)(block, shared, chunk_rows)
                 for block in points.rechunk({1: -1}).to_delayed().ravel()]
        results = compute(client, parts)
        return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])
    return _assign_on_host(points, centroids, chunk_rows)


def _assign_on_host(points, centroids, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    labels, distances = assign(points, centroids, chunk_rows)
    return to_host(labels), to_host(distances)


def _nonfinite_rows(points):
    """A Dask array of the row numbers that hold NaN or infinity."""
    import dask.array as da

    return da.flatnonzero(~da.isfinite(points).all(axis=1))
