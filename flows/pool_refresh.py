"""Flow ``pool_refresh``: download a pool index into webdataset shards in the store.

    python -m flows.pool_refresh --pool-index pool.parquet --store ./store --pool-name mypool

Run it again at any time: finished slices are cache hits (``Cached``), an interrupted slice
resumes from its finished shards, and only new or changed slices download.

With an embedder, filters, clustering and subsets it refreshes everything downstream too, doing
only the new work: new shards are embedded and row-filtered, the pool-wide filters weigh the new
samples against the old ones, the new samples are assigned to the pool's existing cluster tree
(with its drift per level; past the thresholds the run re-clusters or says that it should:
``tree_update``), and the subsets are drawn again from the updated tree (the ``curate`` flow, run
as a subflow). The ``pool-refresh`` deployment's nightly schedule runs exactly this.

On several machines: start a Dask scheduler and, on each download machine, workers with one
thread per slice to run there at once (``dask worker tcp://scheduler:8786 --nthreads 4``); then

    python -m flows.pool_refresh --pool-index s3://bucket/pool --store s3://bucket/store \
        --pool-name mypool --dask-address tcp://scheduler:8786

runs each slice's task (cached and retried as on one machine) in a Dask worker, which starts
img2dataset as its child process. The store must be one the workers reach at the same URI: an
object store, or a local folder shared by the machines and mounted at the same path.
"""

from __future__ import annotations

import json

from prefect import flow

from flows.curate import check_curate_settings, curate
from flows.embed_filter import check_embedder_and_filters, run_embed_filter
from tasks.cluster.drift import TreeUpdateConfig
from tasks.cluster.run import ClusterConfig
from tasks.common.cli import CliParser, command_line
from tasks.common.dask_cluster import scheduler_address
from tasks.common.errors import InputError, StageFailed
from tasks.common.leftover_runs import crash_leftover_runs
from tasks.common.prefect_settings import use_project_settings
from tasks.common.prefect_support import cached_in_store, run_bounded, store_from
from tasks.common.store import Store
from tasks.download.pool import check_download_settings
from tasks.download.pool_index import check_index_files
from tasks.download.slices import DownloadConfig
from tasks.download.task import download_slice_task, plan_pool_download_task, publish_pool_task, run_on_dask
from tasks.sample.run import SubsetConfig


