"""Benchmark on one NVIDIA GPU: our k-means on cupy, cuML and faiss-gpu side by side, and the 4-level tree.

    python benchmarks/kmeans_gpu.py [--quick] [--budget-seconds 300] [--out results.json]

Not run on the machines this project was built on (no GPU there): every figure it prints comes
from the GPU machine it is run on.

1. One Lloyd iteration on ``rows x dim`` float32 (synthetic clustered data generated on the GPU
   with cupy, 1,000,000 x 768 by default) with ``k`` centroids (10,000), every engine from the same
   initial centroids (``k`` rows of the data), per-iteration seconds = (time for 4 iterations - time
   for 1) / 3 after a warm-up, as ``benchmarks/kmeans.py`` measures them:
   ``ours_cupy_memory``: ``KMeans(engine="dask")`` on the cupy array in this process (its default
   ``chunk_rows``), and ``ours_cupy_memory_chunk<N>`` with ``--gpu-chunk-rows`` rows per matrix
   product; ``cuml_memory``: ``KMeans(engine="cuml")`` (single-GPU ``cuml.cluster.KMeans``);
   ``faiss_gpu``: ``faiss.Kmeans(..., gpu=True)`` on the host copy of the points (faiss moves them
   to the GPU itself); ``ours_dask_cuda`` and ``cuml_dask_cuda``: the same on a Dask array of cupy
   blocks (generated on the worker) on a ``dask_cuda.LocalCUDACluster``, where dask-cuda imports.
   Every entry also gives the inertia after 4 iterations (our assignment to its centroids, so all
   are comparable) and the iterations each timed fit ran (a fit that stopped early is flagged).
2. The tree: 4 levels of hierarchical k-means (``--tree-levels``, 10000/1000/100/10 by default,
   resampling steps on levels 2-4, ``--tree-max-iter`` iterations) on ``tree-rows x dim`` float32
   (5,000,000 x 768) held on the GPU, with ``tasks/cluster/hierarchical.py`` (it takes an array
   directly), once with our engine (``engine="dask"`` on cupy) and once with ``engine="cuml"``;
   total and per-level seconds and what level 1 ran (a level 1 of k >= 4096 runs as the automatic
   recursive split; ``--auto-split-from 0`` turns that off).

Each part runs on its own: a failure records ``{"error": "..."}`` and the rest still runs; a part
that the time budget (``--budget-seconds``) no longer covers records ``{"skipped": "..."}``. With
``--out`` the figures so far are written to that file after every part (what a killed run leaves).
``--quick``: small sizes, for a first check that everything runs. The last line printed is one
JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1024 ** 3
BLOCK_ROWS = 100_000  # rows generated per cupy call (and per Dask block)
DATA_SEED = 0
INIT_SEED = 1

FULL = {"rows": 1_000_000, "dim": 768, "k": 10_000, "tree_rows": 5_000_000,
        "tree_levels": "10000,1000,100,10"}
QUICK = {"rows": 100_000, "dim": 768, "k": 1_000, "tree_rows": 300_000,
         "tree_levels": "1000,100,20,5"}


# ----- data, made on the GPU ---------------------------------------------------------------
def make_block(index: int, rows: int, dim: int, centers: int, seed: int):
    """Block ``index`` of the synthetic data: ``rows x dim`` float32 cupy, points around ``centers``
    Gaussian means (the same means for every block), standard deviation 0.5. The same ``index``
    always gives the same block, in this process or on a Dask-CUDA worker."""
    import cupy

    means = cupy.random.RandomState(seed).standard_normal((centers, dim), dtype=cupy.float32)
    state = cupy.random.RandomState(seed + 1 + index)
    block = means[state.randint(0, centers, size=rows)]
    block += 0.5 * state.standard_normal((rows, dim), dtype=cupy.float32)
    return block


def block_sizes(rows: int) -> list[int]:
    return [min(BLOCK_ROWS, rows - start) for start in range(0, rows, BLOCK_ROWS)]


def gpu_points(rows: int, dim: int, centers: int):
    """The whole data set as one cupy array, block by block (no temporary of the full size)."""
    import cupy

    points = cupy.empty((rows, dim), dtype=cupy.float32)
    start = 0
    for index, size in enumerate(block_sizes(rows)):
        points[start:start + size] = make_block(index, size, dim, centers, DATA_SEED)
        start += size
    cupy.cuda.Device().synchronize()
    return points


def initial_centroids(points, k: int) -> np.ndarray:
    """``k`` distinct rows of ``points`` (host float32), the same for every engine."""
    import cupy

    rows = np.random.default_rng(INIT_SEED).choice(int(points.shape[0]), k, replace=False)
    return cupy.asnumpy(points[cupy.asarray(rows)]).astype(np.float32)


def free_gpu_memory() -> None:
    try:
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()
    except Exception:  # noqa: BLE001 - nothing to free without cupy
        pass


def require_gpu_memory(needed_bytes: float, what: str) -> None:
    """Raise (naming ``what``) when the GPU has less free memory than ``needed_bytes``."""
    import cupy

    free_gpu_memory()
    free, total = cupy.cuda.runtime.memGetInfo()
    if free < needed_bytes:
        raise MemoryError(f"{what} needs about {needed_bytes / GIB:.1f} GiB of GPU memory, "
                          f"{free / GIB:.1f} of {total / GIB:.1f} GiB are free")


# ----- timing ---------------------------------------------------------------------------------
def iteration_seconds(fit) -> dict:
    """Seconds per iteration of ``fit(iterations) -> (n_iter, inertia)``: (4 iterations - 1) / 3,
    after a warm-up call of 1 iteration (kernel compilation, library start-up)."""
    fit(1)
    started = time.perf_counter()
    one = fit(1)
    t1 = time.perf_counter() - started
    started = time.perf_counter()
    four = fit(4)
    t4 = time.perf_counter() - started
    result = {"iteration_seconds": round((t4 - t1) / 3, 4), "seconds_1_iteration": round(t1, 3),
              "seconds_4_iterations": round(t4, 3), "n_iter": [one[0], four[0]],
              "inertia_after_4": four[1]}
    if [one[0], four[0]] != [1, 4]:
        result["warning"] = "a timed fit did not run the iterations it was asked for (stopped early)"
    return result


def with_rate(result: dict, flops: float) -> dict:
    seconds = result.get("iteration_seconds")
    if seconds and seconds > 0:
        result["tflops"] = round(flops / seconds / 1e12, 2)
    return result


def our_inertia(points, centroids) -> float:
    """Sum of squared distances of ``points`` to their nearest of ``centroids`` (our assignment)."""
    from tasks.cluster.kmeans import assign_points

    return float(assign_points(points, centroids)[1].astype(np.float64).sum())


# ----- part 1: one Lloyd iteration -------------------------------------------------------------
def ours_memory(points, centroids, chunk_rows: int | None = None) -> dict:
    from tasks.cluster.kmeans import KMeans
    from tasks.cluster.lloyd import DEFAULT_CHUNK_ROWS

    chunk_rows = chunk_rows or DEFAULT_CHUNK_ROWS

    def fit(iterations: int):
        model = KMeans(len(centroids), engine="dask", max_iter=iterations, tol=0, chunk_rows=chunk_rows)
        model.fit(points, init=centroids)
        return model.n_iter_, model.inertia_

    return {"chunk_rows": chunk_rows, **iteration_seconds(fit)}


def cuml_memory(points, centroids) -> dict:
    import cuml

    from tasks.cluster.kmeans import KMeans

    def fit(iterations: int):
        model = KMeans(len(centroids), engine="cuml", max_iter=iterations, tol=0).fit(points, init=centroids)
        return model.n_iter_, model.inertia_

    return {"cuml": cuml.__version__, **iteration_seconds(fit)}


def faiss_gpu(points, centroids) -> dict:
    try:
        import faiss
    except ImportError:
        return {"error": "faiss-gpu not installed (faiss does not import)"}
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return {"error": f"faiss-gpu not installed (faiss {getattr(faiss, '__version__', '?')} has no GPU support "
                         f"or sees no GPU)"}
    host = points.get()

    def fit(iterations: int):
        model = faiss.Kmeans(host.shape[1], len(centroids), niter=iterations, seed=1, gpu=True,
                             max_points_per_centroid=10 ** 9, verbose=False)
        model.train(host, init_centroids=centroids)
        return len(model.obj), None

    result = {"faiss": faiss.__version__, **iteration_seconds(fit)}
    model = faiss.Kmeans(host.shape[1], len(centroids), niter=4, seed=1, gpu=True, max_points_per_centroid=10 ** 9)
    model.train(host, init_centroids=centroids)
    result["inertia_after_4"] = our_inertia(points, model.centroids)
    result["note"] = "the points are on the host: faiss copies them to the GPU every iteration"
    return result


def dask_cuda_parts(rows: int, dim: int, centers: int, centroids: np.ndarray, budget: "Budget") -> dict:
    """Ours and cuML's k-means on a Dask array of cupy blocks on a LocalCUDACluster (one worker)."""
    try:
        import dask_cuda  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        message = f"dask_cuda not importable ({type(exc).__name__}: {exc})"
        return {"ours_dask_cuda": {"error": message}, "cuml_dask_cuda": {"error": message}}
    import cupy
    import dask
    import dask.array as da
    from distributed import wait

    from tasks.cluster.kmeans import KMeans
    from tasks.common.dask_cluster import dask_client

    results = {}
    started = time.perf_counter()
    with dask_client(gpu=True) as client:
        parts = []
        for index, size in enumerate(block_sizes(rows)):
            block = dask.delayed(make_block, pure=True)(index, size, dim, centers, DATA_SEED)
            parts.append(da.from_delayed(block, shape=(size, dim), dtype=np.float32,
                                         meta=cupy.empty((0, dim), dtype=cupy.float32)))
        points = client.persist(da.concatenate(parts, axis=0))
        wait(points)
        results["cluster_start_and_data_seconds"] = round(time.perf_counter() - started, 1)
        results["workers"] = len(client.scheduler_info()["workers"])
        for name, engine in (("ours_dask_cuda", "dask"), ("cuml_dask_cuda", "cuml")):
            def fit(iterations: int, engine=engine):
                model = KMeans(len(centroids), engine=engine, max_iter=iterations, tol=0, client=client)
                model.fit(points, init=centroids)
                return model.n_iter_, model.inertia_

            results[name] = budget.run(name, 20, lambda fit=fit: iteration_seconds(fit))
    return results


