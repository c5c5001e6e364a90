"""Flow ``curate``: turn a pool into curated subsets: the cluster tree, then the sampling recipes.

    python -m flows.curate --store ./store --pool-name web --levels '[1000, {"k": 100, "resampling_steps": 10}]' \
        --subset 'balanced=[{"step": "hkmeans", "target": 100000}]'

Step 1 (tasks/cluster): hierarchical k-means with resampling over the image embeddings that the
filters kept, streamed from the store to Dask workers (cuML on Dask-CUDA where GPUs are, plain
Dask on CPUs), into ``<store>/clusters/<pool>/<key>/``. When the pool has grown since a tree with
the same settings was made (``tree_update`` mode ``assign``, the default), the new samples are
assigned to that tree instead (nearest centroid, level by level; old samples keep their clusters),
with the drift per level; past the drift thresholds the run fits a new tree (``on_drift:
recluster``) or says that it should (``warn``, the default). Step 2 (tasks/sample): each named subset's
recipe (filters, random, MetaCLIP balancing, balanced sampling from the tree, in any order) into
``<store>/subsets/<pool>/<name>-<key>/``: parquet, DataComp's uid file, new shards, indicators.
Artifacts show the cluster sizes per level and the indicators after every step.
"""

from __future__ import annotations

import json

from prefect import flow

from tasks.cluster.drift import TreeUpdateConfig
from tasks.cluster.run import ClusterConfig
from tasks.cluster.task import (assign_tree_task, cluster_pool_task, cluster_report_task, previous_tree_task,
                                tree_drift_report_task)
from tasks.common.catalog import Catalog
from tasks.common.catalog_task import resolve_pool_task
from tasks.common.cli import CliParser, command_line
from tasks.common.dask_cluster import shared_dask_address
from tasks.common.errors import InputError
from tasks.common.leftover_runs import crash_leftover_runs
from tasks.common.prefect_settings import use_project_settings
from tasks.common.prefect_support import cached_in_store, store_from
from tasks.common.store import Store
from tasks.sample.run import SubsetConfig
from tasks.sample.task import make_subset_task, subset_report_task


@flow(name="curate", flow_run_name="curate-{pool_name}", log_prints=True)
def curate(store: str, pool_name: str, clustering: dict | None = None, subsets: dict | None = None,
           cluster: bool = True, tree_update: dict | None = None, dask_address: str = "",
           storage_options: dict | None = None) -> dict:
    """Cluster the pool's filtered embeddings into a hierarchical k-means tree, then make the subsets.

    Args:
        store: store root (local folder or s3://bucket/prefix).
        pool_name: a pool that pool_refresh downloaded (and, to cluster, embedded and filtered).
        clustering: settings of tasks/cluster/run.py ClusterConfig: {"levels": [1000, {"k": 100,
            "resampling_steps": 10, "points_per_cluster": 0, "resampling": "closest"}, ...],
            "metric": "cosine" or "l2", "engine": "auto", "dask" or "cuml", "max_iter": 50, "seed": 0}.
        subsets: name -> recipe (a list of steps) or tasks/sample/run.py SubsetConfig settings
            ({"recipe": [...], "metadata": "wordnet+pool" or a list's path, "reshard": true,
            "shard_size": 1000, "report_metadata": false}). Steps: {"step": "filters"},
            {"step": "random", "target": N}, {"step": "metaclip", "t" or "tail_share" or "target",
            "matched_only", "online"}, {"step": "hkmeans", "target": N, "mode": "hierarchical" or
            "flat", "selection": "r", "c" or "f"}; the hkmeans step samples from this run's tree.
        cluster: false to skip the tree (recipes without an hkmeans step, e.g. MetaCLIP on a raw pool).
        tree_update: how the tree follows a grown pool (tasks/cluster/drift.py TreeUpdateConfig):
            {"mode": "assign" (default: assign the new samples to the newest tree of an earlier
            snapshot made with the same clustering settings) or "fit", "quantile": 0.95,
            "max_far_share": 0.15, "max_entropy_change": 0.05, "on_drift": "warn" (default) or
            "recluster"}.
        dask_address: Dask scheduler address; empty: a local cluster (Dask-CUDA on GPUs).
        storage_options: fsspec options for an s3:// store (no secrets: credentials come from the
            environment or a Prefect Secret block named by "credentials_block").
    Returns:
        {"tree": the tree the subsets came from (the clustering stage's manifest) or None,
        "assigned": the assigned tree's manifest (its drift in ``stats.drift``) or None,
        "subsets": name -> the subset's manifest}.
    """
    crash_leftover_runs()  # a retried run: what its killed process left Running ends Crashed
    the_store = store_from(store, storage_options)  # first: a secret in the options is refused and scrubbed
    parsed = {name: SubsetConfig.from_dict(recipe).to_dict() for name, recipe in (subsets or {}).items()}
    config = ClusterConfig.from_dict(clustering).to_dict() if cluster else None
    update = TreeUpdateConfig.from_dict(tree_update)
    snapshot = resolve_pool_task(the_store, pool_name)  # every task below reads this one resolution
    out: dict = {"tree": None, "assigned": None, "subsets": {}}
    trees = {}
    with shared_dask_address(dask_address) as address:  # one local cluster for every task of this run
        if cluster:
            base = previous_tree_task(the_store, snapshot, config, update.to_dict())
            if base is not None:
                out["assigned"] = out["tree"] = cached_in_store(assign_tree_task, the_store)(
                    the_store, snapshot, config, update.to_dict(), base, address)
            drifted = out["assigned"] is not None and out["assigned"]["stats"]["drift"]["drifted"]
            if base is None or (drifted and update.on_drift == "recluster"):
                out["tree"] = cached_in_store(cluster_pool_task, the_store)(the_store, snapshot, config, address)
            cluster_report_task(out["tree"], the_store)
            if out["assigned"] is not None:
                tree_drift_report_task(out["assigned"], out["tree"])
            trees["tree"] = out["tree"]
        sample = cached_in_store(make_subset_task, the_store)
        for name, subset in parsed.items():
            manifest = sample(the_store, snapshot, name, subset, trees, address)
            subset_report_task(the_store, manifest)
            out["subsets"][name] = manifest
    return out


