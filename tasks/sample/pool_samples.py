"""The samples a curation recipe chooses from, held per shard: numbers in the driver, columns on the workers.

In:  the store, a resolved :class:`~tasks.common.catalog.PoolSnapshot` (the pool and, when the
     embed-and-filter stage has run, its filter run's decisions, joined on shard ids) and optionally
     a Dask client (``None``: the same per-shard functions run in this process).
Out: :func:`pool_table`: a :class:`PoolTable`. Every successfully downloaded sample has a global
     row number, its shard's offset plus its position among the shard's samples (the order of the
     shard's decisions file, or of its downloaded rows when no filter ran), so pool order is
     shard order, then row order. The table holds per shard its :class:`PoolShard` record and
     sample count, and per sample one byte: ``kept``, the filters' overall decision (all true when
     no filter ran). It never holds a caption or a uid string: :func:`read_shard` (run by worker
     tasks) reads a shard's ``uid``, ``key``, ``text`` and ``kept`` columns when a step needs them,
     :func:`read_decisions` any other column of its filter decisions (a DataComp baseline's
     ``keep_basic``, ``reason_basic``, CLIP scores), and :func:`map_shards` runs one task per shard
     on the client.

Building the table is one task per shard (its ``kept`` column and a 64-bit fingerprint of every
uid); the uids' uniqueness over the pool is checked on the fingerprints (8 bytes a sample, freed
at once), and a fingerprint shared by two rows is settled by reading those rows' uids.

:func:`whole_pool_frame` (columns of every sample in one pandas frame) is for the demo's checks
against its planted truth and for tests, on small pools only; no stage uses it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from tasks.common.catalog import PoolSnapshot
from tasks.common.errors import InputError
from tasks.common.store import Store

COLUMNS = ("uid", "key", "text", "kept")


@dataclass(frozen=True)
class PoolShard:
    """One shard of the pool table: where its samples' columns are read from."""

    number: int  # position among the pool's shards with samples
    shard_id: str
    tar: str | None
    parquet: str  # img2dataset's table (URI)
    decisions: str | None  # the filter run's decisions (URI), row-aligned with the shard's embeddings
    n_success: int


def pool_shards(snapshot: PoolSnapshot) -> list[PoolShard]:
    """The snapshot's shards with samples, each with its decisions file when the pool was filtered."""
    pool_name = snapshot.pool.name
    decisions = snapshot.filters.decisions if snapshot.filters is not None else None
    shards = []
    for number, shard in enumerate(snapshot.pool.shards_with_samples):
        if decisions is not None and shard.shard_id not in decisions:
            raise InputError(f"pool {pool_name!r}: shard {shard.shard_id} has no filter decisions; "
                             f"rerun pool_refresh with the embedder")
        shards.append(PoolShard(number=number, shard_id=shard.shard_id, tar=shard.tar, parquet=shard.parquet,
                                decisions=decisions[shard.shard_id] if decisions is not None else None,
                                n_success=shard.n_success))
    return shards


def read_shard(store: Store, shard: PoolShard, columns: Sequence[str] = ("uid", "key", "text")) -> pd.DataFrame:
    """One shard's samples in pool-table order, with ``columns`` among uid, key, text and kept.

    ``text`` is the caption with a missing one read as ``""``; ``kept`` is the filters' decision
    (all true when no filter ran).
    """
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise InputError(f"columns: unknown {unknown}; expected some of {list(COLUMNS)}")
    if shard.decisions is not None:
        names = ["keep" if name == "kept" else name for name in columns]
        with store.open(store.relative(shard.decisions)) as handle:
            frame = pd.read_parquet(handle, columns=names).rename(columns={"keep": "kept"})
    else:
        names = [{"text": "caption"}.get(name, name) for name in columns if name != "kept"]
        with store.open(store.relative(shard.parquet)) as handle:
            frame = pd.read_parquet(handle, columns=[*names, "status"])
        frame = frame.loc[frame["status"] == "success", names].rename(columns={"caption": "text"})
        if "kept" in columns:
            frame["kept"] = True
    frame = frame.reset_index(drop=True)[list(columns)]
    if "text" in columns:
        frame["text"] = frame["text"].fillna("").astype(str)
    if "kept" in columns:
        frame["kept"] = frame["kept"].to_numpy(dtype=bool)
    return frame


def read_decisions(store: Store, shard: PoolShard, columns: Sequence[str]) -> pd.DataFrame:
    """``columns`` of the shard's filter decisions (any of them: ``keep_basic``, ``reason_basic``,
    ``clip_score``, ...), row-aligned with the table's rows of the shard; an error names the file and
    the column it lacks, or the shard when the pool was not filtered."""
    import pyarrow.parquet as pq

    if shard.decisions is None:
        raise InputError(f"shard {shard.shard_id}: no filter decisions (the pool has not been filtered); "
                         "run pool_refresh with an embedder and filters")
    with store.open(store.relative(shard.decisions)) as handle:
        parquet = pq.ParquetFile(handle)
        present = set(parquet.schema_arrow.names)
        missing = [column for column in columns if column not in present]
        if missing:
            raise InputError(f"{shard.decisions}: no column {missing[0]!r} in these filter decisions "
                             f"(columns: {sorted(present)})")
        return parquet.read(columns=list(columns)).to_pandas()


