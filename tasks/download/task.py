"""Prefect tasks of the download stage: thin wrappers over :mod:`tasks.download`.

- ``plan_pool_download``: checks the parameters and the store, reads and validates the pool
  index, stores each slice's rows; returns the slice plans (dicts). Fails before any download.
- ``download_slice_task``: one slice with img2dataset (cached by the slice key, retried).
- ``publish_pool_manifest``: the pool manifest and report in the store, and the table artifact.
"""

from __future__ import annotations

import re

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.common.errors import InputError
from tasks.common.hashing import hash_json
from tasks.common.manifest import Manifest
from tasks.common.prefect_support import RETRY_DELAYS, retry_unless_input_error, store_from
from tasks.download.pool_index import SlicePlan, plan_slices, read_pool_index
from tasks.download.report import summarise_slices
from tasks.download.slices import (DownloadConfig, download_slice, slice_key, stage_code_version,
                                   write_slice_input)

POOL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def _slice_cache_key(context, parameters) -> str:
    plan = SlicePlan(**parameters["plan"])
    return f"download-{plan.pool}-{plan.index:05d}-{slice_key(plan, DownloadConfig(**parameters['config']))}"


@task(name="plan_pool_download", retries=2, retry_delay_seconds=RETRY_DELAYS[:2],
      retry_condition_fn=retry_unless_input_error)
def plan_pool_download(pool_index: str, store: str, pool_name: str, slice_size: int, config: dict,
                       storage_options: dict | None = None) -> list[dict]:
    if not POOL_NAME.match(pool_name or ""):
        raise InputError(f"pool_name: {pool_name!r} must be 1-63 lower-case letters, digits, '-' or '_'")
    download_config = DownloadConfig(**config)
    download_config.validate()
    if slice_size < 1:
        raise InputError(f"slice_size: must be at least 1, got {slice_size}")
    the_store = store_from(store, storage_options)
    the_store.check_writable()
    index = read_pool_index(pool_index, storage_options)
    plans = plan_slices(index, pool_name, slice_size)
    for plan in plans:
        write_slice_input(the_store, plan, index.iloc[plan.start:plan.stop])
    get_run_logger().info("pool %r: %d rows in %d slices of up to %d", pool_name, len(index), len(plans), slice_size)
    return [plan.to_dict() for plan in plans]


@task(name="download_slice", retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_unless_input_error, cache_key_fn=_slice_cache_key)
def download_slice_task(store: str, plan: dict, config: dict, storage_options: dict | None = None) -> dict:
    logger = get_run_logger()
    result = download_slice(store_from(store, storage_options), SlicePlan(**plan), DownloadConfig(**config),
                            log=logger.info)
    logger.info("slice %d: %s in %.1f s", result.index, result.status_counts, result.seconds)
    return result.to_dict()


@task(name="publish_pool_manifest", retries=2, retry_delay_seconds=RETRY_DELAYS[:2])
def publish_pool_manifest(store: str, pool_index: str, pool_name: str, plans: list[dict], results: list[dict],
                          config: dict, storage_options: dict | None = None) -> dict:
    the_store = store_from(store, storage_options)
    summary = summarise_slices(results)
    shards = [dict(shard, tar=the_store.uri(shard["tar"]), parquet=the_store.uri(shard["parquet"]))
              for result in sorted(results, key=lambda r: r["index"]) for shard in result["shards"]]
    manifest = Manifest(
        stage="download", name=pool_name, store=the_store.root,
        config=DownloadConfig(**config).output_config(), code_version=stage_code_version(),
        inputs={"pool_index": pool_index, "n_rows": sum(p["stop"] - p["start"] for p in plans),
                "index_content_hash": hash_json([p["content_hash"] for p in plans])},
        outputs={"slices": [the_store.uri(r["folder"]) for r in sorted(results, key=lambda r: r["index"])],
                 "shards": shards},
        rows={"input": summary["n_rows"], **summary["status_counts"]},
        stats={"reason_counts": summary["reason_counts"], "slice_keys": [r["key"] for r in results]},
    )
    base = f"pools/{pool_name}"
    manifest.write(the_store, f"{base}/manifests/{manifest.content_hash[:16]}.json")
    manifest.write(the_store, f"{base}/manifest.json")
    the_store.write_json(f"{base}/download_report.json", {k: summary[k] for k in ("status_counts", "reason_counts", "table")})
    create_table_artifact(
        key=f"{pool_name.replace('_', '-')}-download", table=summary["table"],
        description=f"Download of pool `{pool_name}`: {summary['n_rows']} samples, by status and reason.")
    create_markdown_artifact(
        key=f"{pool_name.replace('_', '-')}-manifest",
        markdown=f"# Pool `{pool_name}`\n\n- manifest: `{the_store.uri(base + '/manifest.json')}`\n"
                 f"- shards: {len(shards)} in {len(results)} slices\n"
                 f"- samples: {summary['status_counts']}\n")
    return manifest.to_dict()
