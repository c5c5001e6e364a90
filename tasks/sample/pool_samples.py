"""The samples a curation recipe chooses from: every downloaded sample of a pool, in one table.

In:  the store and a pool name (``pools/<pool>/manifest.json`` from the download stage; when the
     embed-and-filter stage has run, ``pools/<pool>/filters.json`` points at its decisions).
Out: :class:`PoolSamples`: a frame with one row per successfully downloaded sample (``uid``,
     ``text``, ``key``, ``shard``: the position of its shard in ``shards``, ``kept``: the filters'
     overall decision, all true when no filter ran), the shards (their ``name`` and ``tar`` URI),
     and the content hashes of the pool and filters manifests (the cache keys of what follows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.common.errors import InputError
from tasks.common.store import Store
from tasks.embed.run import shard_output_name


@dataclass
class PoolSamples:
    pool: str
    frame: pd.DataFrame
    shards: list[dict]
    pool_manifest_hash: str
    filters_manifest_hash: str | None

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


def pool_samples(store: Store, pool_name: str) -> PoolSamples:
    """Read the pool's shards (and filter decisions, if any) into one :class:`PoolSamples`."""
    pointer = f"pools/{pool_name}/manifest.json"
    if not store.exists(pointer):
        raise InputError(f"pool {pool_name!r}: {store.uri(pointer)} does not exist; run pool_refresh first")
    manifest = store.read_json(pointer)
    shards = [{"name": shard_output_name(s["tar"]), "tar": s["tar"], "parquet": s["parquet"]}
              for s in manifest["outputs"]["shards"] if s.get("n_success", 1) > 0]
    decisions, filters_hash = _filter_decisions(store, pool_name)
    frames = []
    for number, shard in enumerate(shards):
        if decisions is not None:
            if shard["name"] not in decisions:
                raise InputError(f"pool {pool_name!r}: shard {shard['name']} has no filter decisions; "
                                 f"rerun pool_refresh with the embedder")
            with store.open(decisions[shard["name"]]) as handle:
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
    return PoolSamples(pool=pool_name, frame=table, shards=shards, pool_manifest_hash=manifest["content_hash"],
                       filters_manifest_hash=filters_hash)


def _filter_decisions(store: Store, pool_name: str) -> tuple[dict[str, str] | None, str | None]:
    pointer = f"pools/{pool_name}/filters.json"
    if not store.exists(pointer):
        return None, None
    filtered = store.read_json(store.relative(store.read_json(pointer)["filters"]))
    decisions = {uri.rsplit("/", 1)[-1].removesuffix(".parquet"): store.relative(uri)
                 for uri in filtered["outputs"]["decisions"]}
    return decisions, filtered["content_hash"]
