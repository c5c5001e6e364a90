"""Prefect tasks that plan an embed-and-filter run of a pool and publish its manifests."""

from __future__ import annotations

import fsspec
from prefect import task

from tasks.common.errors import InputError
from tasks.common.hashing import hash_json
from tasks.common.prefect_support import RETRY_DELAYS, retry_unless_input_error, store_from
from tasks.embed.spec import EmbedderSpec
from tasks.filters.config import FilterConfig
from tasks.filters.plan import plan_folders, stage_manifests
from tasks.train.launch import known_models


@task(name="plan_embed_filter", retries=1, retry_delay_seconds=RETRY_DELAYS[:1],
      retry_condition_fn=retry_unless_input_error)
def plan_embed_filter(store: str, pool_name: str, embedder: dict, filters: dict | None,
                      storage_options: dict | None = None) -> dict:
    """Check the inputs; return the pool manifest, the shards to embed and the output folders."""
    the_store = store_from(store, storage_options)
    manifest_path = f"pools/{pool_name}/manifest.json"
    if not the_store.exists(manifest_path):
        raise InputError(f"pool {pool_name!r}: no manifest at {the_store.uri(manifest_path)}; run the download first")
    manifest = the_store.read_json(manifest_path)
    spec = EmbedderSpec(**embedder)
    spec.validate()
    if spec.model not in known_models():
        raise InputError(f"embedder model {spec.model!r}: not an open_clip model config")
    if "/" in spec.checkpoint:  # a file, not a pretrained tag
        fs, path = fsspec.core.url_to_fs(spec.checkpoint)
        if not fs.exists(path):
            raise InputError(f"embedder checkpoint {spec.checkpoint}: no such file")
    config = FilterConfig.from_dict(filters)
    tasklist_hash = ""
    if config.eval_tasklist:
        try:
            with fsspec.open(config.eval_tasklist, "rb") as handle:
                tasklist_hash = hash_json(handle.read().decode())
        except FileNotFoundError as exc:
            raise InputError(f"filters eval_tasklist {config.eval_tasklist}: no such file") from exc
    shards = [s for s in manifest["outputs"]["shards"] if s.get("n_success", 0) > 0]
    return {"manifest": manifest, "shards": shards, "spec": spec.to_dict(), "config": config.to_dict(),
            "folders": plan_folders(manifest, spec, config, tasklist_hash)}


@task(name="publish_embed_filter_manifests", retries=2, retry_delay_seconds=RETRY_DELAYS[:2])
def publish_embed_filter_manifests(store: str, plan: dict, shards: list[dict], report: dict,
                                   storage_options: dict | None = None) -> dict:
    the_store = store_from(store, storage_options)
    embedded, filtered = stage_manifests(the_store.root, plan["manifest"], EmbedderSpec(**plan["spec"]),
                                         FilterConfig.from_dict(plan["config"]), plan["folders"], shards, report)
    embedded.write(the_store, f"{plan['folders']['embeddings']}/manifest.json")
    filtered.write(the_store, f"{plan['folders']['filters']}/manifest.json")
    the_store.write_json(f"pools/{plan['manifest']['name']}/filters.json",
                         {"embeddings": the_store.uri(plan["folders"]["embeddings"] + "/manifest.json"),
                          "filters": the_store.uri(plan["folders"]["filters"] + "/manifest.json")})
    return {"embeddings": embedded.to_dict(), "filters": filtered.to_dict()}
