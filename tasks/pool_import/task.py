"""Prefect tasks of the import stage: thin wrappers over :mod:`tasks.pool_import.run`.

- ``plan_import_task``: every cheap check over every shard (and the filter settings), before
  anything is written; returns the plan.
- ``check_uids_task``: uids well-formed and unique over the whole source (a shuffle on the Dask
  workers); cached by the source's content hash.
- ``import_shard_task``: one source shard copied into the store (on the Dask workers); cached by
  the shard's content hash, the import settings and the code version, and validated against its
  files, so a rerun after a kill redoes only the missing shards.
- ``publish_import_task``: the embedding run's and the pool's manifests, and an artifact.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks.common.catalog import RESULTS_FOLDER, Catalog
from tasks.common.dask_cluster import task_client
from tasks.common.hashing import hash_json
from tasks.common.prefect_support import RETRY_DELAYS, artifact_key, retry_unless_input_error, validated_cache_key
from tasks.common.store import Store
from tasks.filters.plan import check_filters
from tasks.pool_import.run import check_uids, import_shard, plan_import, publish_import, stage_code_version

SETTINGS = ("pool", "format", "embeddings", "dim", "folder")


def shard_settings(plan: dict) -> dict:
    """What one shard's import needs of the plan (not every other shard's record)."""
    return {name: plan[name] for name in SETTINGS}


@task(name="plan_import", retries=1, retry_delay_seconds=RETRY_DELAYS[:1], retry_condition_fn=retry_unless_input_error)
def plan_import_task(store: Store, pool_name: str, source: str, format: str, embeddings: str,
                     filters: dict | None = None, embedder: dict | None = None) -> dict:
    check_filters(filters, embedder, store.fsspec_options() if embedder and "://" in embedder.get("checkpoint", "")
                  else None)
    plan = plan_import(Catalog(store), pool_name, source, format, embeddings)
    get_run_logger().info("import of %s (%s%s): %d shards, %d samples, dimension %d, into %s", source, plan["format"],
                          f", {plan['embeddings']}" if plan["embeddings"] else "", len(plan["shards"]),
                          sum(s["rows"] for s in plan["shards"]), plan["dim"], plan["folder"])
    return plan


def _uids_key(context, parameters) -> str:
    plan = parameters["plan"]
    return "import-uids-" + hash_json({"source": plan["source_hash"], "format": plan["format"],
                                       "code": stage_code_version()})


@task(name="check_uids", retries=1, retry_delay_seconds=RETRY_DELAYS[:1], retry_condition_fn=retry_unless_input_error,
      cache_key_fn=_uids_key)
def check_uids_task(store: Store, plan: dict) -> dict:
    with task_client() as client:  # the shuffle fans out on the cluster this task runs on
        return check_uids(store, plan, client)


def _shard_key(context, parameters) -> str:
    catalog = Catalog(parameters["store"])
    settings, shard = parameters["settings"], parameters["shard"]
    files = catalog.embedded_shard(settings["folder"], shard["shard_id"])
    key = "import-" + hash_json({"store": catalog.store.root, "settings": settings, "shard": shard["shard_id"],
                                 "content": shard["content_hash"], "code": stage_code_version()})
    return validated_cache_key(catalog, key, files=[files.parquet, files.image_embeddings, files.text_embeddings,
                                                    catalog.imported_shard_table(settings["pool"], shard["shard_id"])])


@task(name="import_shard", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error,
      cache_key_fn=_shard_key)
def import_shard_task(store: Store, settings: dict, shard: dict) -> dict:
    summary = import_shard(store, settings, shard)
    if summary["renormalised"]:
        get_run_logger().warning("shard %s (%s): %d embedding rows were not unit-norm and were renormalised",
                                 shard["shard_id"], shard["source"]["table"], summary["renormalised"])
    return summary


def _publish_key(context, parameters) -> str:
    """Valid while the pool's latest manifest is this source's import and the embedding run made with it is finished.

    The embedding folder is shared by every version of the source, so a store that is consistent is not
    enough: importing A, then B, then A again must publish A again.
    """
    catalog = Catalog(parameters["store"])
    plan = parameters["plan"]
    key = "import-publish-" + hash_json({"store": catalog.store.root, "folder": plan["folder"],
                                         "source": plan["source_hash"], "code": stage_code_version()})
    embeddings = catalog.finished(plan["folder"])
    pool = catalog.read_manifest(catalog.pool_folder(plan["pool"]))
    if (embeddings is None or pool is None or embeddings["inputs"].get("pool_manifest") != pool["content_hash"]
            or pool.get("inputs", {}).get("source_content_hash") != plan["source_hash"]):
        catalog.store.remove(f"{RESULTS_FOLDER}/{key}")
    return key


@task(name="publish_import", retries=2, retry_delay_seconds=RETRY_DELAYS[:2],
      retry_condition_fn=retry_unless_input_error, cache_key_fn=_publish_key)
def publish_import_task(store: Store, plan: dict, summaries: list[dict]) -> dict:
    catalog = Catalog(store)
    out = publish_import(catalog, plan, summaries)
    pool = plan["pool"]
    create_markdown_artifact(key=artifact_key(store, pool, "import"), markdown=(
        f"# Pool `{pool}` imported\n\n- source: `{plan['source']}` ({plan['format']}"
        f"{', ' + plan['embeddings'] if plan['embeddings'] else ''}, dimension {plan['dim']})\n"
        f"- shards: {len(plan['shards'])}, samples: {out['pool']['rows']['success']}\n"
        f"- renormalised embedding rows: {out['embeddings']['stats']['renormalised']}\n"
        f"- the source lacks: {', '.join(out['embeddings']['stats']['source_lacks']) or 'nothing'}\n"
        f"- pool manifest: `{store.uri(catalog.pool_manifest(pool))}`\n"
        f"- embeddings: `{out['embeddings']['outputs']['folder']}`\n"))
    return out
