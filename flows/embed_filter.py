"""Flow ``embed_filter``: embed a downloaded pool with open_clip, then filter it.

    python -m flows.embed_filter --store ./store --pool-name web --model ViT-L-14 --checkpoint openai

One embedding task per shard and one row-wise filter task per shard run on Dask workers (a local
cluster, a Dask-CUDA cluster on GPUs, or ``--dask-address``); the pool-wide filters (dedup, CLIP
score quantile) and the report follow. ``pool_refresh`` runs this after the download when it is
given an embedder.
"""

from __future__ import annotations

import argparse
import json

from prefect import flow

from tasks.common.dask_cluster import dask_task_runner
from tasks.embed.task import embed_eval_sets_task, embed_shard_task
from tasks.filters.pool_tasks import plan_embed_filter, publish_embed_filter_manifests
from tasks.filters.task import poolwide_filters_task, rowwise_filters_task


@flow(name="embed_filter", log_prints=True, task_runner=dask_task_runner())
def embed_filter(store: str, pool_name: str, embedder: dict, filters: dict | None = None,
                 storage_options: dict | None = None) -> dict:
    """Embed every downloaded sample of the pool and decide, per filter, which to keep.

    Args:
        store: store root (local folder or s3://bucket/prefix).
        pool_name: the downloaded pool (``<store>/pools/<pool_name>/manifest.json``).
        embedder: {"model": open_clip architecture, "checkpoint": pretrained tag or checkpoint file,
            "batch_size": 256, "caption_model": "" or "minilm" or a sentence-transformers folder}.
        filters: settings of tasks/filters/config.py (thresholds, eval_tasklist, CLIP score...).
        storage_options: fsspec options for an s3:// store.
    """
    plan = plan_embed_filter(store, pool_name, embedder, filters, storage_options)
    folders = plan["folders"]
    embedded = [embed_shard_task.submit(store, shard, plan["spec"], folders["embeddings"], storage_options)
                for shard in plan["shards"]]
    eval_embeddings = None
    if folders["eval_embeddings"]:
        eval_embeddings = embed_eval_sets_task(store, plan["spec"], plan["config"]["eval_tasklist"],
                                               folders["eval_embeddings"], storage_options)
    summaries = [future.result() for future in embedded]
    rows = [rowwise_filters_task.submit(store, summary["parquet"], plan["config"], folders["filters"], eval_embeddings,
                                        storage_options) for summary in summaries]
    report = poolwide_filters_task(store, [future.result() for future in rows], plan["config"], folders["filters"],
                                   pool_name, storage_options, folders["embeddings"])
    return publish_embed_filter_manifests(store, plan, summaries, report, storage_options)


def run_embed_filter(store: str, pool_name: str, embedder: dict, filters: dict | None = None,
                     dask_address: str = "", storage_options: dict | None = None) -> dict:
    """``embed_filter`` with its tasks on Dask (the local cluster unless ``dask_address`` is given)."""
    return embed_filter.with_options(task_runner=dask_task_runner(dask_address or None))(
        store=store, pool_name=pool_name, embedder=embedder, filters=filters, storage_options=storage_options)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Embed a downloaded pool, then filter it.")
    parser.add_argument("--store", required=True)
    parser.add_argument("--pool-name", required=True)
    parser.add_argument("--model", required=True, help="open_clip architecture, e.g. ViT-L-14")
    parser.add_argument("--checkpoint", required=True, help="pretrained tag (e.g. openai) or checkpoint file")
    parser.add_argument("--caption-model", default="", help="'minilm' or a sentence-transformers folder")
    parser.add_argument("--filters", default="{}", help="JSON object of filter settings")
    parser.add_argument("--dask-address", default="")
    args = parser.parse_args(argv)
    out = run_embed_filter(args.store, args.pool_name, {"model": args.model, "checkpoint": args.checkpoint,
                                                        "caption_model": args.caption_model},
                           json.loads(args.filters), args.dask_address)
    print(json.dumps(out["filters"]["stats"], indent=2))


if __name__ == "__main__":
    main()
