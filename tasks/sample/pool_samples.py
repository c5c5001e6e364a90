"""The samples a curation recipe chooses from: every downloaded sample of a pool, in one table.

In:  the store and a resolved :class:`~tasks.common.catalog.PoolSnapshot` (the pool and, when the
     embed-and-filter stage has run, its filter run's decisions, joined on shard ids).
Out: :class:`PoolSamples`: a frame with one row per successfully downloaded sample (``uid``,
     ``text``, ``key``, ``shard``: the position of its shard in ``shards``, ``kept``: the filters'
     overall decision, all true when no filter ran), the shards (their ``shard_id``, ``tar`` and
     ``n_success``), and the snapshot's content hashes (the cache keys of what follows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.common.catalog import PoolSnapshot
from tasks.common.errors import InputError
from tasks.common.store import Store


@dataclass
class PoolSamples:
    pool: str
    frame: pd.DataFrame
    shards: list[dict]
    snapshot: PoolSnapshot

    @property
    def filtered(self) -> bool:
        return self.snapshot.filters is not None

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def uids(self) -> np.ndarray:
        return self.frame["uid"].to_numpy()

    @property
    def texts(self) -> list[str]:
        return self.frame["text"].tolist()

    def rows_of(self, uids: np.ndarray, what: str) -> np.ndarray:
        """Row positions of ``uids`` in the pool; an error naming ``what`` if some are not in it."""
        rows = pd.Index(self.frame["uid"]).get_indexer(uids)
        missing = int((rows < 0).sum())
        if missing:
            example = np.asarray(uids)[rows < 0][0]
            raise InputError(f"{what}: {missing} of {len(uids)} uids are not samples of pool {self.pool!r} "
                             f"(e.g. {example}); it was made from another pool or an older download")
        return rows


def pool_samples(store: Store, snapshot: PoolSnapshot) -> PoolSamples:
    """Read the pool's shards (and filter decisions, if any) into one :class:`PoolSamples`."""
    pool_name = snapshot.pool.name
    shards = [{"shard_id": s.shard_id, "tar": s.tar, "n_success": s.n_success, "parquet": s.parquet}
              for s in snapshot.pool.shards_with_samples]
    decisions = snapshot.filters.decisions if snapshot.filters is not None else None
    frames = []
    for number, shard in enumerate(shards):
        if decisions is not None:
            if shard["shard_id"] not in decisions:
                raise InputError(f"pool {pool_name!r}: shard {shard['shard_id']} has no filter decisions; "
                                 f"rerun pool_refresh with the embedder")
            with store.open(store.relative(decisions[shard["shard_id"]])) as handle:
                frame = pd.read_parquet(handle, columns=["uid", "key", "text", "keep"]).rename(columns={"keep": "kept"})
        else:
            with store.open(store.relative(shard["parquet"])) as handle:
                frame = pd.read_parquet(handle, columns=["uid", "key", "caption", "status"])
            frame = frame.loc[frame["status"] == "success", ["uid", "key", "caption"]].rename(
                columns={"caption": "text"})
            frame["kept"] = True
        frame["shard"] = np.int32(number)
        frames.append(frame)
    if not frames:
        raise InputError(f"pool {pool_name!r}: no shard holds a downloaded sample")
    table = pd.concat(frames, ignore_index=True)
    table["text"] = table["text"].fillna("").astype(str)
    if table["uid"].duplicated().any():
        raise InputError(f"pool {pool_name!r}: uid {table['uid'][table['uid'].duplicated()].iloc[0]} appears twice")
    return PoolSamples(pool=pool_name, frame=table, shards=shards, snapshot=snapshot)
