"""Flow ``curate``: turn a filtered pool into a curated subset. Step 1: the cluster tree.

    python -m flows.curate --store ./store --pool-name web --levels '[1000, {"k": 100, "resampling_steps": 10}]'

Hierarchical k-means with resampling (tasks/cluster) over the image embeddings that the filters
kept, streamed from the store to Dask workers (cuML on Dask-CUDA where GPUs are, plain Dask on
CPUs). The tree goes to ``<store>/clusters/<pool>/<key>/``; artifacts show the cluster-size
distribution per level.
"""

from __future__ import annotations

import argparse
import json

from prefect import flow, task

from tasks.cluster.run import ClusterConfig
from tasks.cluster.task import cluster_pool_task, cluster_report_task
from tasks.common.errors import InputError
from tasks.common.prefect_support import cached_in_store, store_from


@task(name="read_filters_manifest")
def read_filters_manifest(store: str, pool_name: str, storage_options: dict | None = None) -> str:
    """The content hash of the pool's latest filters manifest (the clustering's input)."""
    the_store = store_from(store, storage_options)
    pointer = f"pools/{pool_name}/filters.json"
    if not the_store.exists(pointer):
        raise InputError(f"pool {pool_name!r}: {the_store.uri(pointer)} does not exist; run pool_refresh with an "
                         f"embedder first")
    return the_store.read_json(the_store.relative(the_store.read_json(pointer)["filters"]))["content_hash"]


@flow(name="curate", log_prints=True)
def curate(store: str, pool_name: str, clustering: dict | None = None, dask_address: str = "",
           storage_options: dict | None = None) -> dict:
    """Cluster the pool's filtered embeddings into a hierarchical k-means tree.

    Args:
        store: store root (local folder or s3://bucket/prefix).
        pool_name: a pool that pool_refresh downloaded, embedded and filtered.
        clustering: settings of tasks/cluster/run.py ClusterConfig: {"levels": [1000, {"k": 100,
            "resampling_steps": 10, "points_per_cluster": 0, "resampling": "closest"}, ...],
            "metric": "cosine" or "l2", "engine": "auto", "dask" or "cuml", "max_iter": 50, "seed": 0}.
        dask_address: Dask scheduler address; empty: a local cluster (Dask-CUDA on GPUs).
        storage_options: fsspec options for an s3:// store.
    """
    config = ClusterConfig.from_dict(clustering).to_dict()
    filters_hash = read_filters_manifest(store, pool_name, storage_options)
    fit = cached_in_store(cluster_pool_task, store_from(store, storage_options))
    tree = fit(store, pool_name, filters_hash, config, dask_address, storage_options)
    cluster_report_task(tree)
    return {"tree": tree}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Cluster a filtered pool (hierarchical k-means with resampling).")
    parser.add_argument("--store", required=True)
    parser.add_argument("--pool-name", required=True)
    parser.add_argument("--levels", default="", help='JSON list, e.g. [1000, {"k": 100, "resampling_steps": 10}]')
    parser.add_argument("--metric", default="cosine")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--dask-address", default="")
    args = parser.parse_args(argv)
    clustering = {"metric": args.metric, "engine": args.engine}
    if args.levels:
        clustering["levels"] = json.loads(args.levels)
    out = curate(store=args.store, pool_name=args.pool_name, clustering=clustering, dask_address=args.dask_address)
    print(json.dumps(out["tree"]["levels"], indent=2))


if __name__ == "__main__":
    main()
