"""The GPU engine of :class:`~tasks.cluster.kmeans.KMeans`: cuML's k-means.

In:  points as a Dask array (its blocks are moved to cupy; one Dask-CUDA worker per GPU, from
     ``client`` or the default client) or an in-memory numpy/cupy array (single-GPU
     ``cuml.cluster.KMeans``); ``k``, an optional ``k x d`` init, ``max_iter``, ``tol``, ``seed``.
Out: the centroids (numpy float32) and the number of iterations cuML ran. Labels and distances
     are computed afterwards by the caller with the same assignment code as the CPU engine, so
     both engines report them identically.

cuML seeds with its scalable k-means++ (k-means||) when no init is given. Only runs where cuML and
a GPU exist; its tests are marked ``gpu``. Not run on the machines this project was built on.
"""

from __future__ import annotations

import numpy as np

from tasks.cluster.lloyd import to_host


def fit_cuml(points, k: int, init: np.ndarray | None, max_iter: int, tol: float, seed: int,
             client=None) -> tuple[np.ndarray, int]:
    import cupy

    from tasks.cluster.kmeans import is_dask_array

    init_arg = "scalable-k-means++" if init is None else cupy.asarray(init, dtype=cupy.float32)
    common = dict(n_clusters=k, init=init_arg, max_iter=max_iter, tol=tol, random_state=seed)
    if is_dask_array(points):
        from cuml.dask.cluster import KMeans as DaskKMeans

        blocks = points.rechunk({1: -1}).map_blocks(cupy.asarray, dtype=np.float32).astype(np.float32)
        model = DaskKMeans(client=client, **common)
        model.fit(blocks)
    else:
        from cuml.cluster import KMeans as SingleKMeans

        model = SingleKMeans(**common)
        model.fit(cupy.asarray(points, dtype=cupy.float32))
    centroids = np.asarray(to_host(model.cluster_centers_), dtype=np.float32)
    return centroids, int(getattr(model, "n_iter_", max_iter) or max_iter)