def read_rows(store: Store, shard: PoolShard, rows: np.ndarray,
              columns: Sequence[str] = ("uid", "key", "text")) -> pd.DataFrame:
    """``columns`` of the shard's samples at positions ``rows`` (within the shard), in that order."""
    return read_shard(store, shard, columns).iloc[np.asarray(rows, dtype=np.int64)].reset_index(drop=True)


def map_shards(client, function: Callable, jobs: Iterable[tuple], *shared: Any) -> Iterator[Any]:
    """``function(*shared, *job)`` for every job, yielded in job order.

    With a Dask client every job is one task; the ``shared`` arguments are scattered to every
    worker once, at most two tasks per worker thread are submitted ahead of the result being read
    (so finished results waiting to be read stay a bounded number of shards' worth), and each
    result is released once yielded: the caller holds one at a time. Without a client, the jobs run
    here, one after the other.
    """
    if client is None:
        for job in jobs:
            yield function(*shared, *job)
        return
    # hash=False: a fresh key each time, so the release of an earlier scatter of equal data cannot race this one
    scattered = [client.scatter([value], broadcast=True, hash=False)[0] for value in shared]
    window = max(2, 2 * sum(client.nthreads().values()))
    remaining = iter(jobs)
    pending: deque = deque()

    def submit_next() -> None:
        job = next(remaining, None)
        if job is not None:
            pending.append(client.submit(function, *scattered, *job, pure=False))

    for _ in range(window):
        submit_next()
    while pending:
        future = pending.popleft()
        result = future.result()
        future.release()
        submit_next()
        yield result


@dataclass
class PoolTable:
    """The pool per shard: its shards, their sample counts and one ``kept`` flag per sample."""

    pool: str
    snapshot: PoolSnapshot
    store: Store
    shards: list[PoolShard]
    sizes: np.ndarray  # int64, samples per shard
    kept: np.ndarray  # bool, one per pool row

    @property
    def filtered(self) -> bool:
        return self.snapshot.filters is not None

    @property
    def offsets(self) -> np.ndarray:
        """int64, ``len(shards) + 1``: shard ``s`` holds pool rows ``offsets[s]:offsets[s + 1]``."""
        return np.concatenate([[0], np.cumsum(self.sizes, dtype=np.int64)])

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def split(self, values: np.ndarray) -> list[np.ndarray]:
        """A per-row array cut into one view per shard."""
        offsets = self.offsets
        return [values[offsets[s]:offsets[s + 1]] for s in range(len(self.shards))]

    def local_rows(self, rows: np.ndarray) -> list[np.ndarray]:
        """Sorted pool rows cut per shard and made shard-relative."""
        rows = np.asarray(rows, dtype=np.int64)
        offsets = self.offsets
        bounds = np.searchsorted(rows, offsets)
        return [rows[bounds[s]:bounds[s + 1]] - offsets[s] for s in range(len(self.shards))]


def _shard_summary(store: Store, shard: PoolShard) -> tuple[np.ndarray, np.ndarray]:
    """A shard's ``kept`` flags and its uids' 64-bit fingerprints."""
    frame = read_shard(store, shard, ("uid", "kept"))
    prints = pd.util.hash_array(frame["uid"].astype(str).to_numpy(dtype=object))
    return frame["kept"].to_numpy(dtype=bool), prints


def pool_table(store: Store, snapshot: PoolSnapshot, client=None) -> PoolTable:
    """The :class:`PoolTable` of the snapshot: one task per shard, then a check that uids are unique."""
    pool_name = snapshot.pool.name
    shards = pool_shards(snapshot)
    sizes, kept, prints = [], [], []
    for shard_kept, shard_prints in map_shards(client, _shard_summary, [(shard,) for shard in shards], store):
        sizes.append(len(shard_kept))
        kept.append(shard_kept)
        prints.append(shard_prints)
    if not sum(sizes):
        raise InputError(f"pool {pool_name!r}: no shard holds a downloaded sample")
    table = PoolTable(pool=pool_name, snapshot=snapshot, store=store, shards=shards,
                      sizes=np.asarray(sizes, dtype=np.int64), kept=np.concatenate(kept))
    _check_unique(table, np.concatenate(prints), client)
    return table


def _check_unique(table: PoolTable, prints: np.ndarray, client) -> None:
    ordered = np.sort(prints)
    shared = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    if not len(shared):
        return
    rows = np.flatnonzero(np.isin(prints, shared))  # the few rows whose fingerprints collide
    jobs = [(shard, local) for shard, local in zip(table.shards, table.local_rows(rows)) if len(local)]
    uids = pd.concat(list(map_shards(client, read_rows, jobs, table.store)), ignore_index=True)["uid"]
    if uids.duplicated().any():
        raise InputError(f"pool {table.pool!r}: uid {uids[uids.duplicated()].iloc[0]} appears twice")


def whole_pool_frame(table: PoolTable, columns: Sequence[str] = ("uid", "key", "text", "kept")) -> pd.DataFrame:
    """Every row of the pool in one frame, in pool-row order: small pools only (the demo's checks, tests).

    It holds the given columns of every sample in this process; stages work shard by shard.
    """
    return pd.concat([read_shard(table.store, shard, columns) for shard in table.shards], ignore_index=True)
