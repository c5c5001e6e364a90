"""Benchmark: the Dask k-means engine against faiss-cpu, out of core, and from 1 to 2 workers.

    python benchmarks/kmeans.py [--rows 200000] [--dim 256] [--k 1000] [--ooc-rows 5000000]

1. One Lloyd iteration on ``rows x dim`` float32 with ``k`` centroids, both from the same
   centroids: ``KMeans(engine="dask").fit`` on a local Dask cluster (one single-threaded worker
   per core, the points persisted in ``blocks-per-worker`` blocks per worker; one iteration =
   centroids out, per-block sums and counts back, the reduction), against ``faiss.Kmeans`` with
   as many threads. Per-iteration times are the median over ``repeats`` of (time for 4
   iterations - time for 1) / 3 for both, so set-up costs cancel. ``time_ratio_vs_faiss`` = ours / faiss.
2. Dask scaling: the same iteration on the same blocks with 1 worker and with ``workers``
   workers. Beside it, what the machine allows: the same single-threaded matrix product (the
   assignment's kernel) run in one process, then in ``workers`` processes at once
   (``hardware_speedup``: how much more work per second the cores do together; cores that share
   their floating-point units or memory bandwidth give less than ``workers``).
3. The per-block kernel alone, one thread: our assignment and per-cluster sums of one block
   (``block_statistics``: one product per 2,048 rows, argmax, sparse sums) against faiss's
   search for the nearest centroid on the same block (``faiss.knn``, BLAS plus its own argmin).
4. Out of core: ``ooc-rows x dim`` float16 embeddings written to a store as shards of 100,000
   rows (``tasks/cluster/imported.py``), then 4 levels of hierarchical k-means with resampling
   (``tasks/cluster/run.py`` on a local Dask cluster streaming the shards). Peak resident memory
   is the largest sum, sampled every 0.2 s, of the RSS of this process and every worker.

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.cluster.kmeans import KMeans  # noqa: E402
from tasks.common.dask_cluster import dask_client  # noqa: E402
from timing import median_seconds  # noqa: E402 - benchmarks/timing.py, next to this script

GIB = 1024 ** 3


def clustered_data(rows: int, dim: int, centers: int, seed: int, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centers, dim)).astype(np.float32)
    data = means[rng.integers(0, centers, rows)]
    data += 0.5 * rng.standard_normal(size=data.shape, dtype=np.float32)
    return data.astype(dtype, copy=False)


def _product_loop(seconds_out, index: int, start, repeats: int = 120) -> None:
    """The assignment's kernel alone: 2,048 rows x (256 + 8) by 1,000 centroids, single-threaded."""
    import threadpoolctl

    rng = np.random.default_rng(index)
    rows = rng.standard_normal((2048, 264), dtype=np.float32)
    table = rng.standard_normal((264, 1000), dtype=np.float32)
    out = np.empty((2048, 1000), dtype=np.float32)
    with threadpoolctl.threadpool_limits(1):
        np.matmul(rows, table, out=out)
        start.wait()  # a barrier: every process has imported numpy and run its first product
        began = time.perf_counter()
        for _ in range(repeats):
            np.matmul(rows, table, out=out)
        seconds_out[index] = time.perf_counter() - began


def hardware_speedup(processes: int) -> float:
    """Work per second of ``processes`` single-threaded products at once, over one alone."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")

    def run(count: int) -> float:
        seconds = context.Array("d", count)
        start = context.Barrier(count)
        workers = [context.Process(target=_product_loop, args=(seconds, i, start)) for i in range(count)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return max(seconds[:])

    alone = min(run(1) for _ in range(2))
    together = min(run(processes) for _ in range(2))
    return processes * alone / together


def block_kernels(block: np.ndarray, centroids: np.ndarray) -> dict:
    """Median of 3 seconds, one thread, after a warm-up: our block statistics, our assignment alone,
    faiss's nearest-centroid search."""
    import faiss
    import threadpoolctl

    from tasks.cluster.lloyd import assign, block_statistics

    faiss.omp_set_num_threads(1)
    runs = {"ours_statistics_seconds": lambda: block_statistics(block, centroids),
            "ours_assign_seconds": lambda: assign(block, centroids),
            "faiss_knn_seconds": lambda: faiss.knn(block, centroids, 1)}
    figures = {"rows": len(block)}
    with threadpoolctl.threadpool_limits(1):
        for name, run in runs.items():
            run()
            figures[name] = round(median_seconds(run, 3)[0], 3)
    return figures


def faiss_iteration(points: np.ndarray, centroids: np.ndarray, threads: int) -> float:
    import faiss

    faiss.omp_set_num_threads(threads)

    def run(iterations: int) -> float:
        model = faiss.Kmeans(points.shape[1], len(centroids), niter=iterations, seed=1, max_points_per_centroid=10 ** 9)
        started = time.perf_counter()
        model.train(points, init_centroids=centroids)
        return time.perf_counter() - started

    run(1)  # warm-up
    return float(np.median([(run(4) - run(1)) / 3 for _ in range(REPEATS)]))


REPEATS = 3