# ----- part 2: the tree --------------------------------------------------------------------------
def tree(points, levels: list, engine: str, max_iter: int, auto_split_from: int | None) -> dict:
    from tasks.cluster.hierarchical import AUTO_SPLIT_FROM, HierarchicalKMeans

    class TimedTree(HierarchicalKMeans):
        """The same tree; records the seconds of every level."""

        def _fit_level(self, number, spec, inputs):
            started = time.perf_counter()
            level = super()._fit_level(number, spec, inputs)
            self.level_seconds_.append(round(time.perf_counter() - started, 2))
            return level

    model = TimedTree(levels, metric="cosine", engine=engine, max_iter=max_iter, seed=0,
                      auto_split_from=AUTO_SPLIT_FROM if auto_split_from is None else auto_split_from)
    model.level_seconds_ = []
    started = time.perf_counter()
    model.fit(points)
    seconds = time.perf_counter() - started
    return {"engine": engine, "seconds": round(seconds, 1), "level_seconds": model.level_seconds_,
            "level_k": [level.k for level in model.levels_], "level_1_ran": model.plans_[0]}


# ----- running the parts -------------------------------------------------------------------------
class Budget:
    """Runs parts while time is left; a part's failure or a lack of time is recorded, not raised."""

    def __init__(self, seconds: float, figures: dict, out: str | None):
        self.deadline = time.perf_counter() + seconds if seconds > 0 else float("inf")
        self.figures = figures
        self.out = out

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def run(self, name: str, needs_seconds: float, function) -> dict:
        if self.left() < needs_seconds:
            return {"skipped": f"time budget: {max(self.left(), 0):.0f} s left, the part needs about "
                               f"{needs_seconds:.0f} s"}
        started = time.perf_counter()
        print(f"kmeans_gpu: {name} ...", flush=True)
        try:
            result = function()
        except Exception as exc:  # noqa: BLE001 - one part's failure must not stop the others
            lines = traceback.format_exc().strip().splitlines()
            result = {"error": f"{type(exc).__name__}: {exc}"[:600], "where": lines[-3:-1]}
        finally:
            free_gpu_memory()
        result.setdefault("part_seconds", round(time.perf_counter() - started, 1))
        print(f"kmeans_gpu: {name}: {json.dumps(result)}", flush=True)
        return result

    def save(self) -> None:
        if self.out:
            temporary = f"{self.out}.tmp"
            with open(temporary, "w") as handle:
                json.dump(self.figures, handle)
            os.replace(temporary, self.out)


