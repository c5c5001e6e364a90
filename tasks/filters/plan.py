"""Plan an embed-and-filter run of a pool: check its inputs and name its folders.

In:  the catalog, the pool's record, an embedder spec and filter settings (as given by the user).
Out: :func:`plan_embed_filter`: the checked spec and config, the hash of the evaluation task
     list, the embedding folder (one per pool and embedder) and the evaluation embeddings' file;
     :func:`plan_filter`: the same plan for a pool that is already embedded (an imported one:
     its embedding run's manifest is given, nothing is embedded but, with ``eval_tasklist``, the
     evaluation images, by the ``embedder`` that made the pool's embeddings);
     :func:`filter_folder`: the filter run's folder, keyed by the embedding run's manifest, the
     config and the evaluation sets, so a different input never shares a run's folder.
"""

from __future__ import annotations

import fsspec

from tasks.common.catalog import Catalog, PoolRecord
from tasks.common.errors import InputError
from tasks.common.hashing import hash_json
from tasks.embed.run import stage_code_version as embed_code_version
from tasks.embed.spec import EmbedderSpec
from tasks.evaluate.runner import tasklist_content_hash
from tasks.filters.config import FilterConfig
from tasks.filters.run import FILTER_VERSION
from tasks.common.models import known_models


def check_embedder(spec: EmbedderSpec, storage_options: dict | None = None) -> None:
    """The model is an open_clip config and a checkpoint file exists, before any shard is read."""
    spec.validate()
    if spec.model not in known_models():
        raise InputError(f"embedder model {spec.model!r}: not an open_clip model config")
    if "/" in spec.checkpoint:  # a file, not a pretrained tag
        fs, path = fsspec.core.url_to_fs(spec.checkpoint, **(storage_options or {}))
        if not fs.exists(path):
            raise InputError(f"embedder checkpoint {spec.checkpoint}: no such file")


def tasklist_hash(config: FilterConfig, storage_options: dict | None = None) -> str:
    """The content hash of the evaluation task list ("" without one)."""
    if not config.eval_tasklist:
        return ""
    try:
        return tasklist_content_hash(config.eval_tasklist, storage_options)
    except InputError as exc:
        raise InputError(f"filters eval_tasklist {config.eval_tasklist}: no such file") from exc


def plan_embed_filter(catalog: Catalog, pool: PoolRecord, embedder: dict, filters: dict | None) -> dict:
    """Check the inputs; return the spec, config, folders and the shards to embed (those with samples)."""
    spec = EmbedderSpec(**embedder)
    check_embedder(spec, catalog.store.fsspec_options() if "://" in spec.checkpoint else None)
    config = FilterConfig.from_dict(filters)
    eval_hash = tasklist_hash(config, catalog.store.options_for(config.eval_tasklist))
    # the embedder and the embedding code's version: a new version never reuses older files
    embeddings = catalog.embedding_folder(pool.name, hash_json({"embedder": spec.key, "code": embed_code_version()}))
    return {"pool": pool.manifest, "spec": spec.to_dict(), "config": config.to_dict(), "tasklist_hash": eval_hash,
            "embeddings": embeddings,
            "eval_embeddings": catalog.eval_embeddings(embeddings, eval_hash) if config.eval_tasklist else None,
            "shards": [shard.to_dict() for shard in pool.shards_with_samples]}


def check_filters(filters: dict | None, embedder: dict | None, storage_options: dict | None = None,
                  what: str = "filters") -> FilterConfig:
    """The filter settings for an already embedded pool, checked: eval-set dedup needs the pool's embedder."""
    config = FilterConfig.from_dict(filters)
    if config.eval_tasklist and not embedder:
        raise InputError(f"{what} eval_tasklist: eval-set dedup compares the evaluation images with the pool's image "
                         "embeddings, so it needs the model that made them: give embedder (e.g. {'model': 'ViT-L-14', "
                         "'checkpoint': 'openai'} for DataComp's l14)")
    if embedder:
        check_embedder(EmbedderSpec(**embedder), storage_options)
    return config


def plan_filter(catalog: Catalog, pool: PoolRecord, embeddings_manifest: dict, filters: dict | None,
                embedder: dict | None = None) -> dict:
    """The plan ``filter_folder`` and the filter tasks take, for a pool whose embedding run exists.

    ``embedder`` (an open_clip model and checkpoint, the one that made the pool's embeddings) is
    needed only with ``eval_tasklist``: it embeds the evaluation images (``eval_embeddings``).
    """
    if embeddings_manifest["inputs"].get("pool_manifest") != pool.content_hash:
        raise InputError(f"pool {pool.name!r}: the embedding run given was made from another version of the pool")
    spec = EmbedderSpec(**embedder) if embedder else None
    options = catalog.store.fsspec_options() if spec and "://" in spec.checkpoint else None
    config = check_filters(filters, embedder, options)
    eval_hash = tasklist_hash(config, catalog.store.options_for(config.eval_tasklist))
    if eval_hash:  # the evaluation images' embeddings depend on the embedder too, and so do the decisions
        eval_hash = hash_json({"tasklist": eval_hash, "embedder": spec.key})
    folder = catalog.store.relative(embeddings_manifest["outputs"]["folder"])
    return {"pool": pool.manifest, "spec": spec.to_dict() if spec else None, "config": config.to_dict(),
            "tasklist_hash": eval_hash, "embeddings": folder,
            "eval_embeddings": catalog.eval_embeddings(folder, eval_hash) if config.eval_tasklist else None,
            "shards": embeddings_manifest["outputs"]["shards"]}


def filter_folder(catalog: Catalog, plan: dict, embeddings_manifest: dict) -> str:
    key = hash_json({"embeddings": embeddings_manifest["content_hash"], "config": plan["config"],
                     "eval": plan["tasklist_hash"], "version": FILTER_VERSION})
    return catalog.filter_folder(plan["pool"]["name"], key)
