"""Prefect tasks of the embedding stage: thin wrappers over :mod:`tasks.embed.run`.

``embed_shard_task`` runs once per downloaded shard (on the flow's Dask workers); its cache key
is the shard's content hash (its img2dataset parquet), the embedder and the stage version.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.common.hashing import code_version, hash_json
from tasks.common.prefect_support import RETRY_DELAYS, retry_unless_input_error, store_from
from tasks.embed.run import EMBED_VERSION, embed_eval_sets, embed_shard
from tasks.embed.spec import EmbedderSpec


def _shard_key(context, parameters) -> str:
    spec = EmbedderSpec(**parameters["spec"])
    return "embed-" + hash_json({"store": parameters["store"], "shard": parameters["shard"]["parquet_sha256"],
                                 "spec": spec.key,
                                 "out": parameters["out_folder"],
                                 "code": code_version("embed", EMBED_VERSION, ("open_clip_torch", "torch"))})


@task(name="embed_shard", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error,
      cache_key_fn=_shard_key)
def embed_shard_task(store: str, shard: dict, spec: dict, out_folder: str, storage_options: dict | None = None) -> dict:
    summary = embed_shard(store_from(store, storage_options), shard["tar"], shard["parquet"], EmbedderSpec(**spec),
                          out_folder)
    if summary["reasons"]:
        get_run_logger().warning("shard %s: %s samples not embedded: %s", summary["name"],
                                 summary["rows"] - summary["embedded"], summary["reasons"])
    return summary


@task(name="embed_eval_sets", retries=1, retry_delay_seconds=RETRY_DELAYS[:1], retry_condition_fn=retry_unless_input_error)
def embed_eval_sets_task(store: str, spec: dict, tasklist: str, target: str,
                         storage_options: dict | None = None) -> str:
    return embed_eval_sets(store_from(store, storage_options), EmbedderSpec(**spec), tasklist, target)
