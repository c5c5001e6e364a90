"""Prefect tasks of the download stage: thin wrappers over :mod:`tasks.download`.

- ``plan_pool_download_task``: checks the parameters, the store and the index; stores each
  slice's rows; returns the slice plans (dicts). Fails before any download.
- ``download_slice_task``: one slice with img2dataset (cached by the slice key, retried).
- ``publish_pool_task``: the pool manifest and report in the store, and the artifacts.
- :func:`run_on_dask`: the flow's way to run the slice tasks on a Dask cluster's workers.
"""

from __future__ import annotations

import os
import socket

from prefect import Task, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.common.catalog import Catalog
from tasks.common.dask_cluster import dask_task_runner
from tasks.common.prefect_support import RETRY_DELAYS, artifact_key, retry_unless_input_error, validated_cache_key
from tasks.common.progress import progress_while
from tasks.common.store import Store
from tasks.download.pool import plan_pool_download, publish_pool
from tasks.download.pool_index import SlicePlan
from tasks.download.slices import DownloadConfig, download_slice, slice_folder, slice_key, staging_dir


def _slice_cache_key(context, parameters) -> str:
    plan, config = SlicePlan(**parameters["plan"]), DownloadConfig(**parameters["config"])
    catalog = Catalog(parameters["store"])
    return validated_cache_key(catalog, f"download-{plan.pool}-{plan.index:05d}-{slice_key(plan, config)}",
                               slice_folder(catalog, plan, config))


@task(name="plan_pool_download", retries=2, retry_delay_seconds=RETRY_DELAYS[:2],
      retry_condition_fn=retry_unless_input_error)
def plan_pool_download_task(store: Store, pool_index: str, pool_name: str, slice_size: int, config: dict) -> list[dict]:
    plans = plan_pool_download(Catalog(store), pool_index, pool_name, slice_size, DownloadConfig(**config))
    get_run_logger().info("pool %r: %d rows in %d slices of up to %d", pool_name, sum(p.n_rows for p in plans),
                          len(plans), slice_size)
    return [plan.to_dict() for plan in plans]


@task(name="download_slice", retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_unless_input_error, cache_key_fn=_slice_cache_key,
      task_run_name="download_slice {plan[pool]} slice {plan[index]}")
def download_slice_task(store: Store, plan: dict, config: dict) -> dict:
    logger = get_run_logger()
    catalog, the_plan, the_config = Catalog(store), SlicePlan(**plan), DownloadConfig(**config)
    shards = staging_dir(catalog, the_plan, the_config) / "shards"
    expected = max(1, -(-the_plan.n_rows // the_config.shard_size))

    def finished_shards() -> float:  # img2dataset writes a shard's _stats.json once the shard is done
        return len(list(shards.glob("*_stats.json"))) / expected if shards.is_dir() else 0.0

    with progress_while(f"pool {the_plan.pool}: slice {the_plan.index}, shards downloaded", finished_shards) as bar:
        manifest = download_slice(catalog, the_plan, the_config, log=logger.info)
        bar.update(1.0)
    logger.info("slice %d: %s in %.1f s (on %s, process %d)", plan["index"], manifest["stats"]["status_counts"],
                manifest["stats"]["seconds"], socket.gethostname(), os.getpid())
    return manifest


def run_on_dask(task: Task, calls: list[tuple], address: str) -> list:
    """Run ``task`` once per argument tuple on the Dask cluster at ``address``; return the final states
    in the order of ``calls`` (failures are returned, not raised), as :func:`run_bounded` does in threads.

    Called inside a flow run: the task runs belong to it, exactly as with ``task.submit``, and keep
    their caching and retries; only where they execute changes. Every call is submitted at once and
    the scheduler hands each to a free worker thread, so a worker started with ``--nthreads N``
    downloads N slices at a time, and workers that join later take their share. The arguments are
    pickled to the worker: a Store carries its fsspec options and resolved credentials with it.
    """
    from prefect.states import Failed
    from prefect.utilities.callables import get_call_parameters

    with dask_task_runner(address) as runner:
        futures = [runner.submit(task, get_call_parameters(task.fn, args, {})) for args in calls]
        states = []
        for future in futures:
            future.wait()
            dask_future = future.wrapped_future
            if dask_future.status == "error":  # lost with its workers (KilledWorker), so it has no final state
                states.append(Failed(message=f"task run {future.task_run_id} on Dask at {address}: "
                                             f"{dask_future.exception()!r}"))
            else:
                states.append(future.state)
        return states


@task(name="publish_pool_manifest", retries=2, retry_delay_seconds=RETRY_DELAYS[:2],
      retry_condition_fn=retry_unless_input_error)
def publish_pool_task(store: Store, pool_index: str, pool_name: str, plans: list[dict], slices: list[dict],
                      config: dict) -> dict:
    manifest, summary = publish_pool(Catalog(store), pool_index, pool_name, [SlicePlan(**p) for p in plans], slices,
                                     DownloadConfig(**config))
    create_table_artifact(
        key=artifact_key(store, pool_name, "download"), table=summary["table"],
        description=f"Download of pool `{pool_name}`: {summary['n_rows']} samples, by status and reason.")
    create_markdown_artifact(
        key=artifact_key(store, pool_name, "pool"),
        markdown=f"# Pool `{pool_name}`\n\n- manifest: `{store.uri(Catalog(store).pool_manifest(pool_name))}`\n"
                 f"- shards: {len(manifest['outputs']['shards'])} in {len(slices)} slices\n"
                 f"- samples: {summary['status_counts']}\n")
    return manifest
