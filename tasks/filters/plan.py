"""Plan an embed-and-filter run of a pool: check its inputs and name its folders.

In:  the catalog, the pool's record, an embedder spec and filter settings (as given by the user).
Out: :func:`plan_embed_filter`: the checked spec and config, the hash of the evaluation task
     list, the embedding folder (one per pool and embedder) and the evaluation embeddings' file;
     :func:`plan_filter`: the same plan for a pool that is already embedded (an imported one:
     its embedding run's manifest is given, nothing is embedded but, with ``eval_tasklist``, the
     evaluation images, by the ``embedder`` that made the pool's embeddings);
     :func:`filter_folder`: the filter run's folder, keyed by the embedding run's manifest, the
     config and the evaluation sets (and, for an incremental run, the previous run), so a different
     input never shares a run's folder; :func:`filter_run`: that folder and, for a grown pool, the
     previous run to filter against.

A run is incremental when the pool's latest filter run (``pools/<pool>/filters.json``) was made
with the same filters, evaluation sets and filter code, from an embedding run in the same
embedder folder whose every shard is in this run unchanged (same embedded files and rows, same
shard content hash in the pool manifests) and this run has more shards. Then the old shards'
row-wise decisions are copied (``reuse``) and the pool-wide filters treat the new shards against
the old ones (:mod:`tasks.filters.run`). When the latest run already covers this very embedding
run, its folder is this run's (a rerun does nothing again). Otherwise the run is from scratch.
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
from tasks.filters.run import FILTER_VERSION, stage_code_version
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
    spec = EmbedderSpec.from_dict(embedder)
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
        check_embedder(EmbedderSpec.from_dict(embedder), storage_options)
    return config


def plan_filter(catalog: Catalog, pool: PoolRecord, embeddings_manifest: dict, filters: dict | None,
                embedder: dict | None = None) -> dict:
    """The plan ``filter_folder`` and the filter tasks take, for a pool whose embedding run exists.

    ``embedder`` (an open_clip model and checkpoint, the one that made the pool's embeddings) is
    needed only with ``eval_tasklist``: it embeds the evaluation images (``eval_embeddings``).
    """
    if embeddings_manifest["inputs"].get("pool_manifest") != pool.content_hash:
        raise InputError(f"pool {pool.name!r}: the embedding run given was made from another version of the pool")
    spec = EmbedderSpec.from_dict(embedder) if embedder else None
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


def filter_folder(catalog: Catalog, plan: dict, embeddings_manifest: dict, previous: dict | None = None) -> str:
    """The run's folder; ``previous``: the run an incremental run treats as the old pool."""
    key = {"embeddings": embeddings_manifest["content_hash"], "config": plan["config"], "eval": plan["tasklist_hash"],
           "version": FILTER_VERSION}
    if previous is not None:
        key["previous"] = previous["content_hash"]
    return catalog.filter_folder(plan["pool"]["name"], hash_json(key))


def _pool_shard_hashes(catalog: Catalog, pool: str, pool_hash: str) -> dict[str, str] | None:
    path = catalog.pool_manifest_archive(pool, pool_hash)
    if not catalog.store.exists(path):
        return None
    return {shard["shard_id"]: shard["content_hash"] for shard in catalog.store.read_json(path)["outputs"]["shards"]}


SAME_RUN = "this embedding run was filtered with these settings already"
INCREMENTAL = "incremental: the pool grew since its latest filter run"


def previous_run(catalog: Catalog, plan: dict, embeddings_manifest: dict) -> tuple[dict | None, str]:
    """The pool's latest filter run and ``INCREMENTAL`` when this run can be incremental against it,
    the latest run and ``SAME_RUN`` when it is this very run (finished), else None and why not."""
    pool = plan["pool"]["name"]
    latest = catalog.latest_filter_run(pool)
    if latest is None:
        return None, "no earlier filter run of the pool"
    if latest["config"] != plan["config"] or latest["inputs"].get("eval_tasklist") != plan["tasklist_hash"]:
        return None, "the latest filter run used other filter settings or evaluation sets"
    if latest["code_version"] != stage_code_version():
        return None, "the latest filter run was made by another version of the filter code"
    if not catalog.finished(catalog.store.relative(latest["outputs"]["folder"])):
        return None, "the latest filter run's outputs are gone"
    if latest["inputs"].get("embeddings") == embeddings_manifest["content_hash"]:
        return latest, SAME_RUN
    folder = catalog.store.relative(embeddings_manifest["outputs"]["folder"])
    archived = catalog.archived_manifest(folder, latest["inputs"]["embeddings"])
    if not catalog.store.exists(archived):
        return None, "the latest filter run's embeddings were made by another embedder (or are gone)"
    old_embeddings = catalog.store.read_json(archived)
    old = {shard["shard_id"]: shard for shard in old_embeddings["outputs"]["shards"]}
    now = {shard["shard_id"]: shard for shard in embeddings_manifest["outputs"]["shards"]}
    if set(old) != set(latest["outputs"]["decisions"]):
        return None, "the latest filter run does not cover its embedding run's shards"
    changed = [s for s in old if now.get(s) != old[s]]
    if changed or len(now) == len(old):
        return None, (f"shards of the earlier pool changed or are gone ({changed[:3]})" if changed
                      else "the pool has no new shard")
    old_hashes = _pool_shard_hashes(catalog, pool, old_embeddings["inputs"].get("pool_manifest", ""))
    new_hashes = {shard["shard_id"]: shard["content_hash"] for shard in plan["pool"]["outputs"]["shards"]}
    if old_hashes is None or any(old_hashes.get(s) != new_hashes.get(s) for s in old):
        return None, "the earlier pool's shards cannot be shown to be unchanged"
    return latest, INCREMENTAL


def filter_run(catalog: Catalog, plan: dict, embeddings_manifest: dict) -> dict:
    """This filter run: ``folder``; ``previous`` (the run an incremental run treats as the old pool,
    else None); ``reuse`` (per old shard id, its row-wise decisions to copy); ``why`` (why the run is
    or is not incremental)."""
    previous, why = previous_run(catalog, plan, embeddings_manifest)
    if why == SAME_RUN:
        return {"folder": catalog.store.relative(previous["outputs"]["folder"]), "previous": None, "reuse": {},
                "why": why}
    if previous is None:
        return {"folder": filter_folder(catalog, plan, embeddings_manifest), "previous": None, "reuse": {}, "why": why}
    old_folder = catalog.store.relative(previous["outputs"]["folder"])
    return {"folder": filter_folder(catalog, plan, embeddings_manifest, previous), "previous": previous,
            "reuse": {s: catalog.filter_rows(old_folder, s) for s in previous["outputs"]["decisions"]}, "why": why}
