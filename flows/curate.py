"""Flow ``curate``: turn a pool into curated subsets: the cluster tree, then the sampling recipes.

    python -m flows.curate --store ./store --pool-name web --levels '[1000, {"k": 100, "resampling_steps": 10}]' \
        --subset 'balanced=[{"step": "hkmeans", "target": 100000}]'

Step 1 (tasks/cluster): hierarchical k-means with resampling over the image embeddings that the
filters kept, streamed from the store to Dask workers (cuML on Dask-CUDA where GPUs are, plain
Dask on CPUs), into ``<store>/clusters/<pool>/<key>/``. Step 2 (tasks/sample): each named subset's
recipe (filters, random, MetaCLIP balancing, balanced sampling from the tree, in any order) into
``<store>/subsets/<pool>/<name>-<key>/``: parquet, DataComp's uid file, new shards, indicators.
Artifacts show the cluster sizes per level and the indicators after every step.
"""

from __future__ import annotations

import argparse
import json

from prefect import flow, task

from tasks.cluster.run import ClusterConfig
from tasks.cluster.task import cluster_pool_task, cluster_report_task
from tasks.common.dask_cluster import shared_dask_address
from tasks.common.errors import InputError
from tasks.common.prefect_support import cached_in_store, store_from
from tasks.sample.run import SubsetConfig
from tasks.sample.task import make_subset_task, read_pool_state, subset_report_task


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
def curate(store: str, pool_name: str, clustering: dict | None = None, subsets: dict | None = None,
           cluster: bool = True, dask_address: str = "", storage_options: dict | None = None) -> dict:
    """Cluster the pool's filtered embeddings into a hierarchical k-means tree, then make the subsets.

    Args:
        store: store root (local folder or s3://bucket/prefix).
        pool_name: a pool that pool_refresh downloaded (and, to cluster, embedded and filtered).
        clustering: settings of tasks/cluster/run.py ClusterConfig: {"levels": [1000, {"k": 100,
            "resampling_steps": 10, "points_per_cluster": 0, "resampling": "closest"}, ...],
            "metric": "cosine" or "l2", "engine": "auto", "dask" or "cuml", "max_iter": 50, "seed": 0}.
        subsets: name -> recipe (a list of steps) or tasks/sample/run.py SubsetConfig settings
            ({"recipe": [...], "metadata": "wordnet+pool" or a list's path, "reshard": true,
            "shard_size": 1000, "report_metadata": false}). Steps: {"step": "filters"},
            {"step": "random", "target": N}, {"step": "metaclip", "t" or "tail_share" or "target",
            "matched_only", "online"}, {"step": "hkmeans", "target": N, "mode": "hierarchical" or
            "flat", "selection": "r", "c" or "f"}; the hkmeans step samples from this run's tree.
        cluster: false to skip the tree (recipes without an hkmeans step, e.g. MetaCLIP on a raw pool).
        dask_address: Dask scheduler address; empty: a local cluster (Dask-CUDA on GPUs).
        storage_options: fsspec options for an s3:// store.
    """
    parsed = {name: SubsetConfig.from_dict(recipe).to_dict() for name, recipe in (subsets or {}).items()}
    the_store = store_from(store, storage_options)
    out: dict = {"tree": None, "subsets": {}}
    trees = {}
    with shared_dask_address(dask_address) as address:  # one local cluster for every task of this run
        if cluster:
            config = ClusterConfig.from_dict(clustering).to_dict()
            filters_hash = read_filters_manifest(store, pool_name, storage_options)
            fit = cached_in_store(cluster_pool_task, the_store)
            out["tree"] = fit(store, pool_name, filters_hash, config, address, storage_options)
            cluster_report_task(out["tree"])
            trees["tree"] = the_store.relative(out["tree"]["folder"])
        if parsed:
            state = read_pool_state(store, pool_name, storage_options)
            sample = cached_in_store(make_subset_task, the_store)
            for name, config in parsed.items():
                manifest = sample(store, pool_name, name, config, trees, state, address, storage_options)
                subset_report_task(manifest)
                out["subsets"][name] = manifest
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Cluster a filtered pool (hierarchical k-means with resampling).")
    parser.add_argument("--store", required=True)
    parser.add_argument("--pool-name", required=True)
    parser.add_argument("--levels", default="", help='JSON list, e.g. [1000, {"k": 100, "resampling_steps": 10}]')
    parser.add_argument("--metric", default="cosine")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--subset", action="append", default=[], metavar="NAME=RECIPE",
                        help='a subset: its name = a JSON recipe, e.g. balanced=[{"step": "hkmeans", "target": 1000}]')
    parser.add_argument("--no-cluster", action="store_true", help="skip the tree (recipes without hkmeans)")
    parser.add_argument("--dask-address", default="")
    args = parser.parse_args(argv)
    clustering = {"metric": args.metric, "engine": args.engine}
    if args.levels:
        clustering["levels"] = json.loads(args.levels)
    subsets = {name: json.loads(recipe) for name, _, recipe in (item.partition("=") for item in args.subset)}
    out = curate(store=args.store, pool_name=args.pool_name, clustering=clustering, subsets=subsets,
                 cluster=not args.no_cluster, dask_address=args.dask_address)
    if out["tree"]:
        print(json.dumps(out["tree"]["levels"], indent=2))
    for name, manifest in out["subsets"].items():
        print(f"subset {name}: {manifest['rows']['subset']} samples, {manifest['outputs']['parquet']}")


if __name__ == "__main__":
    main()
