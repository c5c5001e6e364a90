"""Prefect tasks of the clustering stage: thin wrappers over :mod:`tasks.cluster.run`.

``cluster_pool_task`` computes on a Dask cluster (``dask_address``, Dask's configured scheduler,
or a local cluster: Dask-CUDA when GPUs are present); it is cached by the filters manifest and
the configuration, and a retry after a crash resumes from the levels and steps already in the
store. ``cluster_report_task`` publishes the cluster-size distribution per level.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.cluster.run import CLUSTER_VERSION, ClusterConfig, cluster_pool
from tasks.common.dask_cluster import dask_client
from tasks.common.hashing import hash_json
from tasks.common.prefect_support import RETRY_DELAYS, retry_unless_input_error, store_from


def _cluster_cache_key(context, parameters) -> str:
    return "cluster-" + hash_json({"store": parameters["store"], "pool": parameters["pool_name"],
                                   "filters": parameters["filters_manifest_hash"], "config": parameters["config"],
                                   "version": CLUSTER_VERSION})


@task(name="cluster_pool", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error,
      cache_key_fn=_cluster_cache_key)
def cluster_pool_task(store: str, pool_name: str, filters_manifest_hash: str, config: dict, dask_address: str = "",
                      storage_options: dict | None = None) -> dict:
    logger = get_run_logger()
    clustering = ClusterConfig.from_dict(config)

    def on_step(level: int, step: int, steps: int) -> None:
        logger.info("level %d: %s done", level, "k-means" if step == 0 else f"resampling step {step}/{steps}")

    with dask_client(dask_address or None) as client:
        return cluster_pool(store_from(store, storage_options), pool_name, clustering, client=client, on_step=on_step)


@task(name="cluster_report")
def cluster_report_task(summary: dict) -> dict:
    rows = [{"level": level["level"], "k": level["k"], "inputs": level["inputs"],
             **{f"samples_{name}": value for name, value in level["samples_per_cluster"].items()
                if name in ("min", "median", "mean", "max", "empty")}}
            for level in summary["levels"]]
    slug = summary["pool"].replace("_", "-")
    create_table_artifact(key=f"{slug}-cluster-sizes", table=rows,
                          description=f"Samples per cluster at each level of the tree of pool `{summary['pool']}`.")
    create_markdown_artifact(key=f"{slug}-cluster-tree", markdown=(
        f"# Cluster tree of `{summary['pool']}`\n\n{summary['samples']} samples, levels "
        + " / ".join(str(level["k"]) for level in summary["levels"])
        + f"\n\n- tree: `{summary['folder']}`\n- plot: `{summary['folder']}/cluster_sizes.png`\n"))
    get_run_logger().info("cluster tree %s: levels %s", summary["folder"], [level["k"] for level in summary["levels"]])
    return {"rows": rows}