@flow(name="pool_refresh", flow_run_name="pool-refresh-{pool_name}", log_prints=True)
def pool_refresh(
    pool_index: str,
    store: str,
    pool_name: str = "pool",
    slice_size: int = 100_000,
    shard_size: int = 10_000,
    processes: int = 2,
    processes_per_slice: int = 1,
    threads: int = 64,
    image_size: int = 512,
    resize_mode: str = "keep_ratio",
    timeout: int = 10,
    retries: int = 0,
    embedder: dict | None = None,
    filters: dict | None = None,
    clustering: dict | None = None,
    subsets: dict | None = None,
    tree_update: dict | None = None,
    dask_address: str = "",
    storage_options: dict | None = None,
    download_on_dask: bool = True,
) -> dict:
    """Download the pool index into webdataset shards under the store.

    Args:
        pool_index: parquet file or folder of parquet files (local path or s3://) with uid, url, text.
        store: root of the store: a local folder or s3://bucket/prefix.
        pool_name: the pool's folder name under ``<store>/pools/``.
        slice_size: rows per slice; each slice is one retried, cached task.
        shard_size: samples per webdataset shard.
        processes: img2dataset processes in all when the slices download in this flow's process
            (no Dask address): ``processes // processes_per_slice`` slices download at once, so one
            slice's start-up and tail overlap another's downloads. On Dask it is not used: each
            worker thread downloads one slice at a time.
        processes_per_slice: img2dataset processes of one slice.
        threads: img2dataset threads per process.
        image_size: img2dataset image size (with ``resize_mode``; only shrinks, as DataComp).
        resize_mode: img2dataset resize mode.
        timeout: seconds before a request is abandoned.
        retries: img2dataset retries per URL.
        embedder: when set, embed and filter after the download (flows/embed_filter.py):
            {"model": open_clip architecture, "checkpoint": pretrained tag or checkpoint file, ...}.
        filters: filter settings (tasks/filters/config.py); used with ``embedder``.
        clustering: when set (with ``embedder``), the cluster tree after the filters (flows/curate.py,
            tasks/cluster/run.py ClusterConfig): assigned to the pool's tree made with these settings
            for an earlier snapshot, or fitted when there is none.
        subsets: name -> recipe (as flows/curate.py): the subsets drawn again after the refresh.
        tree_update: how the tree follows the grown pool (tasks/cluster/drift.py TreeUpdateConfig:
            "mode" assign or fit, "quantile", "max_far_share", "max_entropy_change", "on_drift"
            warn or recluster).
        dask_address: Dask scheduler (or Dask's ``scheduler-address`` setting, e.g. the
            ``DASK_SCHEDULER_ADDRESS`` variable) for the download (see ``download_on_dask``) and for
            embedding and filtering. Empty: slices download in this flow's process, and embedding
            runs on a local cluster.
        storage_options: fsspec options for an s3:// store and index (endpoint, region; no secrets:
            credentials come from the environment or a Prefect Secret block named by "credentials_block").
        download_on_dask: with a Dask address, each slice's task runs on the Dask workers (one
            slice per worker thread, img2dataset a child process of the worker); false keeps the
            downloads in this flow's process and uses the cluster for embedding only.
    Returns:
        The pool manifest (also at ``<store>/pools/<pool_name>/manifest.json``); with an embedder,
        plus ``embeddings`` and ``filters``: the manifests of those stages; with clustering or
        subsets, plus ``curated``: what flows/curate.py returns (``tree``, ``assigned``, ``subsets``).
    """
    # settings checked whole before anything downloads
    crash_leftover_runs()  # a retried run: what its killed process left Running ends Crashed
    the_store = store_from(store, storage_options)  # first: a secret in the options is refused and scrubbed
    if (clustering is not None or subsets) and not embedder:
        raise InputError("clustering and subsets: pool_refresh makes them after embedding and filtering; give an "
                         "embedder too (or run the curate flow on an embedded pool)")
    if clustering is not None:
        ClusterConfig.from_dict(clustering)
    for recipe in (subsets or {}).values():
        SubsetConfig.from_dict(recipe)
    TreeUpdateConfig.from_dict(tree_update)
    config = dict(image_size=image_size, resize_mode=resize_mode, timeout=timeout, retries=retries,
                  shard_size=shard_size, processes=processes_per_slice, threads=threads)
    plans = plan_pool_download_task(the_store, pool_index, pool_name, slice_size, config)
    download = cached_in_store(download_slice_task, the_store)
    calls = [(the_store, plan, config) for plan in plans]
    address = scheduler_address(dask_address) if download_on_dask else None
    if address:
        states = run_on_dask(download, calls, address)
    else:
        states = run_bounded(download, calls, limit=max(1, processes // max(1, processes_per_slice)))
    failed = [plan["index"] for plan, state in zip(plans, states) if not state.is_completed()]
    if failed:
        raise StageFailed(f"pool {pool_name!r}: slices {failed} failed after retries; finished slices are kept, "
                          "run the flow again to resume")
    results = [state.result() for state in states]
    manifest = publish_pool_task(the_store, pool_index, pool_name, plans, results, config)
    if not embedder:
        return manifest
    stages = run_embed_filter(store, pool_name, embedder, filters, dask_address, storage_options)
    if clustering is None and not subsets:
        return {**manifest, **stages}
    curated = curate(store=store, pool_name=pool_name, clustering=clustering, subsets=subsets,
                     cluster=clustering is not None, tree_update=tree_update, dask_address=dask_address,
                     storage_options=storage_options)
    return {**manifest, **stages, "curated": curated}


def check_pool_refresh(store: Store, pool_index: str, pool_name: str, slice_size: int | None = None,
                       download: DownloadConfig | None = None, embedder: dict | None = None,
                       filters: dict | None = None, clustering: dict | None = None, subsets: dict | None = None,
                       tree_update: dict | None = None) -> None:
    """What ``main`` checks before Prefect or Dask start, with the checks the flow's tasks run: the
    download settings (``None``: the flow's defaults), the index's files and columns (footers only;
    the rows are checked by the download's plan), the embedder and filters, the curate settings, and
    last that the store takes writes. An :class:`~tasks.common.errors.InputError` names the file,
    column or parameter."""
    check_download_settings(pool_name, 1 if slice_size is None else slice_size, download or DownloadConfig())
    check_index_files(pool_index, store.fsspec_options())
    if (clustering is not None or subsets) and not embedder:
        raise InputError("clustering and subsets: pool_refresh makes them after embedding and filtering; give an "
                         "embedder too (or run the curate flow on an embedded pool)")
    if embedder:
        check_embedder_and_filters(store, embedder, filters)
    check_curate_settings(clustering, subsets, clustering is not None, tree_update)
    store.check_writable()


@command_line
def main(argv: list[str] | None = None) -> None:
    use_project_settings()  # prefect.toml, also when started from another folder
    parser = CliParser(prog="python -m flows.pool_refresh", description=pool_refresh.description)
    parser.add_argument("--pool-index", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--pool-name", default="pool")
    parser.add_argument("--slice-size", type=int, default=100_000)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--processes-per-slice", type=int, default=1)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--timeout", type=int, default=10)
    parser.add_argument("--dask-address", default="",
                        help="Dask scheduler whose workers download the slices (one per worker thread)")
    parser.add_argument("--no-download-on-dask", dest="download_on_dask", action="store_false",
                        help="download in this process even with a Dask address")
    parser.add_argument("--embedder", default="", help='JSON, e.g. {"model": "ViT-L-14", "checkpoint": "openai"}')
    parser.add_argument("--filters", default="", help="JSON object of filter settings (with --embedder)")
    parser.add_argument("--clustering", default="", help='JSON cluster settings, e.g. {"levels": [1000, 100]}')
    parser.add_argument("--subset", action="append", default=[], metavar="NAME=RECIPE",
                        help='a subset drawn after the refresh, e.g. balanced=[{"step": "hkmeans", "target": 1000}]')
    parser.add_argument("--tree-update", default="", help='JSON, e.g. {"on_drift": "recluster"}')
    args = parser.parse_args(argv)
    from tasks.common.options import json_option, parse_overrides

    downstream = {name: json_option(f"--{name.replace('_', '-')}", getattr(args, name))
                  for name in ("embedder", "filters", "clustering", "tree_update") if getattr(args, name)}
    if args.subset:
        downstream["subsets"] = parse_overrides(args.subset, "--subset")
    download = DownloadConfig(image_size=args.image_size, timeout=args.timeout, shard_size=args.shard_size,
                              processes=args.processes_per_slice, threads=args.threads)
    check_pool_refresh(Store(args.store), args.pool_index, args.pool_name, args.slice_size, download, **downstream)
    manifest = pool_refresh(pool_index=args.pool_index, store=args.store, pool_name=args.pool_name,
                            slice_size=args.slice_size, shard_size=args.shard_size, processes=args.processes,
                            processes_per_slice=args.processes_per_slice, threads=args.threads,
                            image_size=args.image_size, timeout=args.timeout, dask_address=args.dask_address,
                            download_on_dask=args.download_on_dask, **downstream)
    print(json.dumps({"pool": manifest["outputs"]["folder"], "rows": manifest["rows"]}, indent=2))


if __name__ == "__main__":
    main()