def check_curate_settings(clustering: dict | None, subsets: dict | None, cluster: bool = True,
                          tree_update: dict | None = None) -> ClusterConfig | None:
    """The settings of ``curate`` that need no store, checked as the flow checks them: every subset's
    recipe, the tree's configuration whole (every level shrinks the tree, before any level runs), the
    tree update; and a recipe's hkmeans step needs the tree this run makes. Returns the tree's config."""
    parsed = {name: SubsetConfig.from_dict(recipe) for name, recipe in (subsets or {}).items()}
    config = ClusterConfig.from_dict(clustering) if cluster else None
    TreeUpdateConfig.from_dict(tree_update)
    for name, subset in parsed.items():
        for number, step in enumerate(subset.recipe, 1):
            if step["step"] == "hkmeans" and not cluster:
                raise InputError(f"subset {name}: step {number} (hkmeans) samples from the cluster tree, but the tree "
                                 "is skipped (cluster false, --no-cluster)")
    return config


def check_curate(store: Store, pool_name: str, clustering: dict | None, subsets: dict | None, cluster: bool = True,
                 tree_update: dict | None = None) -> None:
    """What ``main`` checks before Prefect or Dask start: :func:`check_curate_settings`, the pool in the
    store, and for the tree a pool that was embedded and filtered with at least level 1's ``k`` samples kept."""
    config = check_curate_settings(clustering, subsets, cluster, tree_update)
    snapshot = Catalog(store).snapshot(pool_name)
    if config is not None:
        _, filters = snapshot.require_filtered("clustering")
        config.check_samples(int(filters.manifest["rows"]["kept"]))


@command_line
def main(argv: list[str] | None = None) -> None:
    use_project_settings()  # prefect.toml, also when started from another folder
    parser = CliParser(prog="python -m flows.curate",
                       description="Cluster a filtered pool (hierarchical k-means with resampling).")
    parser.add_argument("--store", required=True)
    parser.add_argument("--pool-name", required=True)
    parser.add_argument("--levels", default="", help='JSON list, e.g. [1000, {"k": 100, "resampling_steps": 10}]')
    parser.add_argument("--metric", default="cosine")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--subset", action="append", default=[], metavar="NAME=RECIPE",
                        help='a subset: its name = a JSON recipe, e.g. balanced=[{"step": "hkmeans", "target": 1000}], '
                             'or a named recipe, e.g. clip=datacomp:clip_l14_30')
    parser.add_argument("--no-cluster", action="store_true", help="skip the tree (recipes without hkmeans)")
    parser.add_argument("--tree-update", default="",
                        help='JSON: how the tree follows a grown pool, e.g. {"on_drift": "recluster"} or {"mode": "fit"}')
    parser.add_argument("--dask-address", default="")
    args = parser.parse_args(argv)
    from tasks.common.options import json_option, parse_overrides

    clustering = {"metric": args.metric, "engine": args.engine}
    if args.levels:
        clustering["levels"] = json_option("--levels", args.levels)
    subsets = parse_overrides(args.subset, "--subset")  # NAME=[steps...], NAME={...} or NAME=datacomp:<baseline>
    tree_update = json_option("--tree-update", args.tree_update) if args.tree_update else None
    check_curate(Store(args.store), args.pool_name, clustering, subsets, not args.no_cluster, tree_update)
    out = curate(store=args.store, pool_name=args.pool_name, clustering=clustering, subsets=subsets,
                 cluster=not args.no_cluster, dask_address=args.dask_address, tree_update=tree_update)
    if out["tree"]:
        print(json.dumps(out["tree"]["stats"]["levels"], indent=2))
    if out["assigned"]:
        drift = out["assigned"]["stats"]["drift"]
        print(f"assigned {drift['new_samples']} new samples to the tree {out['assigned']['stats']['assigned']['base']}; "
              + ("drifted: " + "; ".join(drift["reasons"]) if drift["drifted"] else "no drift past the thresholds"))
    for name, manifest in out["subsets"].items():
        print(f"subset {name}: {manifest['rows']['subset']} samples, {manifest['outputs']['parquet']}")


if __name__ == "__main__":
    main()
