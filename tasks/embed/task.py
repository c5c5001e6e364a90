"""Prefect tasks of the embedding stage: thin wrappers over :mod:`tasks.embed.run`.

``embed_shard_task`` runs once per downloaded shard (on the flow's Dask workers); its cache key
is the shard's content hash, the embedder and the stage's code version. ``publish_embeddings_task``
writes the stage's manifest once every shard is embedded.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.common.catalog import Catalog, PoolRecord, ShardRecord
from tasks.common.hashing import hash_json
from tasks.common.prefect_support import RETRY_DELAYS, retry_unless_input_error, validated_cache_key
from tasks.common.store import Store
from tasks.embed.run import embed_eval_sets, embed_shard, embedding_manifest, stage_code_version
from tasks.embed.spec import EmbedderSpec


def _shard_files(catalog: Catalog, parameters: dict):
    spec = EmbedderSpec(**parameters["spec"])
    return catalog.embedded_shard(parameters["folder"], parameters["shard"]["shard_id"], bool(spec.caption_model))


def _shard_key(context, parameters) -> str:
    catalog = Catalog(parameters["store"])
    files = _shard_files(catalog, parameters)
    key = "embed-" + hash_json({"store": catalog.store.root, "shard": parameters["shard"]["content_hash"],
                                "spec": EmbedderSpec(**parameters["spec"]).key, "out": parameters["folder"],
                                "code": stage_code_version()})
    return validated_cache_key(catalog, key, files=[f for f in (files.parquet, files.image_embeddings,
                                                                files.text_embeddings, files.caption_embeddings) if f])


@task(name="embed_shard", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error,
      cache_key_fn=_shard_key)
def embed_shard_task(store: Store, shard: dict, spec: dict, folder: str) -> dict:
    files = _shard_files(Catalog(store), {"shard": shard, "spec": spec, "folder": folder})
    summary = embed_shard(store, ShardRecord.from_dict(shard), EmbedderSpec(**spec), files)
    if summary["reasons"]:
        get_run_logger().warning("shard %s: %s samples not embedded: %s", summary["shard_id"],
                                 summary["rows"] - summary["embedded"], summary["reasons"])
    return summary


@task(name="publish_embeddings", retries=2, retry_delay_seconds=RETRY_DELAYS[:2],
      retry_condition_fn=retry_unless_input_error)
def publish_embeddings_task(store: Store, pool: dict, spec: dict, folder: str, shards: list[dict]) -> dict:
    return embedding_manifest(Catalog(store), PoolRecord(pool["name"], pool), EmbedderSpec(**spec), folder, shards)


@task(name="embed_eval_sets", retries=1, retry_delay_seconds=RETRY_DELAYS[:1], retry_condition_fn=retry_unless_input_error)
def embed_eval_sets_task(store: Store, spec: dict, tasklist: str, target: str) -> str:
    return embed_eval_sets(store, EmbedderSpec(**spec), tasklist, target)
