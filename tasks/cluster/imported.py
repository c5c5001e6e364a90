"""Register embeddings computed elsewhere as a pool, so that ``curate`` can cluster them.

In:  the catalog, a pool name, and an iterable of shards: ``(uids, embeddings)`` or
     ``(uids, embeddings, keep)`` (``keep`` defaults to all true).
Out: the records a downloaded, embedded and filtered pool has, through the catalog's paths: a
     pool manifest (stage ``import``; every shard with a ``shard_id`` minted here, and no tar), an
     embedding run (per shard the embeddings and a ``uid`` table) and a filter run (per shard
     ``uid`` and ``keep``), each manifest written after its files, and last the pool's pointer to
     those runs. Shards are written one at a time, so a pool larger than memory can be imported
     from a generator. The pool has no captions or images: clustering runs on it, not the filters.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from tasks.common.catalog import Catalog, check_name, shard_id
from tasks.common.errors import InputError
from tasks.common.hashing import code_version, hash_json
from tasks.common.manifest import Manifest

IMPORT_VERSION = 2


def import_embeddings(catalog: Catalog, pool_name: str, shards: Iterable[tuple]) -> dict:
    """Write the shards and the three manifests; returns ``{"pool", "embeddings", "filters"}`` manifests."""
    check_name(pool_name, "pool_name")
    store = catalog.store
    pool_shards, embedded, decisions, kept, dim = [], [], {}, 0, None
    embeddings_folder = catalog.embedding_folder(pool_name, "imported")
    for number, shard in enumerate(shards):
        uids, matrix = np.asarray(shard[0]), np.asarray(shard[1])
        keep = np.ones(len(uids), dtype=bool) if len(shard) < 3 else np.asarray(shard[2], dtype=bool)
        if matrix.ndim != 2 or len(matrix) != len(uids) or len(keep) != len(uids):
            raise InputError(f"imported shard {number}: {len(uids)} uids, embeddings of shape {matrix.shape}, "
                             f"{len(keep)} keep flags; they must align")
        if dim is not None and matrix.shape[1] != dim:
            raise InputError(f"imported shard {number}: dimension {matrix.shape[1]}, earlier shards {dim}")
        dim = matrix.shape[1]
        content = hash_json(uids.astype(str).tolist())
        ident = shard_id(0, content, number)
        files = catalog.embedded_shard(embeddings_folder, ident)
        table = store.write_bytes(files.parquet, pd.DataFrame({"uid": uids}).to_parquet(index=False))
        store.write_npy(files.text_embeddings, np.zeros((len(uids), 0), dtype=np.float16))
        embedded.append({**files.to_dict(), "parquet": table, "image_embeddings": store.write_npy(files.image_embeddings, matrix),
                         "text_embeddings": store.uri(files.text_embeddings), "rows": int(len(uids))})
        pool_shards.append({"shard_id": ident, "tar": None, "parquet": table, "n_rows": int(len(uids)),
                            "n_success": int(len(uids)), "content_hash": content})
        decisions[ident] = pd.DataFrame({"uid": uids, "keep": keep})
        kept += int(keep.sum())
    if not pool_shards:
        raise InputError(f"imported pool {pool_name!r}: no shard given")
    total = sum(s["n_rows"] for s in pool_shards)
    version = code_version("import", IMPORT_VERSION)
    pool = catalog.publish_pool(Manifest(
        stage="import", name=pool_name, store=store.root, config={"imported": "embeddings"}, code_version=version,
        outputs={"folder": store.uri(catalog.pool_folder(pool_name)), "shards": pool_shards},
        rows={"input": total, "success": total}))
    embeddings = catalog.publish(embeddings_folder, Manifest(
        stage="embed", name=pool_name, store=store.root, config={"imported": True}, code_version=version,
        inputs={"pool_manifest": pool["content_hash"]},
        outputs={"folder": store.uri(embeddings_folder), "shards": embedded},
        rows={"samples": total, "embedded": total}), archive=True)
    filters_folder = catalog.filter_folder(pool_name, hash_json({"embeddings": embeddings["content_hash"]}))
    written = {ident: store.write_bytes(catalog.filter_decisions(filters_folder, ident), frame.to_parquet(index=False))
               for ident, frame in decisions.items()}
    filters = catalog.publish(filters_folder, Manifest(
        stage="filter", name=pool_name, store=store.root, config={"imported": True}, code_version=version,
        inputs={"embeddings": embeddings["content_hash"], "pool_manifest": pool["content_hash"]},
        outputs={"folder": store.uri(filters_folder), "decisions": written}, rows={"samples": total, "kept": kept}))
    catalog.set_latest_runs(pool_name, embeddings, filters)
    return {"pool": pool, "embeddings": embeddings, "filters": filters}
