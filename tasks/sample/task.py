"""Prefect tasks of the sampling stage: thin wrappers over :mod:`tasks.sample.run`.

``make_subset_task`` runs a recipe on a Dask cluster (the pool table, MetaCLIP's n-gram counts,
matching and balancing, the tree step's distances, the subset's files and resharding: one task per
shard, the driver holding numbers only); it is cached by the snapshot's manifests (pool,
embeddings, filters), the trees' manifests, the subset's config and the code version, and a retry
redoes only the shards not yet written. ``subset_report_task`` publishes the indicators before and after every step as artifacts.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.common.catalog import Catalog, PoolSnapshot
from tasks.common.dask_cluster import dask_client
from tasks.common.plots import png_markdown
from tasks.common.prefect_support import RETRY_DELAYS, artifact_key, retry_unless_input_error, validated_cache_key
from tasks.common.store import Store
from tasks.sample.run import SubsetConfig, make_subset, subset_folder

REPORTED = ("label_set_size", "normalised_entropy", "ls5", "lt100", "lt500")


def _step_details(figure: dict) -> str:
    """What a step's line adds: MetaCLIP's t, a DataComp baseline's CLIP cutoff and target clusters."""
    details = ""
    if "t" in figure:
        details += f", t = {figure['t']:.1f}, expected {figure['expected_size']:.0f}"
    clip = figure.get("clip")
    if clip and clip.get("cutoff") is not None:
        details += f", {clip['column']} >= {clip['cutoff']:.4f}"
    if "image" in figure:
        details += f", {figure['image']['target_clusters']} of {figure['image']['k']} clusters hold a target"
    if "basic_settings" in figure and not figure.get("datacomp_settings", True):
        details += f", basic settings {figure['basic_settings']} (not DataComp's)"
    return details


def _subset_cache_key(context, parameters) -> str:
    catalog = Catalog(parameters["store"])
    folder = subset_folder(catalog, PoolSnapshot.from_dict(parameters["snapshot"]), parameters["name"],
                           SubsetConfig.from_dict(parameters["config"]), parameters["trees"])
    return validated_cache_key(catalog, "subset-" + folder.replace("/", "-"), folder)


@task(name="make_subset", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error,
      cache_key_fn=_subset_cache_key, task_run_name="make_subset {name}")
def make_subset_task(store: Store, snapshot: dict, name: str, config: dict, trees: dict, dask_address: str = "") -> dict:
    with dask_client(dask_address or None, gpu=False) as client:
        manifest = make_subset(Catalog(store), PoolSnapshot.from_dict(snapshot), name, SubsetConfig.from_dict(config),
                               trees, client=client)
    logger = get_run_logger()
    logger.info("subset %s: %d of %d samples", manifest["name"], manifest["rows"]["subset"], manifest["rows"]["pool"])
    if manifest["stats"].get("reshard"):
        logger.warning("subset %s: resharding %s", manifest["name"], manifest["stats"]["reshard"])
    return manifest


@task(name="subset_report", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error,
      task_run_name="subset_report {manifest[name]}")
def subset_report_task(store: Store, manifest: dict) -> list[dict]:
    """One row per step and grouping (tree level, metadata entries) with the main indicators."""
    report = store.read_json(store.relative(manifest["outputs"]["indicators"]))
    rows = [{"after": stage["after"], "samples": stage["samples"], "over": over,
             **{name: values.get(name) for name in REPORTED}}
            for stage in report["stages"] for over, values in stage.items() if isinstance(values, dict)]
    pool, name = manifest["name"].split("/", 1)
    create_table_artifact(key=artifact_key(store, pool, "subset", name, "indicators"), table=rows,
                          description=f"Dataset-scale indicators of subset `{manifest['name']}` after each step.")
    steps = "\n".join(f"- {figure['step']}: {figure['size']} samples{_step_details(figure)}" for figure in report["steps"])
    plots = "".join(f"\n\n{png_markdown(store.read_bytes(store.relative(manifest['outputs'][output])), title)}"
                    for output, title in (("cluster_sizes_plot", "samples per cluster"),
                                          ("entry_counts_plot", "samples per metadata entry"))
                    if output in manifest["outputs"])
    create_markdown_artifact(key=artifact_key(store, pool, "subset", name), markdown=(
        f"# Subset `{manifest['name']}`\n\n{manifest['rows']['subset']} of {manifest['rows']['pool']} samples\n\n"
        f"{steps}\n\n- parquet: `{manifest['outputs']['parquet']}`\n- DataComp uids: `{manifest['outputs']['datacomp']}`"
        f"\n- indicators: `{manifest['outputs']['indicators']}`{plots}\n"))
    return rows
