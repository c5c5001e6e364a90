"""Prefect tasks of the clustering stage: thin wrappers over :mod:`tasks.cluster.run`.

``cluster_pool_task`` computes on a Dask cluster (``dask_address``, Dask's configured scheduler,
or a local cluster: Dask-CUDA when GPUs are present); it is cached by the snapshot's manifests
(pool, embeddings, filters) and the configuration, and a retry after a crash resumes from the
levels and steps already in the store. ``cluster_report_task`` publishes the cluster-size
distribution per level.

When the pool grew: ``previous_tree_task`` finds the tree to extend (:func:`tasks.cluster.assign.previous_tree`;
none when ``tree_update`` says ``fit`` or a tree of this very snapshot exists), ``assign_tree_task``
assigns the grown pool's samples to it (cached by the snapshot, the config, the update settings and
the base tree) and logs the drift, ``tree_drift_report_task`` publishes the drift per level.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.cluster.assign import assign_tree, assigned_folder, previous_tree
from tasks.cluster.drift import TreeUpdateConfig
from tasks.cluster.run import ClusterConfig, cluster_pool, tree_folder
from tasks.common.catalog import Catalog, PoolSnapshot
from tasks.common.dask_cluster import dask_client
from tasks.common.plots import png_markdown
from tasks.common.prefect_support import RETRY_DELAYS, artifact_key, retry_unless_input_error, validated_cache_key
from tasks.common.progress import ProgressArtifact
from tasks.common.store import Store


def _cluster_cache_key(context, parameters) -> str:
    catalog = Catalog(parameters["store"])
    folder = tree_folder(catalog, PoolSnapshot.from_dict(parameters["snapshot"]),
                         ClusterConfig.from_dict(parameters["config"]))
    return validated_cache_key(catalog, "cluster-" + folder.replace("/", "-"), folder)


def tree_name(levels: list) -> str:
    """A tree's levels as the UI shows them: ``1000/400/200``."""
    return "/".join(str(level["k"] if isinstance(level, dict) else level) for level in levels)


def _cluster_run_name(parameters: dict) -> str:
    return f"cluster_pool tree {parameters['snapshot']['pool']['name']} {tree_name(parameters['config']['levels'])}"


@task(name="cluster_pool", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error,
      cache_key_fn=_cluster_cache_key, task_run_name=_cluster_run_name, tags=["clustering"])
def cluster_pool_task(store: Store, snapshot: dict, config: dict, dask_address: str = "") -> dict:
    logger = get_run_logger()
    clustering = ClusterConfig.from_dict(config)
    units = [1 + level.resampling_steps for level in clustering.levels]  # k-means runs per level
    bar = ProgressArtifact(f"tree of pool {snapshot['pool']['name']} ({tree_name(config['levels'])}): "
                           "k-means runs done")

    def on_step(level: int, step: int, steps: int) -> None:
        logger.info("level %d: %s done", level, "k-means" if step == 0 else f"resampling step {step}/{steps}")
        bar.update((sum(units[:level - 1]) + step + 1) / sum(units))

    # engine "dask" never needs a GPU: a local cluster for it must not probe (or fail on) CUDA
    with dask_client(dask_address or None, gpu=False if clustering.engine == "dask" else None) as client:
        tree = cluster_pool(Catalog(store), PoolSnapshot.from_dict(snapshot), clustering, client=client,
                            on_step=on_step)
    bar.update(1.0)
    return tree


@task(name="cluster_report", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error,
      task_run_name=lambda parameters: f"cluster_report tree {parameters['tree']['name']} "
                                       f"{tree_name(parameters['tree']['config']['levels'])}")
def cluster_report_task(tree: dict, store: Store | None = None) -> dict:
    """The cluster sizes per level as a table, and the tree with its plot (read from ``store``, when given)."""
    levels = tree["stats"]["levels"]
    rows = [{"level": level["level"], "k": level["k"], "inputs": level["inputs"],
             **{f"samples_{name}": value for name, value in level["samples_per_cluster"].items()
                if name in ("min", "median", "mean", "max", "empty")}}
            for level in levels]
    pool, folder, levels_name = tree["name"], tree["outputs"]["folder"], tree_name(tree["config"]["levels"])
    plot = tree["outputs"]["plot"]
    shown = (png_markdown(store.read_bytes(store.relative(plot)), f"cluster sizes of the tree {levels_name}")
             if store is not None else f"plot: `{plot}`")
    create_table_artifact(key=artifact_key(tree["store"], pool, "tree", levels_name, "sizes"), table=rows,
                          description=f"Samples per cluster at each level of the tree {levels_name} of pool `{pool}`.")
    create_markdown_artifact(key=artifact_key(tree["store"], pool, "tree", levels_name), markdown=(
        f"# Cluster tree {levels_name} of `{pool}`\n\n{tree['rows']['samples']} samples, levels "
        + " / ".join(str(level["k"]) for level in levels)
        + f"\n\n- tree: `{folder}`\n\n{shown}\n"))
    get_run_logger().info("cluster tree %s: levels %s", folder, [level["k"] for level in levels])
    return {"rows": rows}


