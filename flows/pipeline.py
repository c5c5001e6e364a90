"""Flow ``pipeline``: the whole DAG on one pool: pool_refresh, curate, then train_eval per subset.

    python -m flows.pipeline --pool-index s3://bucket/index/ --store s3://bucket/curation \
        --embedder '{"model": "ViT-B-32", "checkpoint": "openai"}' --tasklist eval/tasklist.yml \
        --subset 'balanced=[{"step": "hkmeans", "target": 1000000}]'

Every stage is a cached task keyed by its inputs' content hashes, so a rerun (after a crash, a
preemption or a pool refresh that changed nothing) skips what is finished and redoes the rest.
"""

from __future__ import annotations

import json

from prefect import flow

from flows.curate import check_curate_settings, curate
from flows.pool_refresh import check_pool_refresh, pool_refresh
from flows.train_eval import check_training_settings, train_eval
from tasks.common.catalog import run_name
from tasks.common.cli import CliParser, command_line
from tasks.common.errors import InputError
from tasks.common.leftover_runs import crash_leftover_runs
from tasks.common.prefect_settings import use_project_settings
from tasks.common.prefect_support import untracked
from tasks.common.secrets import refuse_secret_options
from tasks.common.store import Store
from tasks.sample.run import SubsetConfig


@flow(name="pipeline", log_prints=True, flow_run_name="pipeline-{pool_name}")
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
    crash_leftover_runs()  # a retried run: what its killed process left Running ends Crashed
    refuse_secret_options(storage_options)  # first: a secret in the options is refused and scrubbed
    if not subsets:
        raise InputError("pipeline: subsets is empty; name at least one recipe, e.g. {\"balanced\": "
                         "[{\"step\": \"hkmeans\", \"target\": 100000}]}")
    subsets = {name: SubsetConfig.from_dict(recipe).to_dict() for name, recipe in subsets.items()}  # fail early
    # untracked: so that the run's Task Runs tab in the UI lists its runs (see tasks/common/prefect_support.py)
    refreshed = untracked(pool_refresh.with_options(flow_run_name=f"pool-refresh-{pool_name}")(
        pool_index=pool_index, store=store, pool_name=pool_name, embedder=embedder, filters=filters,
        dask_address=dask_address, storage_options=storage_options, **(download or {})))
    curated = untracked(curate.with_options(flow_run_name=f"curate-{pool_name}")(
        store=store, pool_name=pool_name, clustering=clustering, subsets=subsets, dask_address=dask_address,
        storage_options=storage_options))
    results = {name: untracked(train_eval(store=store, data=manifest["outputs"]["folder"], tasklist=tasklist,
                                          scale=scale, overrides=train_overrides, run_name=run_name(pool_name, name),
                                          storage_options=storage_options))
               for name, manifest in curated["subsets"].items() if "shards" in manifest["outputs"]}
    return {"pool": refreshed, "tree": curated["tree"], "subsets": curated["subsets"], "results": results}


@command_line
def main(argv: list[str] | None = None) -> None:
    use_project_settings()  # prefect.toml, also when started from another folder
    parser = CliParser(prog="python -m flows.pipeline",
                       description="pool_refresh, curate, then train_eval on every subset.")
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
    embedder = json_option("--embedder", args.embedder)
    store = Store(args.store)  # the checks each stage's flow runs first, all before Prefect starts
    check_curate_settings(None, subsets)
    check_training_settings(store, args.tasklist, args.scale, None, run_name(args.pool_name))
    check_pool_refresh(store, args.pool_index, args.pool_name, embedder=embedder)
    out = pipeline(pool_index=args.pool_index, store=args.store, tasklist=args.tasklist, embedder=embedder,
                   subsets=subsets, pool_name=args.pool_name, scale=args.scale, dask_address=args.dask_address)
    print(json.dumps({name: result["eval"] for name, result in out["results"].items()}, indent=2))


if __name__ == "__main__":
    main()
