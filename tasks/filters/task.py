"""Prefect tasks of the filtering stage: thin wrappers over :mod:`tasks.filters.plan` and :mod:`tasks.filters.run`.

- ``plan_embed_filter_task``: checks the embedder and the filters; resolves the pool once.
- ``plan_filter_task``: the same plan for a pool that is already embedded (an imported one).
- ``filter_run_task``: the filter run's folder, from the embedding run's manifest, and for a grown
  pool the previous run it is incremental against (:func:`tasks.filters.plan.filter_run`).
- ``rowwise_filters_task``: one shard's row-wise decisions (on the Dask workers; an old shard's
  are copied from the previous run).
- ``poolwide_filters_task``: dedup, SemDeDup, CLIP score, the report and the manifest (cached by
  the run's folder: the embedding manifest, the config, the evaluation sets and the previous
  run), fanned out on the Dask cluster the task runs on.
- ``publish_latest_runs_task``: makes this run the pool's latest, then the artifacts.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.common.catalog import Catalog, EmbeddedShard, EmbeddingRun, PoolRecord
from tasks.common.dask_cluster import task_client
from tasks.common.plots import png_markdown
from tasks.common.prefect_support import RETRY_DELAYS, artifact_key, retry_unless_input_error, validated_cache_key
from tasks.common.store import Store
from tasks.filters.config import FilterConfig
from tasks.filters.plan import filter_run, plan_embed_filter, plan_filter
from tasks.filters.run import poolwide_filters, rowwise_filters


@task(name="plan_embed_filter", retries=1, retry_delay_seconds=RETRY_DELAYS[:1],
      retry_condition_fn=retry_unless_input_error)
def plan_embed_filter_task(store: Store, pool_name: str, embedder: dict, filters: dict | None) -> dict:
    catalog = Catalog(store)
    return plan_embed_filter(catalog, catalog.pool(pool_name), embedder, filters)


@task(name="plan_filter", retries=1, retry_delay_seconds=RETRY_DELAYS[:1], retry_condition_fn=retry_unless_input_error)
def plan_filter_task(store: Store, pool: dict, embeddings: dict, filters: dict | None,
                     embedder: dict | None = None) -> dict:
    return plan_filter(Catalog(store), PoolRecord(pool["name"], pool), embeddings, filters, embedder)


@task(name="filter_run")
def filter_run_task(store: Store, plan: dict, embeddings: dict) -> dict:
    """``folder``, ``previous`` (the run this one is incremental against, or None), ``reuse``, ``why``."""
    run = filter_run(Catalog(store), plan, embeddings)
    get_run_logger().info("filter run %s: %s", run["folder"], run["why"])
    return run


@task(name="rowwise_filters", retries=2, retry_delay_seconds=RETRY_DELAYS[:2],
      retry_condition_fn=retry_unless_input_error)
def rowwise_filters_task(store: Store, shard: dict, config: dict, folder: str,
                         eval_embeddings: str | None = None, reuse: str | None = None) -> str:
    target = Catalog(store).filter_rows(folder, shard["shard_id"])
    return rowwise_filters(store, EmbeddedShard.from_dict(shard), FilterConfig.from_dict(config), target,
                           eval_embeddings, reuse)


def _poolwide_key(context, parameters) -> str:
    return validated_cache_key(Catalog(parameters["store"]), f"filter-{parameters['folder'].replace('/', '-')}",
                               parameters["folder"])


@task(name="poolwide_filters", retries=1, retry_delay_seconds=RETRY_DELAYS[:1],
      retry_condition_fn=retry_unless_input_error, cache_key_fn=_poolwide_key)
def poolwide_filters_task(store: Store, embeddings: dict, rows_files: dict[str, str], config: dict, folder: str,
                          plan: dict, previous: dict | None = None) -> dict:
    inputs = {"embeddings": embeddings["content_hash"], "pool_manifest": plan["pool"]["content_hash"],
              "eval_tasklist": plan["tasklist_hash"]}
    with task_client() as client:  # the pool-wide work fans out on the cluster this task runs on
        return poolwide_filters(Catalog(store), EmbeddingRun(embeddings), rows_files, FilterConfig.from_dict(config),
                                folder, inputs, client=client, previous=previous)


@task(name="publish_latest_runs", retries=2, retry_delay_seconds=RETRY_DELAYS[:2],
      retry_condition_fn=retry_unless_input_error)
def publish_latest_runs_task(store: Store, embeddings: dict, filters: dict) -> dict:
    """Make these runs the pool's latest; show the filter report as artifacts."""
    Catalog(store).set_latest_runs(filters["name"], embeddings, filters)
    report = store.read_json(store.relative(filters["outputs"]["report"]))
    logger = get_run_logger()
    for name, why in report["skipped"].items():
        logger.warning("filter %s skipped: %s", name, why)
    rows = [{"filter": name, "removed": report["removed_by"][name], "removed_only_by_it": report["removed_only_by"][name],
             "reasons": ", ".join(f"{k}: {v}" for k, v in report["reasons"][name].items())}
            for name in report["removed_by"]]
    rows += [{"filter": name, "removed": None, "removed_only_by_it": None, "reasons": f"skipped: {why}"}
             for name, why in report["skipped"].items()]
    pool = filters["name"]
    create_table_artifact(key=artifact_key(store, pool, "filters"), table=rows,
                          description=f"Filters on pool `{pool}`: {report['kept']} of {report['samples']} kept.")
    plot = png_markdown(store.read_bytes(store.relative(filters["outputs"]["plot"])), f"filters on {pool}")
    create_markdown_artifact(key=artifact_key(store, pool, "filter-report"), markdown=(
        f"# Filters on `{pool}`\n\n{report['kept']} of {report['samples']} samples kept.\n\n"
        f"- report: `{filters['outputs']['report']}`\n\n{plot}\n"))
    return {"embeddings": embeddings, "filters": filters}
