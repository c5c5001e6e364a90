"""Flow ``pipeline``: the whole DAG on one pool: pool_refresh, curate, then train_eval per subset.

    python -m flows.pipeline --pool-index s3://bucket/index/ --store s3://bucket/curation \
        --embedder '{"model": "ViT-B-32", "checkpoint": "openai"}' --tasklist eval/tasklist.yml \
        --subset 'balanced=[{"step": "hkmeans", "target": 1000000}]'

Every stage is a cached task keyed by its inputs' content hashes, so a rerun (after a crash, a
preemption or a pool refresh that changed nothing) skips what is finished and redoes the rest.
"""

from __future__ import annotations

import argparse
import json

from prefect import flow

from flows.curate import curate
from flows.pool_refresh import pool_refresh
from flows.train_eval import train_eval
from tasks.common.catalog import run_name
from tasks.common.errors import InputError
from tasks.common.prefect_settings import use_project_settings
from tasks.sample.run import SubsetConfig


@flow(name="pipeline", log_prints=True)
def pipeline(pool_index: str, store: str, tasklist: str, embedder: dict, subsets: dict, pool_name: str = "pool",
             download: dict | None = None, filters: dict | None = None, clustering: dict | None = None,
             scale: str = "small", train_overrides: dict | None = None, dask_address: str = "",
             storage_options: dict | None = None) -> dict:
    """Download, embed and filter a pool, cluster it, make the subsets, and train and evaluate CLIP on each.

    Args:
        pool_index: parquet file or folder with uid, url, text (local path or s3://).
        store: store root (local folder or s3://bucket/prefix).
        tasklist: evaluation task list (DataComp tasklist.yml format).
        embedder: {"model": open_clip architecture, "checkpoint": pretrained tag or file}.
        subsets: name -> recipe (see the curate flow); each subset is trained and evaluated,
            except those with "reshard": false (made and reported only).
        pool_name: the pool's folder name under <store>/pools/.
        download: other pool_refresh settings (slice_size, shard_size, processes, threads, image_size, ...).
        filters: filter settings (tasks/filters/config.py).
        clustering: hierarchical k-means settings (tasks/cluster/run.py ClusterConfig).
        scale: training scale: tiny, small, medium, large or xlarge.
        train_overrides: training hyperparameters to change (the same for every subset).
        dask_address: Dask scheduler for downloading (each slice's task on a worker; ``download=
            {"download_on_dask": false}`` keeps slices in the flow's process), embedding, filtering,
            clustering and matching.
        storage_options: fsspec options for an s3:// store.
    """
    if not subsets:
        raise InputError("pipeline: subsets is empty; name at least one recipe, e.g. {\"balanced\": "
                         "[{\"step\": \"hkmeans\", \"target\": 100000}]}")
    subsets = {name: SubsetConfig.from_dict(recipe).to_dict() for name, recipe in subsets.items()}  # fail early
    refreshed = pool_refresh(pool_index=pool_index, store=store, pool_name=pool_name, embedder=embedder,
                             filters=filters, dask_address=dask_address, storage_options=storage_options,
                             **(download or {}))
    curated = curate(store=store, pool_name=pool_name, clustering=clustering, subsets=subsets,
                     dask_address=dask_address, storage_options=storage_options)
    results = {name: train_eval(store=store, data=manifest["outputs"]["folder"], tasklist=tasklist, scale=scale,
                                overrides=train_overrides, run_name=run_name(pool_name, name),
                                storage_options=storage_options)
               for name, manifest in curated["subsets"].items() if "shards" in manifest["outputs"]}
    return {"pool": refreshed, "tree": curated["tree"], "subsets": curated["subsets"], "results": results}


def main(argv: list[str] | None = None) -> None:
    use_project_settings()  # prefect.toml, also when started from another folder
    parser = argparse.ArgumentParser(description="pool_refresh, curate, then train_eval on every subset.")
    parser.add_argument("--pool-index", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--pool-name", default="pool")
    parser.add_argument("--tasklist", required=True)
    parser.add_argument("--embedder", required=True, help='JSON, e.g. {"model": "ViT-B-32", "checkpoint": "openai"}')
    parser.add_argument("--subset", action="append", required=True, metavar="NAME=RECIPE")
    parser.add_argument("--scale", default="small")
    parser.add_argument("--dask-address", default="")
    args = parser.parse_args(argv)
    from tasks.common.options import json_option, parse_overrides

    subsets = parse_overrides(args.subset, "--subset")  # NAME=[steps...], NAME={...} or NAME=datacomp:<baseline>
    out = pipeline(pool_index=args.pool_index, store=args.store, tasklist=args.tasklist,
                   embedder=json_option("--embedder", args.embedder), subsets=subsets, pool_name=args.pool_name, scale=args.scale,
                   dask_address=args.dask_address)
    print(json.dumps({name: result["eval"] for name, result in out["results"].items()}, indent=2))


if __name__ == "__main__":
    main()
