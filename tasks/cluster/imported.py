"""Register embeddings computed elsewhere as a pool, so that ``curate`` can cluster them.

In:  the catalog, a pool name, and an iterable of shards: ``(uids, embeddings)`` or
     ``(uids, embeddings, keep)`` (``keep`` defaults to all true).
Out: the records a downloaded, embedded and filtered pool has, through the catalog's paths and
     written by the import stage's own shard writer and publish function
     (:func:`tasks.pool_import.run.write_shard`, :func:`~tasks.pool_import.run.publish_imported`),
     so there is one way to put an embedded pool in the store: per shard (its ``shard_id`` minted
     here, from its uids) the pool's table, the ``.img.npy`` (as given), an empty ``.txt.npy`` and,
     last, the embed stage's table (no captions: ``text`` empty, ``clip_score`` NaN, no sizes or
     sha256); then the embedding run's and the pool's manifests (stage ``import``), a filter run
     (per shard ``uid``, ``key``, ``text`` and ``keep``) and last the pool's pointer to those runs.
     Shards are written one at a time, so a pool larger than memory can be imported from a
     generator. Unlike :mod:`tasks.pool_import` the uids are taken as they are (any strings,
     unique or not: this registers arrays for clustering, it does not check a released pool), and
     the filters do not run: the pool has no captions or images.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.common.catalog import Catalog, check_name, shard_id
from tasks.common.errors import InputError
from tasks.common.hashing import code_version, hash_json
from tasks.common.manifest import Manifest
from tasks.pool_import.run import publish_imported, write_shard, zero_thumbnails

IMPORT_VERSION = 3


def _tables(uids: np.ndarray, number: int) -> tuple[pa.Table, pa.Table]:
    rows = len(uids)
    uid = pa.array(uids.astype(str).astype(object), pa.string())
    key = pa.array(np.char.add(f"{number:05d}", np.char.zfill(np.arange(rows).astype(str), 6)).astype(object),
                   pa.string())
    empty = pa.array(np.full(rows, "", dtype=object), pa.string())
    sizes = {name: pa.nulls(rows, pa.int64()) for name in ("width", "height", "original_width", "original_height")}
    pool = pa.table({"uid": uid, "key": key, "url": pa.nulls(rows, pa.string()), "caption": empty,
                     "status": pa.array(np.full(rows, "success", dtype=object), pa.string()),
                     "error_message": pa.nulls(rows, pa.string()), **sizes, "sha256": pa.nulls(rows, pa.string())})
    embedded = pa.table({"uid": uid, "key": key, "text": empty,
                         "clip_score": pa.array(np.full(rows, np.nan, dtype=np.float32)),
                         "embed_ok": pa.array(np.ones(rows, dtype=bool)), "embed_reason": empty,
                         "phash": pa.array(np.zeros(rows, dtype=np.int64)), "thumb": zero_thumbnails(rows),
                         "sha256": pa.nulls(rows, pa.string()), **sizes})
    return pool, embedded


def import_embeddings(catalog: Catalog, pool_name: str, shards: Iterable[tuple]) -> dict:
    """Write the shards and the three manifests; returns ``{"pool", "embeddings", "filters"}`` manifests."""
    check_name(pool_name, "pool_name")
    store = catalog.store
    summaries, decisions, kept, dim = [], {}, 0, None
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
        table = catalog.imported_shard_table(pool_name, ident)
        pool_table, embed_table = _tables(uids, number)
        write_shard(store, table, pool_table, files, matrix, np.zeros((len(uids), 0), dtype=np.float16), embed_table)
        summaries.append({**files.to_dict(), "rows": int(len(uids)), "table": table, "content_hash": content})
        decisions[ident] = pd.DataFrame({"uid": uids, "key": embed_table["key"].to_numpy(zero_copy_only=False),
                                         "text": "", "keep": keep})
        kept += int(keep.sum())
    if not summaries:
        raise InputError(f"imported pool {pool_name!r}: no shard given")
    total = sum(s["rows"] for s in summaries)
    version = code_version("import", IMPORT_VERSION)
    published = publish_imported(catalog, pool_name, embeddings_folder, summaries, {"imported": "embeddings"}, {},
                                 version=version)
    pool, embeddings = published["pool"], published["embeddings"]
    filters_folder = catalog.filter_folder(pool_name, hash_json({"embeddings": embeddings["content_hash"]}))
    written = {ident: store.write_bytes(catalog.filter_decisions(filters_folder, ident), frame.to_parquet(index=False))
               for ident, frame in decisions.items()}
    filters = catalog.publish(filters_folder, Manifest(
        stage="filter", name=pool_name, store=store.root, config={"imported": True}, code_version=version,
        inputs={"embeddings": embeddings["content_hash"], "pool_manifest": pool["content_hash"]},
        outputs={"folder": store.uri(filters_folder), "decisions": written}, rows={"samples": total, "kept": kept}))
    catalog.set_latest_runs(pool_name, embeddings, filters)
    return {"pool": pool, "embeddings": embeddings, "filters": filters}
