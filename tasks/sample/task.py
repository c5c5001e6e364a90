"""Prefect tasks of the sampling stage: thin wrappers over :mod:`tasks.sample.run`.

``make_subset_task`` runs a recipe on a Dask cluster (MetaCLIP matching and resharding, one task
per shard); it is cached by the pool's and the filters' manifest hashes, the trees, the subset's
config and the code version, and a retry redoes only the shards not yet written.
``subset_report_task`` publishes the indicators before and after every step as artifacts.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.common.dask_cluster import dask_client
from tasks.common.hashing import hash_json
from tasks.common.prefect_support import RETRY_DELAYS, artifact_key, retry_unless_input_error, store_from
from tasks.sample.run import SUBSET_VERSION, SubsetConfig, make_subset

REPORTED = ("label_set_size", "normalised_entropy", "ls5", "lt100", "lt500")


@task(name="read_pool_state")
def read_pool_state(store: str, pool_name: str, storage_options: dict | None = None) -> dict:
    """Content hashes of the pool's download manifest and (if any) its latest filters manifest."""
    from tasks.common.errors import InputError

    the_store = store_from(store, storage_options)
    pointer = f"pools/{pool_name}/manifest.json"
    if not the_store.exists(pointer):
        raise InputError(f"pool {pool_name!r}: {the_store.uri(pointer)} does not exist; run pool_refresh first")
    state = {"pool": the_store.read_json(pointer)["content_hash"], "filters": None}
    if the_store.exists(f"pools/{pool_name}/filters.json"):
        filters = the_store.read_json(f"pools/{pool_name}/filters.json")["filters"]
        state["filters"] = the_store.read_json(the_store.relative(filters))["content_hash"]
    return state


def _subset_cache_key(context, parameters) -> str:
    return "subset-" + hash_json({key: parameters[key] for key in ("store", "pool_name", "name", "config", "trees",
                                                                     "pool_state")} | {"version": SUBSET_VERSION})


@task(name="make_subset", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error,
      cache_key_fn=_subset_cache_key)
def make_subset_task(store: str, pool_name: str, name: str, config: dict, trees: dict, pool_state: dict,
                     dask_address: str = "", storage_options: dict | None = None) -> dict:
    subset = SubsetConfig.from_dict(config)
    with dask_client(dask_address or None, gpu=False) as client:
        manifest = make_subset(store_from(store, storage_options), pool_name, name, subset, trees, client=client)
    get_run_logger().info("subset %s: %d of %d samples", manifest["name"], manifest["rows"]["subset"],
                          manifest["rows"]["pool"])
    return manifest


@task(name="subset_report")
def subset_report_task(manifest: dict) -> list[dict]:
    """One row per step and grouping (tree level, metadata entries) with the main indicators."""
    the_store = store_from(manifest["store"])
    report = the_store.read_json(the_store.relative(manifest["outputs"]["indicators"]))
    rows = [{"after": stage["after"], "samples": stage["samples"], "over": over,
             **{name: values.get(name) for name in REPORTED}}
            for stage in report["stages"] for over, values in stage.items() if isinstance(values, dict)]
    create_table_artifact(key=artifact_key(manifest["name"], "indicators"), table=rows,
                          description=f"Dataset-scale indicators of subset `{manifest['name']}` after each step.")
    steps = "\n".join(f"- {figure['step']}: {figure['size']} samples"
                      + (f", t = {figure['t']:.1f}, expected {figure['expected_size']:.0f}" if "t" in figure else "")
                      for figure in report["steps"])
    create_markdown_artifact(key=artifact_key(manifest["name"], "subset"), markdown=(
        f"# Subset `{manifest['name']}`\n\n{manifest['rows']['subset']} of {manifest['rows']['pool']} samples\n\n"
        f"{steps}\n\n- parquet: `{manifest['outputs']['parquet']}`\n- DataComp uids: `{manifest['outputs']['datacomp']}`"
        f"\n- indicators: `{manifest['outputs']['indicators']}`\n"))
    return rows
