"""Flow ``pool_refresh``: download a pool index into webdataset shards in the store.

    python -m flows.pool_refresh --pool-index pool.parquet --store ./store --pool-name mypool

Run it again at any time: finished slices are cache hits (``Cached``), an interrupted slice
resumes from its finished shards, and only new or changed slices download.

On several machines: start a Dask scheduler and, on each download machine, workers with one
thread per slice to run there at once (``dask worker tcp://scheduler:8786 --nthreads 4``); then

    python -m flows.pool_refresh --pool-index s3://bucket/pool --store s3://bucket/store \
        --pool-name mypool --dask-address tcp://scheduler:8786

runs each slice's task (cached and retried as on one machine) in a Dask worker, which starts
img2dataset as its child process. The store must be one the workers reach at the same URI: an
object store, or a local folder shared by the machines and mounted at the same path.
"""

from __future__ import annotations

import argparse
import json

from prefect import flow

from flows.embed_filter import run_embed_filter
from tasks.common.dask_cluster import scheduler_address
from tasks.common.errors import StageFailed
from tasks.common.prefect_settings import use_project_settings
from tasks.common.prefect_support import cached_in_store, run_bounded, store_from
from tasks.download.task import download_slice_task, plan_pool_download_task, publish_pool_task, run_on_dask


@flow(name="pool_refresh", log_prints=True)
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
        plus ``embeddings`` and ``filters``: the manifests of those stages.
    """
    config = dict(image_size=image_size, resize_mode=resize_mode, timeout=timeout, retries=retries,
                  shard_size=shard_size, processes=processes_per_slice, threads=threads)
    the_store = store_from(store, storage_options)
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
    return {**manifest, **stages}


def main(argv: list[str] | None = None) -> None:
    use_project_settings()  # prefect.toml, also when started from another folder
    parser = argparse.ArgumentParser(description=pool_refresh.description)
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
    args = parser.parse_args(argv)
    manifest = pool_refresh(pool_index=args.pool_index, store=args.store, pool_name=args.pool_name,
                            slice_size=args.slice_size, shard_size=args.shard_size, processes=args.processes,
                            processes_per_slice=args.processes_per_slice, threads=args.threads,
                            image_size=args.image_size, timeout=args.timeout, dask_address=args.dask_address,
                            download_on_dask=args.download_on_dask)
    print(json.dumps({"pool": manifest["outputs"]["folder"], "rows": manifest["rows"]}, indent=2))


if __name__ == "__main__":
    main()
