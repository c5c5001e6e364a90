"""Prefect tasks of the embedding stage: thin wrappers over :mod:`tasks.embed.run`.

``embed_shard_task`` runs once per downloaded shard (on the flow's Dask workers); its cache key
is the shard's content hash, the embedder and the stage's code version. :func:`embedded_shards`
collects every shard's summary: a shard that failed (a damaged tar: cut inside a member, cut at a
member boundary, fewer samples than recorded) is named and counted, in a table artifact and in the
:class:`~tasks.common.errors.StageFailed` it raises once every other shard has finished, so the
stage is never published short of a shard. ``publish_embeddings_task`` writes the stage's manifest
once every shard is embedded.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from tasks.common.catalog import Catalog, PoolRecord, ShardRecord
from tasks.common.errors import StageFailed
from tasks.common.hashing import hash_json
from tasks.common.prefect_support import RETRY_DELAYS, artifact_key, retry_unless_input_error, validated_cache_key
from tasks.common.progress import wait_with_progress
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
      cache_key_fn=_shard_key, task_run_name="embed_shard {shard[shard_id]}", tags=["embedding"])
def embed_shard_task(store: Store, shard: dict, spec: dict, folder: str) -> dict:
    files = _shard_files(Catalog(store), {"shard": shard, "spec": spec, "folder": folder})
    summary = embed_shard(store, ShardRecord.from_dict(shard), EmbedderSpec(**spec), files)
    if summary["reasons"]:
        get_run_logger().warning("shard %s: %s samples not embedded: %s", summary["shard_id"],
                                 summary["rows"] - summary["embedded"], summary["reasons"])
    return summary


def embedded_shards(futures: list, shards: list[dict], store: Store | None = None, pool: str = "") -> list[dict]:
    """The summaries of ``embed_shard_task`` for ``shards`` (its futures, in order), once all have finished.

    When any failed, a table artifact (``<pool>-embed-failed-shards-<store>``) lists each failed shard,
    its tar and why, and :class:`StageFailed` names them and counts them against the shards embedded
    (which are kept: a rerun embeds only the failed ones). Called in the flow, with the futures of
    one embedding run.
    """
    wait_with_progress(futures, f"pool {pool}: shards embedded" if pool else "shards embedded")
    outcomes = [future.result(raise_on_failure=False) for future in futures]  # waits for every shard
    failed = [(shard, outcome) for shard, outcome in zip(shards, outcomes) if isinstance(outcome, BaseException)]
    if not failed:
        return outcomes
    rows = [{"shard_id": shard["shard_id"], "tar": shard.get("tar") or "",
             "error": f"{type(error).__name__}: {error}"} for shard, error in failed]
    for row in rows:
        get_run_logger().error("embedding failed for shard %s: %s", row["shard_id"], row["error"])
    if store is not None and pool:
        create_table_artifact(rows, key=artifact_key(store, pool, "embed", "failed-shards"),
                              description=f"embedding of pool {pool!r}: {len(failed)} of {len(shards)} shards failed")
    named = "; ".join(f"shard {row['shard_id']}: {row['error']}" for row in rows[:5])
    more = f"; and {len(rows) - 5} more" if len(rows) > 5 else ""
    raise StageFailed(f"embedding: {len(failed)} of {len(shards)} shards failed ({named}{more}); the "
                      f"{len(shards) - len(failed)} others are embedded and kept, a rerun redoes only the failed ones")


@task(name="publish_embeddings", retries=2, retry_delay_seconds=RETRY_DELAYS[:2],
      retry_condition_fn=retry_unless_input_error)
def publish_embeddings_task(store: Store, pool: dict, spec: dict, folder: str, shards: list[dict]) -> dict:
    return embedding_manifest(Catalog(store), PoolRecord(pool["name"], pool), EmbedderSpec(**spec), folder, shards)


@task(name="embed_eval_sets", retries=1, retry_delay_seconds=RETRY_DELAYS[:1], retry_condition_fn=retry_unless_input_error)
def embed_eval_sets_task(store: Store, spec: dict, tasklist: str, target: str) -> str:
    return embed_eval_sets(store, EmbedderSpec(**spec), tasklist, target)
