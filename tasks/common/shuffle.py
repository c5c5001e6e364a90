"""Hash-partitioned shuffles of per-shard frames on Dask, and global row ids.

In:  per-shard pieces of work as ``dask.delayed`` objects (each yields a pandas frame), a function
     that tells each row's output partition, and the number of partitions.
Out: :func:`shuffle`: for every output partition the list of delayed pieces (one per input)
     that belong to it, ready to be handed to one reduce task; :func:`compute` runs Dask
     collections on a ``distributed.Client`` (or Dask's default scheduler without one): the one
     way every stage computes on its client.

The shuffle is Dask's task graph: every input is split once (one task), every output partition
is one task that receives only its pieces. No process holds more than one input and one output
partition. A worker that dies mid-shuffle loses its pieces; Dask recomputes them from the graph,
so the result is the same. Partition numbers come from pandas' hash of the key's values (not
Python's per-process ``hash``), so every worker agrees.

A global row id packs a shard's position and a row number into one int64:
``shard << 32 | row``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

ROW_BITS = 32


def global_ids(shard: int, rows: int | np.ndarray) -> np.ndarray:
    """Global ids of rows ``0..rows-1`` (or of the given row numbers) of shard number ``shard``."""
    row_numbers = np.arange(rows, dtype=np.int64) if np.isscalar(rows) else np.asarray(rows, dtype=np.int64)
    return (np.int64(shard) << ROW_BITS) | row_numbers


def split_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard numbers, row numbers) of global ids."""
    ids = np.asarray(ids, dtype=np.int64)
    return ids >> ROW_BITS, ids & ((1 << ROW_BITS) - 1)


def hash_partition(values, n_partitions: int) -> np.ndarray:
    """The partition (0..n-1) of every value: the same in every process."""
    if n_partitions == 1:
        return np.zeros(len(values), dtype=np.int64)
    hashed = pd.util.hash_array(np.asarray(values), categorize=False)
    return (hashed % np.uint64(n_partitions)).astype(np.int64)


def split_frame(frame: pd.DataFrame, partition: np.ndarray, n_partitions: int) -> tuple[pd.DataFrame, ...]:
    """``frame``'s rows grouped by ``partition``: one frame per partition, rows in their original order."""
    order = np.argsort(partition, kind="stable")
    bounds = np.searchsorted(partition[order], np.arange(n_partitions + 1))
    return tuple(frame.iloc[order[bounds[p]:bounds[p + 1]]].reset_index(drop=True) for p in range(n_partitions))


def shuffle(inputs: list, splitter: Callable[..., tuple], n_partitions: int, *args) -> list[list]:
    """Delayed pieces per output partition: ``splitter(input, *args)`` returns ``n_partitions`` pieces."""
    import dask

    split = [dask.delayed(splitter, nout=n_partitions, pure=True)(item, *args) for item in inputs]
    return [[pieces[p] for pieces in split] for p in range(n_partitions)]


def partitions_for(rows: int, rows_per_partition: int) -> int:
    """How many partitions keep each near ``rows_per_partition`` rows (at least one)."""
    return max(1, -(-int(rows) // max(1, int(rows_per_partition))))


def compute(client, delayed_objects: list) -> list:
    """Compute Dask collections on ``client``'s workers, or with Dask's default scheduler without one."""
    import dask

    if not delayed_objects:
        return []
    if client is not None:
        return client.gather(client.compute(delayed_objects))
    return list(dask.compute(*delayed_objects))
