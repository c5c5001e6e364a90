"""MetaCLIP over a pool in the store: the frozen metadata, and the matches of every shard on Dask.

In:  the store, a pool's samples (:class:`~tasks.sample.pool_samples.PoolSamples`), a metadata
     source (``"wordnet+pool"``: WordNet plus the pool's frequent n-grams; or the path of a list,
     MetaCLIP's ``metadata.json`` or a text file), and optionally a Dask client.
Out: :func:`pool_metadata`: the :class:`~tasks.metaclip.metadata.Metadata`, frozen in the store as
     ``metaclip/<pool>/metadata-<hash>.json`` when built from the pool; :func:`match_pool`: the
     :class:`~tasks.metaclip.matching.Matches` of every sample, row-aligned with the pool table,
     computed one Dask task per shard and kept as ``metaclip/<pool>/<metadata hash>/<shard>.npz``
     (a rerun matches only the shards not yet there).
"""

from __future__ import annotations

import io

import numpy as np

from tasks.common.errors import InputError
from tasks.common.store import Store
from tasks.metaclip.matching import EntryMatcher, Matches
from tasks.metaclip.metadata import Metadata, build_metadata, load_metadata, validate_entries

BUILT_FROM_POOL = "wordnet+pool"


def pool_metadata(store: Store, samples, source: str = BUILT_FROM_POOL, ngrams: dict | None = None) -> Metadata:
    """The metadata list named by ``source``; built from WordNet and the pool's captions once, then reread."""
    if source != BUILT_FROM_POOL:
        if ngrams:
            raise InputError(f"metaclip ngrams={ngrams}: only used with metadata={BUILT_FROM_POOL!r}")
        return load_metadata(source)
    built = build_metadata(samples.texts, **(ngrams or {}))
    target = f"metaclip/{samples.pool}/metadata-{built.content_hash[:16]}.json"
    if not store.exists(target):
        store.write_json(target, list(built.entries))
    frozen = store.read_json(target)
    return Metadata(entries=validate_entries(frozen, store.uri(target)), source=store.uri(target))


def match_pool(store: Store, samples, metadata: Metadata, client=None) -> Matches:
    """Matches of every sample of ``samples`` (row order), one task per shard on ``client``."""
    folder = f"metaclip/{samples.pool}/{metadata.content_hash[:16]}"
    frame = samples.frame
    per_shard = [(shard["name"], frame.loc[frame["shard"] == number, ["uid", "text"]])
                 for number, shard in enumerate(samples.shards)]
    todo = [(name, part) for name, part in per_shard if not store.exists(f"{folder}/{name}.npz")]
    if todo:
        matcher = EntryMatcher(metadata.entries)
        if client is not None:
            shared = client.scatter(matcher, broadcast=True)
            futures = [client.submit(_match_shard, store, f"{folder}/{name}.npz", shared, part["uid"].to_numpy(),
                                     part["text"].tolist(), pure=False) for name, part in todo]
            client.gather(futures)
        else:
            for name, part in todo:
                _match_shard(store, f"{folder}/{name}.npz", matcher, part["uid"].to_numpy(), part["text"].tolist())
    parts = []
    for name, part in per_shard:
        uids, matches = _read_matches(store, f"{folder}/{name}.npz")
        if not np.array_equal(uids, part["uid"].to_numpy().astype(str)):
            raise InputError(f"{store.uri(f'{folder}/{name}.npz')}: its uids are not those of shard {name}; "
                             f"remove the file to match again")
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
