"""Prefect tasks of the clustering stage: thin wrappers over :mod:`tasks.cluster.run`.

``cluster_pool_task`` computes on a Dask cluster (``dask_address``, Dask's configured scheduler,
or a local cluster: Dask-CUDA when GPUs are present); it is cached by the snapshot's manifests
(pool, embeddings, filters) and the configuration, and a retry after a crash resumes from the
levels and steps already in the store. ``cluster_report_task`` publishes the cluster-size
distribution per level.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.cluster.run import ClusterConfig, cluster_pool, tree_folder
from tasks.common.catalog import Catalog, PoolSnapshot
from tasks.common.dask_cluster import dask_client
from tasks.common.prefect_support import RETRY_DELAYS, artifact_key, retry_unless_input_error, validated_cache_key
from tasks.common.store import Store


def _cluster_cache_key(context, parameters) -> str:
    catalog = Catalog(parameters["store"])
    folder = tree_folder(catalog, PoolSnapshot.from_dict(parameters["snapshot"]),
                         ClusterConfig.from_dict(parameters["config"]))
    return validated_cache_key(catalog, "cluster-" + folder.replace("/", "-"), folder)


@task(name="cluster_pool", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error,
      cache_key_fn=_cluster_cache_key)
def cluster_pool_task(store: Store, snapshot: dict, config: dict, dask_address: str = "") -> dict:
    logger = get_run_logger()

    def on_step(level: int, step: int, steps: int) -> None:
        logger.info("level %d: %s done", level, "k-means" if step == 0 else f"resampling step {step}/{steps}")

    clustering = ClusterConfig.from_dict(config)
    # engine "dask" never needs a GPU: a local cluster for it must not probe (or fail on) CUDA
    with dask_client(dask_address or None, gpu=False if clustering.engine == "dask" else None) as client:
        return cluster_pool(Catalog(store), PoolSnapshot.from_dict(snapshot), clustering, client=client,
                            on_step=on_step)


@task(name="cluster_report", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error)
def cluster_report_task(tree: dict) -> dict:
    levels = tree["stats"]["levels"]
    rows = [{"level": level["level"], "k": level["k"], "inputs": level["inputs"],
             **{f"samples_{name}": value for name, value in level["samples_per_cluster"].items()
                if name in ("min", "median", "mean", "max", "empty")}}
            for level in levels]
    pool, folder = tree["name"], tree["outputs"]["folder"]
    create_table_artifact(key=artifact_key(pool, "cluster-sizes"), table=rows,
                          description=f"Samples per cluster at each level of the tree of pool `{pool}`.")
    create_markdown_artifact(key=artifact_key(pool, "cluster-tree"), markdown=(
        f"# Cluster tree of `{pool}`\n\n{tree['rows']['samples']} samples, levels "
        + " / ".join(str(level["k"]) for level in levels)
        + f"\n\n- tree: `{folder}`\n- plot: `{tree['outputs']['plot']}`\n"))
    get_run_logger().info("cluster tree %s: levels %s", folder, [level["k"] for level in levels])
    return {"rows": rows}
