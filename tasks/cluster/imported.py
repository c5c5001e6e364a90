"""Register embeddings computed elsewhere as a pool, so that ``curate`` can cluster them.

In:  the store, a pool name, and an iterable of shards: ``(uids, embeddings)`` or
     ``(uids, embeddings, keep)`` (``keep`` defaults to all true).
Out: the same layout the embed-and-filter stage writes: ``embeddings/<pool>/imported/<shard>.img.npy``
     and ``.parquet`` (uids), ``filters/<pool>/imported/decisions/<shard>.parquet`` (uid, keep),
     both manifests, and ``pools/<pool>/filters.json`` (written last). Shards are written one at a
     time, so a pool larger than memory can be imported from a generator.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from tasks.common.errors import InputError
from tasks.common.hashing import code_version
from tasks.common.manifest import Manifest
from tasks.common.store import Store


def import_embeddings(store: Store, pool_name: str, shards: Iterable[tuple]) -> dict:
    embeddings_folder = f"embeddings/{pool_name}/imported"
    filters_folder = f"filters/{pool_name}/imported"
    entries, decisions, kept, total, dim = [], [], 0, 0, None
    for number, shard in enumerate(shards):
        uids, matrix = np.asarray(shard[0]), np.asarray(shard[1])
        keep = np.ones(len(uids), dtype=bool) if len(shard) < 3 else np.asarray(shard[2], dtype=bool)
        name = f"{number:05d}"
        if matrix.ndim != 2 or len(matrix) != len(uids) or len(keep) != len(uids):
            raise InputError(f"imported shard {number}: {len(uids)} uids, embeddings of shape {matrix.shape}, "
                             f"{len(keep)} keep flags; they must align")
        if dim is not None and matrix.shape[1] != dim:
            raise InputError(f"imported shard {number}: dimension {matrix.shape[1]}, earlier shards {dim}")
        dim = matrix.shape[1]
        store.write_npy(f"{embeddings_folder}/{name}.img.npy", matrix)
        store.write_bytes(f"{embeddings_folder}/{name}.parquet", pd.DataFrame({"uid": uids}).to_parquet(index=False))
        store.write_bytes(f"{filters_folder}/decisions/{name}.parquet",
                          pd.DataFrame({"uid": uids, "keep": keep}).to_parquet(index=False))
        entries.append({"name": name, "parquet": store.uri(f"{embeddings_folder}/{name}.parquet"),
                        "image_embeddings": store.uri(f"{embeddings_folder}/{name}.img.npy"), "rows": int(len(uids))})
        decisions.append(store.uri(f"{filters_folder}/decisions/{name}.parquet"))
        kept += int(keep.sum())
        total += len(uids)
    if not entries:
        raise InputError(f"imported pool {pool_name!r}: no shard given")
    embedded = Manifest(stage="embed", name=pool_name, store=store.root, config={"imported": True},
                        code_version=code_version("import", 1), outputs={"shards": entries},
                        rows={"samples": total, "embedded": total})
    filtered = Manifest(stage="filter", name=pool_name, store=store.root, config={"imported": True},
                        code_version=code_version("import", 1), inputs={"embeddings": embedded.content_hash},
                        outputs={"decisions": decisions}, rows={"samples": total, "kept": kept})
    embedded.write(store, f"{embeddings_folder}/manifest.json")
    filtered.write(store, f"{filters_folder}/manifest.json")
    store.write_json(f"pools/{pool_name}/filters.json",
                     {"embeddings": store.uri(f"{embeddings_folder}/manifest.json"),
                      "filters": store.uri(f"{filters_folder}/manifest.json")})
    return {"embeddings": embedded.to_dict(), "filters": filtered.to_dict()}
