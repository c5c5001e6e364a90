"""A pool's filtered image embeddings, streamed from the store shard by shard as a Dask array.

In:  the store and a resolved :class:`~tasks.common.catalog.PoolSnapshot` whose embedding and
     filter runs exist (joined on shard ids: each shard's embeddings with its decisions).
Out: :class:`PoolEmbeddings`: per shard the embeddings file, the decisions file, its row and kept
     counts; :meth:`PoolEmbeddings.as_dask_array`, one block per shard holding only the kept rows;
     :meth:`PoolEmbeddings.write_uids`, the ``uid`` of every kept sample in order with its
     ``shard_id`` and ``row`` in that shard (what lets a grown pool's samples be matched with a
     tree's inputs: :mod:`tasks.cluster.assign`), written to the store one shard at a time. Only ``.npy`` headers and the ``keep`` column are read here; the
     embeddings themselves are read by the Dask workers. Nothing here grows with the pool but the
     list of shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.common.catalog import PoolSnapshot
from tasks.common.errors import InputError, StageFailed
from tasks.common.store import Store

INPUTS_SCHEMA = pa.schema([("uid", pa.string()), ("shard_id", pa.string()), ("row", pa.int64())])


@dataclass(frozen=True)
class ShardInput:
    shard_id: str
    embeddings: str  # store-relative .img.npy
    decisions: str  # store-relative decisions parquet
    rows: int
    kept: int


@dataclass
class PoolEmbeddings:
    store: Store
    shards: list[ShardInput]
    dim: int
    dtype: str

    @property
    def rows(self) -> int:
        return int(sum(s.kept for s in self.shards))

    def write_uids(self, target: str) -> str:
        """The kept samples' ``uid``, ``shard_id`` and ``row``, in block order, as a parquet file at
        ``target`` (one row group per shard)."""
        def pieces():
            for shard in self.shards:
                with self.store.open(shard.decisions) as handle:
                    frame = pd.read_parquet(handle, columns=["uid", "keep"])
                rows = np.flatnonzero(frame["keep"].to_numpy(dtype=bool))
                yield inputs_table(frame["uid"].to_numpy()[rows], shard.shard_id, rows)

        return write_inputs(self.store, target, pieces())

    def as_dask_array(self):
        import dask
        import dask.array as da

        blocks = [da.from_delayed(dask.delayed(load_kept_rows, pure=True)(self.store, s.embeddings, s.decisions),
                                  shape=(s.kept, self.dim), dtype=self.dtype)
                  for s in self.shards if s.kept]
        if not blocks:
            raise InputError("pool embeddings: the filters kept no sample; nothing to cluster")
        return da.concatenate(blocks, axis=0)


def inputs_table(uids: np.ndarray, shard: str, rows: np.ndarray):
    """One shard's piece of a tree's ``inputs.parquet``: its inputs' uids, shard id and rows."""
    return pa.table({"uid": pa.array(np.asarray(uids).astype(str), type=pa.string()),
                     "shard_id": pa.array(np.full(len(rows), shard, dtype=object), type=pa.string()),
                     "row": pa.array(np.asarray(rows, dtype=np.int64))}, schema=INPUTS_SCHEMA)


def write_inputs(store: Store, target: str, pieces) -> str:
    """A tree's ``inputs.parquet`` at ``target`` from :func:`inputs_table` pieces, one row group each,
    written locally and moved into the store whole (never half-written there)."""
    import os
    import tempfile

    import pyarrow.parquet as pq

    fd, local = tempfile.mkstemp(suffix=".parquet")
    os.close(fd)
    try:
        with pq.ParquetWriter(local, INPUTS_SCHEMA) as writer:
            for piece in pieces:
                writer.write_table(piece)
        return store.put_file(local, target, move=True)
    finally:
        if os.path.exists(local):
            os.remove(local)


def npy_header(store: Store, rel: str) -> tuple[tuple[int, ...], np.dtype]:
    with store.open(rel) as handle:
        major, _ = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(handle)
    return shape, dtype


def load_kept_rows(store: Store, embeddings: str, decisions: str) -> np.ndarray:
    """The rows of one shard's embeddings that the filters kept."""
    matrix = store.read_npy(embeddings)
    with store.open(decisions) as handle:
        keep = pd.read_parquet(handle, columns=["keep"])["keep"].to_numpy(dtype=bool)
    return matrix[keep]


def pool_embeddings(store: Store, snapshot: PoolSnapshot) -> PoolEmbeddings:
    embedded, filtered = snapshot.require_filtered("clustering")
    decisions = filtered.decisions
    shards, dims = [], {}
    dtype_name = "float16"
    for shard in embedded.shards:
        embeddings = store.relative(shard.image_embeddings)
        if shard.shard_id not in decisions:
            raise StageFailed(f"shard {shard.shard_id}: no filter decisions in {filtered.manifest['outputs']['folder']}")
        decision_file = store.relative(decisions[shard.shard_id])
        shape, dtype = npy_header(store, embeddings)
        with store.open(decision_file) as handle:
            frame = pd.read_parquet(handle, columns=["keep"])
        if len(frame) != shape[0]:
            raise StageFailed(f"{store.uri(embeddings)}: {shape[0]} rows but {len(frame)} filter decisions")
        dims.setdefault(shape[1], store.uri(embeddings))
        kept = frame["keep"].to_numpy(dtype=bool)
        shards.append(ShardInput(shard.shard_id, embeddings, decision_file, int(shape[0]), int(kept.sum())))
        dtype_name = str(dtype)
    if len(dims) > 1:
        raise InputError("pool embeddings: shards of different dimensions: "
                         + ", ".join(f"{d} in {uri}" for d, uri in dims.items()))
    if not shards:
        raise InputError(f"pool {snapshot.pool.name!r}: no embedded shard to cluster")
    return PoolEmbeddings(store=store, shards=shards, dim=next(iter(dims)), dtype=dtype_name)