def gpu_description() -> dict:
    import cupy

    properties = cupy.cuda.runtime.getDeviceProperties(0)
    free, total = cupy.cuda.runtime.memGetInfo()
    return {"name": properties["name"].decode() if isinstance(properties["name"], bytes) else properties["name"],
            "memory_gib": round(total / GIB, 1), "free_gib": round(free / GIB, 1),
            "cupy": cupy.__version__, "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
            "tf32": os.environ.get("CUPY_TF32", "0") != "0"}


def library_versions() -> dict:
    import importlib.metadata as metadata

    versions = {}
    for name in ("cupy-cuda12x", "cupy-cuda13x", "cuml-cu12", "cuml-cu13", "dask", "distributed", "dask-cuda",
                 "faiss-cpu", "faiss-gpu-cu12", "faiss-cuda", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def parse_levels(text: str, resampling_steps: int) -> list:
    ks = [int(part) for part in text.split(",") if part.strip()]
    if not ks:
        raise SystemExit(f"--tree-levels {text!r}: expected comma-separated k values, e.g. 10000,1000,100,10")
    return [ks[0]] + [{"k": k, "resampling_steps": resampling_steps} for k in ks[1:]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[3:]))
    parser.add_argument("--quick", action="store_true", help="small sizes (100,000 x 768, k=1000; tree on 300,000)")
    parser.add_argument("--rows", type=int, help="rows of part 1 (default 1,000,000)")
    parser.add_argument("--dim", type=int, help="dimension (default 768)")
    parser.add_argument("--k", type=int, help="clusters of part 1 (default 10,000)")
    parser.add_argument("--gpu-chunk-rows", type=int, default=32_768,
                        help="rows per matrix product of the extra run of our engine (0: no extra run)")
    parser.add_argument("--tree-rows", type=int, help="rows of the tree (default 5,000,000; 0 skips the tree)")
    parser.add_argument("--tree-levels", help="k of every level (default 10000,1000,100,10)")
    parser.add_argument("--resampling-steps", type=int, default=10, help="resampling steps of levels 2+")
    parser.add_argument("--tree-max-iter", type=int, default=10)
    parser.add_argument("--auto-split-from", type=int, default=None,
                        help="level-1 k from which level 1 runs as a recursive split (default: the project's, "
                             "4096; 0 = plain k-means, whose k-means|| reduction runs on the CPU)")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: iteration,cuml,faiss,"
                                                   "dask_cuda,tree,tree_cuml")
    parser.add_argument("--budget-seconds", type=float, default=0, help="stop starting parts after this (0: none)")
    parser.add_argument("--out", help="write the figures so far to this file after every part")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    rows, dim, k = args.rows or sizes["rows"], args.dim or sizes["dim"], args.k or sizes["k"]
    tree_rows = sizes["tree_rows"] if args.tree_rows is None else args.tree_rows
    levels = parse_levels(args.tree_levels or sizes["tree_levels"], args.resampling_steps)
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    started = time.perf_counter()
    figures: dict = {"benchmark": "kmeans_gpu", "quick": args.quick}
    budget = Budget(args.budget_seconds, figures, args.out)

    try:
        figures["gpu"] = gpu_description()
    except Exception as exc:  # noqa: BLE001 - no cupy or no GPU: every part records why
        figures["gpu"] = {"error": f"no usable GPU through cupy: {type(exc).__name__}: {exc}"[:400]}
    figures["versions"] = library_versions()
    budget.save()

    iteration: dict = {"rows": rows, "dim": dim, "k": k, "centers": 2 * k, "dtype": "float32",
                       "flops_per_iteration": 2 * rows * ((dim + 8) // 8 * 8) * k}
    figures["iteration"] = iteration
    if "error" in figures["gpu"]:
        iteration["error"] = figures["gpu"]["error"]
    elif "iteration" not in skip:
        data: dict = {}

        def prepare() -> dict:
            require_gpu_memory(rows * dim * 4 * 2.5 + k * 32_768 * 4, f"part 1 ({rows} x {dim}, k={k})")
            begun = time.perf_counter()
            data["points"] = gpu_points(rows, dim, 2 * k)
            data["centroids"] = initial_centroids(data["points"], k)
            return {"generate_seconds": round(time.perf_counter() - begun, 2)}

        iteration["data"] = budget.run("part 1 data", 10, prepare)
        if "points" in data:
            points, centroids = data["points"], data["centroids"]
            flops = iteration["flops_per_iteration"]
            iteration["ours_cupy_memory"] = with_rate(budget.run("ours_cupy_memory", 15,
                                                                 lambda: ours_memory(points, centroids)), flops)
            budget.save()
            if args.gpu_chunk_rows:
                name = f"ours_cupy_memory_chunk{args.gpu_chunk_rows}"
                iteration[name] = with_rate(budget.run(name, 15, lambda: ours_memory(points, centroids,
                                                                                     args.gpu_chunk_rows)), flops)
            if "cuml" not in skip:
                iteration["cuml_memory"] = with_rate(budget.run("cuml_memory", 15,
                                                                lambda: cuml_memory(points, centroids)), flops)
            budget.save()
            if "faiss" not in skip:
                iteration["faiss_gpu"] = with_rate(budget.run("faiss_gpu", 20, lambda: faiss_gpu(points, centroids)),
                                                   flops)
            budget.save()
            del points, data["points"]
            free_gpu_memory()
            if "dask_cuda" not in skip:
                dask_figures = budget.run("dask_cuda", 45, lambda: dask_cuda_parts(rows, dim, 2 * k, centroids,
                                                                                   budget))
                for name in ("ours_dask_cuda", "cuml_dask_cuda"):
                    if name in dask_figures:
                        iteration[name] = with_rate(dask_figures.pop(name), flops)
                iteration["dask_cuda"] = dask_figures
            ours = iteration.get("ours_cupy_memory", {}).get("iteration_seconds")
            for name in ("cuml_memory", "faiss_gpu", "ours_dask_cuda", "cuml_dask_cuda"):
                other = iteration.get(name, {}).get("iteration_seconds")
                if ours and other:
                    iteration[f"time_ratio_ours_vs_{name}"] = round(ours / other, 3)
    budget.save()

    tree_figures: dict = {"rows": tree_rows, "dim": dim, "dtype": "float32", "metric": "cosine",
                          "levels": levels, "max_iter": args.tree_max_iter}
    figures["tree"] = tree_figures
    if not tree_rows or "tree" in skip:
        tree_figures["skipped"] = "--tree-rows 0 or --skip tree"
    elif "error" in figures["gpu"]:
        tree_figures["error"] = figures["gpu"]["error"]
    else:
        data = {}

        def prepare_tree() -> dict:
            # the points, their normalised copy, resampled and gathered rows
            require_gpu_memory(tree_rows * dim * 4 * 3.2, f"the tree ({tree_rows} x {dim})")
            begun = time.perf_counter()
            data["points"] = gpu_points(tree_rows, dim, 2 * levels[0])  # levels[0] is level 1's k
            return {"generate_seconds": round(time.perf_counter() - begun, 2)}

        tree_figures["data"] = budget.run("tree data", 20, prepare_tree)
        if "points" in data:
            for name, engine in (("ours_cupy", "dask"), ("cuml", "cuml")):
                if name == "cuml" and "tree_cuml" in skip:
                    continue
                tree_figures[name] = budget.run(f"tree {name}", 20 if args.quick else 90, lambda engine=engine: tree(
                    data["points"], levels, engine, args.tree_max_iter, args.auto_split_from))
                budget.save()
            del data["points"]
            free_gpu_memory()
            ours, other = tree_figures.get("ours_cupy", {}).get("seconds"), tree_figures.get("cuml", {}).get("seconds")
            if ours and other:
                tree_figures["time_ratio_ours_vs_cuml"] = round(ours / other, 3)
    figures["seconds_total"] = round(time.perf_counter() - started, 1)
    budget.save()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