@task(name="previous_tree", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error)
def previous_tree_task(store: Store, snapshot: dict, config: dict, update: dict) -> dict | None:
    """The tree to assign the snapshot's samples to, or ``None`` (fit one: ``cluster_pool_task``)."""
    catalog, resolved = Catalog(store), PoolSnapshot.from_dict(snapshot)
    clustering = ClusterConfig.from_dict(config)
    if TreeUpdateConfig.from_dict(update).mode != "assign" or catalog.finished(tree_folder(catalog, resolved, clustering)):
        return None  # asked to fit, or a tree fitted on this very snapshot exists (cluster_pool_task returns it)
    base = previous_tree(catalog, resolved, clustering)
    get_run_logger().info("pool %s: %s", resolved.pool.name, f"assigning the grown pool to the tree {base['outputs']['folder']}"
                          if base else "no tree of an earlier snapshot with this config: fitting one")
    return base


def _assign_cache_key(context, parameters) -> str:
    catalog = Catalog(parameters["store"])
    folder = assigned_folder(catalog, PoolSnapshot.from_dict(parameters["snapshot"]),
                             ClusterConfig.from_dict(parameters["config"]),
                             TreeUpdateConfig.from_dict(parameters["update"]), parameters["base"])
    return validated_cache_key(catalog, "cluster-" + folder.replace("/", "-"), folder)


@task(name="assign_tree", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error,
      cache_key_fn=_assign_cache_key)
def assign_tree_task(store: Store, snapshot: dict, config: dict, update: dict, base: dict,
                     dask_address: str = "") -> dict:
    """Assign the grown pool's samples to ``base``'s tree; the new tree's manifest (drift in ``stats.drift``)."""
    settings = TreeUpdateConfig.from_dict(update)
    with dask_client(dask_address or None, gpu=False) as client:
        tree = assign_tree(Catalog(store), PoolSnapshot.from_dict(snapshot), ClusterConfig.from_dict(config), settings,
                           base, client=client)
    logger, drift = get_run_logger(), tree["stats"]["drift"]
    logger.info("tree %s: %d new samples assigned, %d dropped; beyond the fitted %.0f%% distance since the fit: %s",
                tree["outputs"]["folder"], drift["new_samples"], tree["stats"]["assigned"]["dropped_samples"],
                100 * settings.quantile, ", ".join(f"level {level['level']} {level['far_share_since_fit']:.1%}"
                                                   for level in drift["levels"]))
    if drift["drifted"]:
        logger.warning("the pool drifted from its tree (%s); %s", "; ".join(drift["reasons"]),
                       "fitting a new tree (on_drift: recluster)" if settings.on_drift == "recluster" else
                       "re-cluster it: run with tree_update {\"on_drift\": \"recluster\"} or {\"mode\": \"fit\"}")
    return tree


@task(name="tree_drift_report", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error)
def tree_drift_report_task(assigned: dict, used: dict) -> list[dict]:
    """The drift of an assigned tree per level (table), and what the run did about it (markdown)."""
    drift, pool = assigned["stats"]["drift"], assigned["name"]
    rows = [{name: round(value, 4) if isinstance(value, float) else value for name, value in level.items()}
            for level in drift["levels"]]
    levels_name = tree_name(assigned["config"]["levels"])
    create_table_artifact(key=artifact_key(assigned["store"], pool, "tree", levels_name, "drift"), table=rows,
                          description=f"Drift of pool `{pool}` from its tree {levels_name}, per level.")
    action = ("a new tree was fitted" if used["content_hash"] != assigned["content_hash"] else
              "the subsets come from the assigned tree" + ("; re-cluster it (tree_update on_drift: recluster)"
                                                          if drift["drifted"] else ""))
    verdict = ("**drifted**:\n" + "\n".join(f"- {reason}" for reason in drift["reasons"]) if drift["drifted"]
               else "within the thresholds")
    create_markdown_artifact(key=artifact_key(assigned["store"], pool, "tree", levels_name, "update"), markdown=(
        f"# Tree {levels_name} of `{pool}` after the pool grew\n\n{drift['new_samples']} new samples assigned to "
        f"`{assigned['stats']['assigned']['base']}` ({assigned['stats']['assigned']['dropped_samples']} dropped), "
        f"{drift['assigned_since_fit']} since the fit on {drift['fitted_samples']} samples.\n\nDrift: {verdict}\n\n"
        f"Action: {action}.\n\n- assigned tree: `{assigned['outputs']['folder']}`\n- used: `{used['outputs']['folder']}`\n"))
    return rows
