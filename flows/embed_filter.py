"""Flow ``embed_filter``: embed a downloaded pool with open_clip, then filter it.

    python -m flows.embed_filter --store ./store --pool-name web --model ViT-L-14 --checkpoint openai

One embedding task per shard and one row-wise filter task per shard run on Dask workers (a local
cluster, a Dask-CUDA cluster on GPUs, or ``--dask-address``); the pool-wide filters (dedup, CLIP
score quantile) and the report follow. ``pool_refresh`` runs this after the download when it is
given an embedder.
"""

from __future__ import annotations

import json

from prefect import flow

from tasks.common.catalog import Catalog
from tasks.common.cli import CliParser, command_line
from tasks.common.dask_cluster import dask_task_runner
from tasks.common.leftover_runs import crash_leftover_runs
from tasks.common.prefect_settings import use_project_settings
from tasks.common.prefect_support import cached_in_store, store_from
from tasks.common.store import Store
from tasks.embed.spec import EmbedderSpec
from tasks.embed.task import embed_eval_sets_task, embed_shard_task, embedded_shards, publish_embeddings_task
from tasks.filters.plan import check_filters, plan_embed_filter, tasklist_hash
from tasks.filters.task import (filter_run_task, plan_embed_filter_task, poolwide_filters_task,
                                publish_latest_runs_task, rowwise_filters_task)


@flow(name="embed_filter", flow_run_name="embed-filter-{pool_name}", log_prints=True, task_runner=dask_task_runner())
def embed_filter(store: str, pool_name: str, embedder: dict, filters: dict | None = None,
                 storage_options: dict | None = None) -> dict:
    """Embed every downloaded sample of the pool and decide, per filter, which to keep.

    Args:
        store: store root (local folder or s3://bucket/prefix).
        pool_name: the downloaded pool (``<store>/pools/<pool_name>/manifest.json``).
        embedder: {"model": open_clip architecture, "checkpoint": pretrained tag or checkpoint file,
            "batch_size": 256, "caption_model": "" or "minilm" or a sentence-transformers folder}.
        filters: settings of tasks/filters/config.py (thresholds, eval_tasklist, CLIP score...).
        storage_options: fsspec options for an s3:// store (no secrets: credentials come from the
            environment or a Prefect Secret block named by "credentials_block").
    Returns:
        {"embeddings": the embedding stage's manifest, "filters": the filter stage's manifest}.
    """
    crash_leftover_runs()  # a retried run: what its killed process left Running ends Crashed
    the_store = store_from(store, storage_options)
    plan = plan_embed_filter_task(the_store, pool_name, embedder, filters)  # the pool, resolved once
    embed = cached_in_store(embed_shard_task, the_store)
    embedded = [embed.submit(the_store, shard, plan["spec"], plan["embeddings"]) for shard in plan["shards"]]
    eval_embeddings = None
    if plan["eval_embeddings"]:
        eval_embeddings = embed_eval_sets_task(the_store, plan["spec"], plan["config"]["eval_tasklist"],
                                               plan["eval_embeddings"])
    embeddings = publish_embeddings_task(the_store, plan["pool"], plan["spec"], plan["embeddings"],
                                         embedded_shards(embedded, plan["shards"], the_store, pool_name))
    return filter_embedded(the_store, plan, embeddings, eval_embeddings)


def filter_embedded(the_store, plan: dict, embeddings: dict, eval_embeddings: str | None) -> dict:
    """The filter tasks over an embedding run (embedded here or imported), composed inside a flow: row-wise
    per shard on Dask, pool-wide, then this run made the pool's latest. Returns ``{"embeddings", "filters"}``.

    On a grown pool whose previous version was filtered with the same settings, the run is
    incremental (tasks/filters/plan.py): old shards' row-wise decisions are copied and the
    pool-wide filters treat the new shards against the old ones; the filter manifest's
    ``stats["incremental"]`` says what was reused and which old decisions changed."""
    run = filter_run_task(the_store, plan, embeddings)
    rows = {shard["shard_id"]: rowwise_filters_task.submit(the_store, shard, plan["config"], run["folder"],
                                                           eval_embeddings, run["reuse"].get(shard["shard_id"]))
            for shard in embeddings["outputs"]["shards"]}
    filtered = cached_in_store(poolwide_filters_task, the_store)(
        the_store, embeddings, {shard: future.result() for shard, future in rows.items()}, plan["config"],
        run["folder"], plan, run["previous"])
    return publish_latest_runs_task(the_store, embeddings, filtered)


def run_embed_filter(store: str, pool_name: str, embedder: dict, filters: dict | None = None,
                     dask_address: str = "", storage_options: dict | None = None) -> dict:
    """``embed_filter`` with its tasks on Dask (the local cluster unless ``dask_address`` is given)."""
    return embed_filter.with_options(task_runner=dask_task_runner(dask_address or None))(
        store=store, pool_name=pool_name, embedder=embedder, filters=filters, storage_options=storage_options)


def check_embedder_and_filters(store: Store, embedder: dict, filters: dict | None) -> None:
    """The embedder (its settings, an open_clip model config, a checkpoint file that exists) and the
    filter settings (with the evaluation task list they name), checked as the embedding plan checks
    them, for a command line before the pool exists (:func:`check_embed_filter` once it does)."""
    spec = EmbedderSpec.from_dict(embedder)
    config = check_filters(filters, embedder, store.fsspec_options() if "://" in spec.checkpoint else None)
    tasklist_hash(config, store.options_for(config.eval_tasklist))


def check_embed_filter(store: Store, pool_name: str, embedder: dict, filters: dict | None) -> None:
    """What ``main`` checks before Prefect or Dask start: the pool exists, and the plan the flow's first
    task makes (:func:`~tasks.filters.plan.plan_embed_filter`: embedder, filters, task list) is made."""
    EmbedderSpec.from_dict(embedder)
    catalog = Catalog(store)
    plan_embed_filter(catalog, catalog.pool(pool_name), embedder, filters)


@command_line
def main(argv: list[str] | None = None) -> None:
    use_project_settings()  # prefect.toml, also when started from another folder
    parser = CliParser(prog="python -m flows.embed_filter", description="Embed a downloaded pool, then filter it.")
    parser.add_argument("--store", required=True)
    parser.add_argument("--pool-name", required=True)
    parser.add_argument("--model", required=True, help="open_clip architecture, e.g. ViT-L-14")
    parser.add_argument("--checkpoint", required=True, help="pretrained tag (e.g. openai) or checkpoint file")
    parser.add_argument("--caption-model", default="", help="'minilm' or a sentence-transformers folder")
    parser.add_argument("--filters", default="{}", help="JSON object of filter settings")
    parser.add_argument("--dask-address", default="")
    args = parser.parse_args(argv)
    from tasks.common.options import json_option

    embedder = {"model": args.model, "checkpoint": args.checkpoint, "caption_model": args.caption_model}
    filters = json_option("--filters", args.filters)
    check_embed_filter(Store(args.store), args.pool_name, embedder, filters)
    out = run_embed_filter(args.store, args.pool_name, embedder, filters, args.dask_address)
    print(json.dumps(out["filters"]["stats"], indent=2))


if __name__ == "__main__":
    main()
