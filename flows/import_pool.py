"""Flow ``import_pool``: import a pool that arrives embedded, then filter it like an embedded pool.

    python -m flows.import_pool --store ./store --pool-name datacomp-small --source s3://bucket/metadata \
        [--format auto|datacomp|clip_retrieval] [--embeddings l14|b32] [--filters '{"clip_score_top_fraction": 0.3}']

The source is DataComp's released metadata (``<NNNNNNNN>.parquet`` + ``.npz``) or clip-retrieval's
inference output (``img_emb/``, ``text_emb/``, ``metadata/``), local or ``s3://``
(:mod:`tasks.pool_import`). Every header is checked, then every uid (a shuffle on Dask), before
anything is written; then one task per source shard copies it into the store on Dask workers;
the embedding run's and the pool's manifests are published last. The filters follow with the
same tasks as ``embed_filter`` (those that need image bytes, pHash dedup, are reported as
skipped), and the run becomes the pool's latest: ``curate`` runs on the pool unchanged.

A rerun after a kill imports only the shards not yet written; a rerun with the same source is
all cache hits.
"""

from __future__ import annotations

import json

from prefect import flow

from flows.embed_filter import filter_embedded
from tasks.common.catalog import Catalog
from tasks.common.cli import CliParser, command_line
from tasks.common.dask_cluster import dask_task_runner
from tasks.common.leftover_runs import crash_leftover_runs
from tasks.common.prefect_settings import use_project_settings
from tasks.common.prefect_support import cached_in_store, store_from
from tasks.common.store import Store
from tasks.embed.spec import EmbedderSpec
from tasks.embed.task import embed_eval_sets_task
from tasks.filters.plan import check_filters, tasklist_hash
from tasks.filters.task import plan_filter_task
from tasks.pool_import.run import plan_import
from tasks.pool_import.task import (check_uids_task, import_shard_task, plan_import_task, publish_import_task,
                                    shard_settings)


@flow(name="import_pool", log_prints=True, task_runner=dask_task_runner(), flow_run_name="import-{pool_name}")
def import_pool(store: str, pool_name: str, source: str, format: str = "auto", embeddings: str = "l14",
                filters: dict | None = None, embedder: dict | None = None,
                storage_options: dict | None = None) -> dict:
    """Import an embedded pool (DataComp metadata or clip-retrieval output) into the store, then filter it.

    Args:
        store: store root (local folder or s3://bucket/prefix).
        pool_name: the pool's name in the store (``<store>/pools/<pool_name>/``).
        source: the folder to import, local or s3:// (read with the store's options when it is
            on the same kind of storage).
        format: "auto" (detected from the folder), "datacomp" or "clip_retrieval".
        embeddings: DataComp's embeddings to take: "l14" (ViT-L/14, the default) or "b32"
            (ViT-B/32). clip-retrieval's output holds one pair; this is not used for it.
        filters: settings of tasks/filters/config.py. pHash dedup needs image bytes and is
            skipped (the report says why); exact dedup and the size rules are skipped where the
            source has no sha256 or sizes.
        embedder: only with filters' eval_tasklist: the open_clip model that made the imported
            embeddings ({"model": "ViT-L-14", "checkpoint": "openai"} for DataComp's l14), to
            embed the evaluation images.
        storage_options: fsspec options for an s3:// store (no secrets: credentials come from the
            environment or a Prefect Secret block named by "credentials_block").
    Returns:
        {"pool": the pool manifest, "embeddings": the embedding run's, "filters": the filter run's}.
    """
    crash_leftover_runs()  # a retried run: what its killed process left Running ends Crashed
    the_store = store_from(store, storage_options)
    plan = plan_import_task(the_store, pool_name, source, format, embeddings, filters, embedder)
    cached_in_store(check_uids_task, the_store).submit(the_store, plan).result()  # before anything is written
    settings = shard_settings(plan)
    imported = [cached_in_store(import_shard_task, the_store).submit(the_store, settings, shard)
                for shard in plan["shards"]]
    published = cached_in_store(publish_import_task, the_store)(the_store, plan, [f.result() for f in imported])
    pool, embedded = published["pool"], published["embeddings"]
    filter_plan = plan_filter_task(the_store, pool, embedded, filters, embedder)
    eval_embeddings = None
    if filter_plan["eval_embeddings"]:
        eval_embeddings = embed_eval_sets_task(the_store, filter_plan["spec"], filter_plan["config"]["eval_tasklist"],
                                               filter_plan["eval_embeddings"])
    return {"pool": pool, **filter_embedded(the_store, filter_plan, embedded, eval_embeddings)}


def run_import_pool(store: str, pool_name: str, source: str, format: str = "auto", embeddings: str = "l14",
                    filters: dict | None = None, embedder: dict | None = None, storage_options: dict | None = None,
                    dask_address: str = "") -> dict:
    """``import_pool`` with its tasks on Dask (the local cluster unless ``dask_address`` is given)."""
    return import_pool.with_options(task_runner=dask_task_runner(dask_address or None))(
        store=store, pool_name=pool_name, source=source, format=format, embeddings=embeddings, filters=filters,
        embedder=embedder, storage_options=storage_options)


def check_import_pool(store: Store, pool_name: str, source: str, format: str = "auto", embeddings: str = "l14",
                      filters: dict | None = None, embedder: dict | None = None) -> None:
    """What ``main`` checks before Prefect or Dask start: the filter settings (with their task list) and
    the embedder, then the import's plan (:func:`~tasks.pool_import.run.plan_import`: the pool's name,
    the format, every source shard's header), as the flow's first task makes them."""
    spec = EmbedderSpec.from_dict(embedder) if embedder else None
    config = check_filters(filters, embedder, store.fsspec_options() if spec and "://" in spec.checkpoint else None)
    tasklist_hash(config, store.options_for(config.eval_tasklist))
    plan_import(Catalog(store), pool_name, source, format, embeddings)


@command_line
def main(argv: list[str] | None = None) -> None:
    use_project_settings()  # prefect.toml, also when started from another folder
    parser = CliParser(prog="python -m flows.import_pool",
                       description="Import a pool that arrives embedded (DataComp metadata or clip-retrieval output), "
                                   "then filter it.")
    parser.add_argument("--store", required=True)
    parser.add_argument("--pool-name", required=True)
    parser.add_argument("--source", required=True, help="folder to import, local or s3://")
    parser.add_argument("--format", default="auto", help="auto, datacomp or clip_retrieval")
    parser.add_argument("--embeddings", default="l14", help="DataComp's l14 or b32")
    parser.add_argument("--filters", default="{}", help="JSON object of filter settings")
    parser.add_argument("--embedder", default="", help='JSON, only for eval-set dedup: {"model": ..., "checkpoint": ...}')
    parser.add_argument("--dask-address", default="")
    args = parser.parse_args(argv)
    from tasks.common.options import json_option

    filters = json_option("--filters", args.filters)
    embedder = json_option("--embedder", args.embedder) if args.embedder else None
    check_import_pool(Store(args.store), args.pool_name, args.source, args.format, args.embeddings, filters, embedder)
    out = run_import_pool(args.store, args.pool_name, args.source, args.format, args.embeddings, filters, embedder,
                          dask_address=args.dask_address)
    print(json.dumps({"pool": out["pool"]["outputs"]["folder"], "rows": out["pool"]["rows"],
                      "filters": out["filters"]["stats"]}, indent=2))


if __name__ == "__main__":
    main()
