"""Flow ``export_pool``: write a pool of the store in DataComp's layout, for DataComp's and open_clip's tools.

    python -m flows.export_pool --store ./store --pool-name web [--embeddings-key l14] [--shards]

Into ``<store>/exports/<pool>/<key>/``: ``metadata/NNNNNNNN.parquet`` (DataComp's columns) and
``.npz`` (the embeddings under DataComp's keys), one pair per shard of the pool, numbered
``{:08d}`` from 0 in pool order across its download slices; with ``--shards`` also
``shards/NNNNNNNN.tar``, ``.parquet``, ``_stats.json`` and ``sizes.json``, so DataComp's
``resharder.py`` and open_clip read the pool as it is (see :mod:`tasks.pool_export.run`). Only
samples with embeddings are exported. One task per shard runs on Dask workers; every shard and
the manifest are cached in the store, so a rerun does nothing and a killed run redoes only
unfinished shards.
"""

from __future__ import annotations

import json

from prefect import flow

from tasks.common.catalog import Catalog
from tasks.common.catalog_task import resolve_pool_task
from tasks.common.cli import CliParser, command_line
from tasks.common.dask_cluster import dask_task_runner
from tasks.common.leftover_runs import crash_leftover_runs
from tasks.common.prefect_settings import use_project_settings
from tasks.common.prefect_support import cached_in_store, store_from
from tasks.common.store import Store
from tasks.pool_export.run import ExportConfig, plan_export
from tasks.pool_export.task import export_shard_task, plan_export_task, publish_export_task


@flow(name="export_pool", log_prints=True, task_runner=dask_task_runner(), flow_run_name="export-{pool_name}")
def export_pool(store: str, pool_name: str, embeddings_key: str = "", shards: bool = False,
                storage_options: dict | None = None) -> dict:
    """Export the pool's embedded samples as DataComp metadata (parquet + npz), and optionally its shards.

    Args:
        store: store root (local folder or s3://bucket/prefix).
        pool_name: a pool of the store that has embeddings (downloaded and embedded, or imported).
        embeddings_key: DataComp's key prefix for the pool's embeddings and CLIP score: "l14" (what
            DataComp's baselines read by default) or "b32"; empty: the key a pool imported from DataComp
            came with, else "l14". The other key's npz arrays are absent and its score column is null.
        shards: also lay out the pool's webdataset shards as shards/NNNNNNNN.tar with their
            parquet, _stats.json and sizes.json (a downloaded pool only: an imported one has no tars).
        storage_options: fsspec options for an s3:// store (no secrets: credentials come from the
            environment or a Prefect Secret block named by "credentials_block").
    Returns:
        The export stage's manifest (outputs: folder, metadata files per shard, shards, sizes).
    """
    crash_leftover_runs()  # a retried run: what its killed process left Running ends Crashed
    the_store = store_from(store, storage_options)  # first: a secret in the options is refused and scrubbed
    config = ExportConfig(embeddings_key=embeddings_key, shards=shards).to_dict()  # bad settings fail here
    snapshot = resolve_pool_task(the_store, pool_name)
    plan = plan_export_task(the_store, snapshot, config)
    export = cached_in_store(export_shard_task, the_store)
    futures = [export.submit(the_store, job, plan["folder"], plan["config"]) for job in plan["jobs"]]
    return cached_in_store(publish_export_task, the_store)(the_store, plan, [future.result() for future in futures])


def run_export_pool(store: str, pool_name: str, embeddings_key: str = "", shards: bool = False,
                    dask_address: str = "", storage_options: dict | None = None) -> dict:
    """``export_pool`` with its tasks on Dask (the local cluster unless ``dask_address`` is given)."""
    return export_pool.with_options(task_runner=dask_task_runner(dask_address or None))(
        store=store, pool_name=pool_name, embeddings_key=embeddings_key, shards=shards,
        storage_options=storage_options)


def check_export_pool(store: Store, pool_name: str, embeddings_key: str = "", shards: bool = False) -> None:
    """What ``main`` checks before Prefect or Dask start: the export's plan
    (:func:`~tasks.pool_export.run.plan_export`: the settings, a pool with embeddings, tars for ``shards``),
    made from the pool as the store resolves it now, as the flow's first tasks make it."""
    catalog = Catalog(store)
    plan_export(catalog, catalog.snapshot(pool_name), ExportConfig(embeddings_key=embeddings_key, shards=shards))


@command_line
def main(argv: list[str] | None = None) -> None:
    use_project_settings()  # prefect.toml, also when started from another folder
    parser = CliParser(prog="python -m flows.export_pool", description="Export a pool in DataComp's layout (metadata "
                                                                       "parquet + npz, optionally the shards).")
    parser.add_argument("--store", required=True)
    parser.add_argument("--pool-name", required=True)
    parser.add_argument("--embeddings-key", default="", choices=["", "l14", "b32"],
                        help="DataComp key prefix for the pool's embeddings and CLIP score (default: an imported "
                             "DataComp pool's own, else l14)")
    parser.add_argument("--shards", action="store_true", help="also lay out the webdataset shards (downloaded pools)")
    parser.add_argument("--dask-address", default="")
    args = parser.parse_args(argv)
    check_export_pool(Store(args.store), args.pool_name, args.embeddings_key, args.shards)
    out = run_export_pool(args.store, args.pool_name, args.embeddings_key, args.shards, args.dask_address)
    print(json.dumps({"folder": out["outputs"]["folder"], "rows": out["rows"],
                      "not_exported": out["stats"]["not_exported"]}, indent=2))


if __name__ == "__main__":
    main()
