"""Prefect tasks of the export stage: thin wrappers over :mod:`tasks.pool_export.run`.

- ``plan_export_task``: checks the config and the pool (embedded; tars when ``shards``), numbers its shards.
- ``export_shard_task``: one shard's files (on the flow's Dask workers); cached by the export's key
  and the shard's number, the hit checked against the shard's files in the store.
- ``publish_export_task``: ``sizes.json`` and the manifest; cached by the export's key, the hit
  checked against the manifest's outputs.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.common.catalog import Catalog, PoolSnapshot
from tasks.common.hashing import hash_json
from tasks.common.prefect_support import RETRY_DELAYS, retry_unless_input_error, validated_cache_key
from tasks.common.store import Store
from tasks.pool_export.run import ExportConfig, export_shard, plan_export, publish_export, shard_files


@task(name="plan_export", retries=1, retry_delay_seconds=RETRY_DELAYS[:1], retry_condition_fn=retry_unless_input_error)
def plan_export_task(store: Store, snapshot: dict, config: dict) -> dict:
    return plan_export(Catalog(store), PoolSnapshot.from_dict(snapshot), ExportConfig(**config))


def _shard_key(context, parameters) -> str:
    catalog = Catalog(parameters["store"])
    config = ExportConfig(**parameters["config"])
    files = shard_files(parameters["folder"], parameters["job"]["number"], config.shards)
    key = "export-shard-" + hash_json({"store": catalog.store.root, "folder": parameters["folder"],
                                       "job": parameters["job"], "config": config.to_dict()})
    return validated_cache_key(catalog, key, files=list(files.values()))


@task(name="export_shard", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error,
      cache_key_fn=_shard_key)
def export_shard_task(store: Store, job: dict, folder: str, config: dict) -> dict:
    summary = export_shard(store, job, folder, ExportConfig(**config))
    if summary["not_exported"]:
        get_run_logger().info("shard %s (%08d): %s samples without embeddings not exported: %s",
                              summary["source_shard_id"], summary["number"], sum(summary["not_exported"].values()),
                              summary["not_exported"])
    return summary


def _publish_key(context, parameters) -> str:
    folder = parameters["plan"]["folder"]
    return validated_cache_key(Catalog(parameters["store"]), f"export-{folder.replace('/', '-')}", folder)


@task(name="publish_export", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error,
      cache_key_fn=_publish_key)
def publish_export_task(store: Store, plan: dict, summaries: list[dict]) -> dict:
    catalog = Catalog(store)
    done = catalog.finished(plan["folder"])
    manifest = done if done is not None else publish_export(catalog, plan, summaries)
    get_run_logger().info("export of pool %r: %d samples in %d shards at %s (%s samples without embeddings left out)",
                          manifest["name"], manifest["rows"]["exported"], manifest["rows"]["shards"],
                          manifest["outputs"]["folder"], manifest["rows"]["not_exported"])
    return manifest
