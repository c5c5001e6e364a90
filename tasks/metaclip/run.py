"""MetaCLIP over a pool in the store: the frozen metadata, and the matches of every shard on Dask.

In:  the catalog, a pool's samples (:class:`~tasks.sample.pool_samples.PoolSamples`), a metadata
     source (``"wordnet+pool"``: WordNet plus the pool's frequent n-grams; or the path of a list,
     MetaCLIP's ``metadata.json`` or a text file), and optionally a Dask client.
Out: :func:`pool_metadata`: the :class:`~tasks.metaclip.metadata.Metadata`, frozen in the store
     (:meth:`~tasks.common.catalog.Catalog.metaclip_metadata`) when built from the pool;
     :func:`match_pool`: the :class:`~tasks.metaclip.matching.Matches` of every sample, row-aligned
     with the pool table, computed one Dask task per shard and kept per shard id
     (:meth:`~tasks.common.catalog.Catalog.metaclip_matches`; a rerun matches only the shards not yet there).
"""

from __future__ import annotations

import io

import numpy as np

from tasks.common.catalog import Catalog
from tasks.common.errors import InputError, StageFailed
from tasks.common.store import Store
from tasks.metaclip.matching import EntryMatcher, Matches
from tasks.metaclip.metadata import Metadata, build_metadata, load_metadata, validate_entries

BUILT_FROM_POOL = "wordnet+pool"


def pool_metadata(catalog: Catalog, samples, source: str = BUILT_FROM_POOL, ngrams: dict | None = None) -> Metadata:
    """The metadata list named by ``source``; built from WordNet and the pool's captions once, then reread."""
    store = catalog.store
    if source != BUILT_FROM_POOL:
        if ngrams:
            raise InputError(f"metaclip ngrams={ngrams}: only used with metadata={BUILT_FROM_POOL!r}")
        return load_metadata(source, catalog.store.options_for(source))
    built = build_metadata(samples.texts, **(ngrams or {}))
    target = catalog.metaclip_metadata(samples.pool, built.content_hash)
    if not store.exists(target):
        store.write_json(target, list(built.entries))
    frozen = store.read_json(target)
    return Metadata(entries=validate_entries(frozen, store.uri(target)), source=store.uri(target))


def match_pool(catalog: Catalog, samples, metadata: Metadata, client=None) -> Matches:
    """Matches of every sample of ``samples`` (row order), one task per shard on ``client``."""
    store = catalog.store
    frame = samples.frame
    groups = frame.groupby("shard", sort=True).indices  # one pass over the table, not one mask per shard
    empty = np.zeros(0, dtype=np.int64)
    per_shard = [(catalog.metaclip_matches(samples.pool, metadata.content_hash, shard["shard_id"]),
                  frame.iloc[groups.get(number, empty)][["uid", "text"]])
                 for number, shard in enumerate(samples.shards)]
    todo = [(target, part) for target, part in per_shard if not store.exists(target)]
    if todo:
        matcher = EntryMatcher(metadata.entries)
        if client is not None:
            shared = client.scatter(matcher, broadcast=True)
            futures = [client.submit(_match_shard, store, target, shared, part["uid"].to_numpy(),
                                     part["text"].tolist(), pure=False) for target, part in todo]
            client.gather(futures)
        else:
            for target, part in todo:
                _match_shard(store, target, matcher, part["uid"].to_numpy(), part["text"].tolist())
    parts = []
    for target, part in per_shard:
        uids, matches = _read_matches(store, target)
        if not np.array_equal(uids, part["uid"].to_numpy().astype(str)):
            raise StageFailed(f"{store.uri(target)}: its uids are not those of its shard; remove the file to match again")
        parts.append(matches)
    return Matches.concatenate(parts)


def _match_shard(store: Store, target: str, matcher: EntryMatcher, uids: np.ndarray, texts: list[str]) -> str:
    matches = matcher.match(texts)
    buffer = io.BytesIO()
    np.savez(buffer, uid=np.asarray(uids).astype(str), indptr=matches.indptr, entry_ids=matches.entry_ids)
    return store.write_bytes(target, buffer.getvalue())


def _read_matches(store: Store, rel: str) -> tuple[np.ndarray, Matches]:
    with np.load(io.BytesIO(store.read_bytes(rel)), allow_pickle=False) as data:
        return data["uid"], Matches(indptr=data["indptr"], entry_ids=data["entry_ids"])