def dask_iteration(points: np.ndarray, centroids: np.ndarray, workers: int, block_rows: int) -> float:
    """Seconds per Lloyd iteration of ``KMeans.fit`` on persisted blocks: (4 iterations - 1) / 3.

    The difference also cancels what ``fit`` does once (the NaN check, the final assignment).
    """
    import dask.array as da
    from distributed import wait

    with dask_client(n_workers=workers, gpu=False) as client:
        blocks = client.persist(da.from_array(points, chunks=(block_rows, points.shape[1])))
        wait(blocks)

        def run(iterations: int) -> float:
            started = time.perf_counter()
            KMeans(len(centroids), engine="dask", client=client, max_iter=iterations, tol=0).fit(blocks, init=centroids)
            return time.perf_counter() - started

        run(1)  # warm-up: the workers import numpy and scipy
        return float(np.median([(run(4) - run(1)) / 3 for _ in range(REPEATS)]))


class PeakMemory:
    """Largest sum of the RSS of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for proc in [self.process] + self.process.children(recursive=True):
                try:
                    total += proc.memory_info().rss
                except psutil.Error:  # a child that just exited
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def out_of_core(rows: int, dim: int, shard_rows: int, levels: list, max_iter: int, workers: int) -> dict:
    from tasks.cluster.imported import import_embeddings
    from tasks.cluster.run import ClusterConfig, cluster_pool
    from tasks.common.catalog import Catalog
    from tasks.common.store import Store

    folder = tempfile.mkdtemp(prefix="kmeans-ooc-", dir=os.environ.get("BENCH_DIR"))
    try:
        store = Store(folder)
        started = time.perf_counter()

        def shards():
            for number, start in enumerate(range(0, rows, shard_rows)):
                count = min(shard_rows, rows - start)
                uids = np.char.add(f"{number:05d}-", np.arange(count).astype(str))
                yield uids, clustered_data(count, dim, 2000, seed=number, dtype=np.float16)

        catalog = Catalog(store)
        import_embeddings(catalog, "ooc", shards())
        written = time.perf_counter() - started
        config = ClusterConfig.from_dict({"levels": levels, "engine": "dask", "max_iter": max_iter})
        with PeakMemory() as memory:
            started = time.perf_counter()
            with dask_client(n_workers=workers, gpu=False) as client:
                tree = cluster_pool(catalog, catalog.snapshot("ooc"), config, client=client)
            seconds = time.perf_counter() - started
        return {"rows": rows, "dim": dim, "dtype": "float16", "shards": -(-rows // shard_rows),
                "levels": [level["k"] for level in tree["stats"]["levels"]], "max_iter": max_iter,
                "write_seconds": round(written, 1), "cluster_seconds": round(seconds, 1),
                "peak_rss_gib": round(memory.peak / GIB, 2)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--blocks-per-worker", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ooc-rows", type=int, default=5_000_000)
    parser.add_argument("--ooc-max-iter", type=int, default=10)
    args = parser.parse_args(argv)
    global REPEATS
    REPEATS = args.repeats
    block_rows = -(-args.rows // (args.workers * args.blocks_per_worker))

    points = clustered_data(args.rows, args.dim, 2 * args.k, seed=0)
    centroids = points[np.random.default_rng(1).choice(args.rows, args.k, replace=False)].copy()
    faiss_seconds = faiss_iteration(points, centroids, args.workers)
    ours_seconds = dask_iteration(points, centroids, args.workers, block_rows)
    one_worker = dask_iteration(points, centroids, 1, block_rows)
    machine = hardware_speedup(args.workers) if args.workers > 1 else 1.0
    kernels = block_kernels(points[:block_rows], centroids)
    print(f"one Lloyd iteration, {args.rows} x {args.dim}, k={args.k}: faiss {faiss_seconds:.3f} s, "
          f"ours (Dask, {args.workers} workers, blocks of {block_rows} rows) {ours_seconds:.3f} s, "
          f"ours with 1 worker {one_worker:.3f} s; the matrix product alone in {args.workers} processes does "
          f"{machine:.2f} times the work of one; one block on one thread: {kernels}")
    figures = {"benchmark": "kmeans", "rows": args.rows, "dim": args.dim, "k": args.k, "workers": args.workers,
               "block_rows": block_rows, "repeats": args.repeats,
               "faiss_iteration_seconds": round(faiss_seconds, 3), "ours_iteration_seconds": round(ours_seconds, 3),
               "time_ratio_vs_faiss": round(ours_seconds / faiss_seconds, 3),
               "one_worker_iteration_seconds": round(one_worker, 3),
               "speedup_2_workers_vs_1": round(one_worker / ours_seconds, 3),
               "hardware_speedup": round(machine, 3), "block_kernel": kernels}
    if args.ooc_rows:
        levels = [1000, {"k": 200, "resampling_steps": 10}, {"k": 50, "resampling_steps": 10},
                  {"k": 10, "resampling_steps": 10}]
        ooc = out_of_core(args.ooc_rows, args.dim, 100_000, levels, args.ooc_max_iter, args.workers)
        print(f"out of core: {ooc}")
        figures["out_of_core"] = ooc
        figures["peak_rss_gib_out_of_core"] = ooc["peak_rss_gib"]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
