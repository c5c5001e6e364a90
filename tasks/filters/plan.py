"""Where an embed-and-filter run of a pool writes, and the manifests that describe it.

In:  the pool manifest, an embedder spec, a filter config (and the evaluation task list's bytes).
Out: :func:`plan_folders`: the embeddings folder (one per pool and embedder) and the filter run
     folder (one per pool, embedder, filter config and evaluation sets); :func:`stage_manifests`:
     the :class:`~tasks.common.manifest.Manifest` of each.
"""

from __future__ import annotations

from tasks.common.hashing import code_version, hash_json
from tasks.common.manifest import Manifest
from tasks.embed.run import EMBED_VERSION
from tasks.embed.spec import EmbedderSpec
from tasks.filters.config import FilterConfig
from tasks.filters.run import FILTER_VERSION


def plan_folders(pool_manifest: dict, spec: EmbedderSpec, config: FilterConfig, tasklist_hash: str) -> dict:
    pool = pool_manifest["name"]
    embeddings = f"embeddings/{pool}/{spec.key}"
    filter_key = hash_json({"pool": pool_manifest["content_hash"], "embedder": spec.key, "config": config.to_dict(),
                            "eval": tasklist_hash, "version": FILTER_VERSION})[:16]
    return {"embeddings": embeddings, "filters": f"filters/{pool}/{filter_key}",
            "eval_embeddings": f"{embeddings}/eval-{tasklist_hash[:16]}.img.npy" if config.eval_tasklist else None}


def stage_manifests(store_root: str, pool_manifest: dict, spec: EmbedderSpec, config: FilterConfig, folders: dict,
                    shards: list[dict], report: dict) -> tuple[Manifest, Manifest]:
    pool = pool_manifest["name"]
    base = store_root.rstrip("/")
    embedded = Manifest(
        stage="embed", name=pool, store=store_root, config=spec.to_dict(),
        code_version=code_version("embed", EMBED_VERSION, ("open_clip_torch", "torch")),
        inputs={"pool_manifest": pool_manifest["content_hash"]},
        outputs={"shards": [{"name": s["name"], "parquet": f"{base}/{s['parquet']}",
                             "image_embeddings": f"{base}/{s['parquet'].removesuffix('.parquet')}.img.npy",
                             "text_embeddings": f"{base}/{s['parquet'].removesuffix('.parquet')}.txt.npy",
                             "caption_embeddings": (f"{base}/{s['parquet'].removesuffix('.parquet')}.cap.npy"
                                                    if spec.caption_model else None),
                             "rows": s["rows"]} for s in shards]},
        rows={"samples": sum(s["rows"] for s in shards), "embedded": sum(s["embedded"] for s in shards)},
        stats={"not_embedded": {k: sum(s["reasons"].get(k, 0) for s in shards)
                                for k in sorted({r for s in shards for r in s["reasons"]})}},
    )
    filtered = Manifest(
        stage="filter", name=pool, store=store_root, config=config.to_dict(),
        code_version=code_version("filter", FILTER_VERSION),
        inputs={"embeddings": embedded.content_hash, "pool_manifest": pool_manifest["content_hash"]},
        outputs={"decisions": [f"{base}/{folders['filters']}/decisions/{s['name']}.parquet" for s in shards],
                 "report": f"{base}/{folders['filters']}/report.json",
                 "plot": f"{base}/{folders['filters']}/report.png"},
        rows={"samples": report["samples"], "kept": report["kept"]},
        stats={"removed_by": report["removed_by"], "skipped": report["skipped"]},
    )
    return embedded, filtered
