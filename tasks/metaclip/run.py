"""MetaCLIP over a pool in the store: the frozen metadata, and matches and balancing kept per shard.

In:  the catalog, a pool table (:class:`~tasks.sample.pool_samples.PoolTable`: per shard its files
     and sample count, per sample a kept flag; never captions), a metadata source
     (``"wordnet+pool"``: WordNet plus the pool's frequent n-grams; or the path of a list,
     MetaCLIP's ``metadata.json`` or a text file), and optionally a Dask client (``None``: the same
     per-shard functions run in this process).
Out: :func:`pool_metadata`: the :class:`~tasks.metaclip.metadata.Metadata`, frozen in the store
     (:meth:`~tasks.common.catalog.Catalog.metaclip_metadata`) when built from the pool;
     :func:`match_pool`: a :class:`PoolMatches`, the matches of every shard written to the store
     by one task per shard (:meth:`~tasks.common.catalog.Catalog.metaclip_matches`; a rerun matches
     only the shards not yet there), and the per-shard reductions balancing needs.

Nothing pool-sized but numbers reaches the driver. Every question about the matches is one task
per shard that reads the shard's matches and the candidate mask of its rows, and returns a
reduction: per-entry counts (summed in shard order), numbers of matched texts, sums of keep
probabilities at given thresholds t, or, for the chosen t, the shard's part of the draw
(:func:`~tasks.metaclip.balance.draw` with an offset, so the draw equals the whole pool's). The
bisection for a target size asks every shard for several t at once
(:func:`~tasks.metaclip.balance.bisect_threshold`). Sums over shards are :func:`math.fsum` of the
shards' sums, so on a one-shard pool every figure is bit-for-bit the whole-array computation's, and
on several shards it differs at most in the last bits (the subsets are the same unless a sum falls
within an ulp of the target).

Building ``"wordnet+pool"`` metadata counts unigrams and bigrams per shard on the workers (the
tokens of :func:`~tasks.metaclip.metadata.pool_ngrams`), splits the counts into
``NGRAM_PARTITIONS`` partitions by a stable hash of the n-gram, merges the shards into one running
count table per partition, a wave of shards at a time (a few per worker thread), and keeps only
n-grams that reach the minimum counts after that global merge (exact: a threshold applied per shard
would not be). A partition's table counts distinct n-grams: its size is set by the pool's
vocabulary (of words and of adjacent word pairs) divided by the partitions, not by the number of
samples, and the driver receives only the n-grams above the thresholds.
"""

from __future__ import annotations

import io
import math
import operator
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.common.catalog import Catalog
from tasks.common.errors import InputError, StageFailed
from tasks.common.options import check_known_settings
from tasks.common.store import Store
from tasks.metaclip.balance import (_Rows, _check_t, _match_counts, bisect_threshold, draw as draw_texts)
from tasks.metaclip.matching import EntryMatcher, Matches
from tasks.metaclip.metadata import (DEFAULT_WORDNET_DIR, Metadata, check_ngram_options, count_ngrams, load_metadata,
                                     select_ngrams, validate_entries, wordnet_entries)
from tasks.sample.pool_samples import PoolShard, PoolTable, map_shards, read_shard

BUILT_FROM_POOL = "wordnet+pool"
NGRAM_OPTIONS = {"min_unigram_count": 100, "min_bigram_count": 30, "min_bigram_pmi": 30.0}
NGRAM_PARTITIONS = 8
BISECTION_DEPTH = 4  # halvings per round of shard tasks: 15 thresholds a round, 15 rounds for 60 halvings


# ----- metadata ------------------------------------------------------------------------------
def pool_metadata(catalog: Catalog, table: PoolTable, source: str = BUILT_FROM_POOL, ngrams: dict | None = None,
                  client=None) -> Metadata:
    """The metadata list named by ``source``; built from WordNet and the pool's captions once, then reread."""
    store = catalog.store
    if source != BUILT_FROM_POOL:
        if ngrams:
            raise InputError(f"metaclip ngrams={ngrams}: only used with metadata={BUILT_FROM_POOL!r}")
        return load_metadata(source, catalog.store.options_for(source))
    entries = dict.fromkeys(wordnet_entries())
    entries.update(dict.fromkeys(ngram for ngram in pooled_ngrams(table, client, **(ngrams or {}))
                                 if ngram not in entries))
    built = Metadata(tuple(entries), source=f"WordNet head lemmas + n-grams of pool {table.pool!r}")
    target = catalog.metaclip_metadata(table.pool, built.content_hash)
    if not store.exists(target):
        store.write_json(target, list(built.entries))
    frozen = store.read_json(target)
    return Metadata(entries=validate_entries(frozen, store.uri(target)), source=store.uri(target))


def pooled_ngrams(table: PoolTable, client=None, **options: Any) -> list[str]:
    """:func:`~tasks.metaclip.metadata.pool_ngrams` of the pool's captions, counted per shard and merged
    by partition (see the module doc); the same list, most frequent first."""
    check_known_settings("metaclip ngrams", options, NGRAM_OPTIONS)
    options = {**NGRAM_OPTIONS, **options}
    min_unigram, min_bigram, min_pmi = (options["min_unigram_count"], options["min_bigram_count"],
                                        options["min_bigram_pmi"])
    check_ngram_options(min_unigram, min_bigram, min_pmi)
    jobs = [(shard,) for shard in table.shards]
    if client is None:
        accumulated: list = [None] * NGRAM_PARTITIONS
        totals = [0, 0]
        for shard_totals, shard_parts in map_shards(None, _shard_ngrams, jobs, table.store, NGRAM_PARTITIONS):
            totals = [a + b for a, b in zip(totals, shard_totals)]
            accumulated = [_merge_parts(acc, [part], copy=False) for acc, part in zip(accumulated, shard_parts)]
        merged = [_frequent(acc, min_unigram, min_bigram) for acc in accumulated]
    else:
        merged, totals = _ngrams_on_workers(client, table, jobs, min_unigram, min_bigram)
    unigrams: dict[str, int] = {}
    bigrams: dict[tuple[str, str], int] = {}
    for part_unigrams, part_bigrams in merged:
        unigrams.update(part_unigrams)
        bigrams.update(part_bigrams)
    return select_ngrams(unigrams, bigrams, totals[0], totals[1], min_unigram, min_bigram, min_pmi)


def _partition(ngram: str, partitions: int) -> int:
    return zlib.crc32(ngram.encode("utf-8", "surrogatepass")) % partitions  # the same in every process


def _shard_ngrams(store: Store, partitions: int, shard: PoolShard) -> tuple[list[int], list[tuple[dict, dict]]]:
    """A shard's (tokens, bigrams) totals and its n-gram counts split into ``partitions``."""
    unigrams, bigrams = count_ngrams(read_shard(store, shard, ("text",))["text"].tolist())
    parts: list[tuple[dict, dict]] = [({}, {}) for _ in range(partitions)]
    for word, count in unigrams.items():
        parts[_partition(word, partitions)][0][word] = count
    for pair, count in bigrams.items():
        parts[_partition(f"{pair[0]} {pair[1]}", partitions)][1][pair] = count
    return [sum(unigrams.values()), sum(bigrams.values())], parts


def _ngrams_on_workers(client, table: PoolTable, jobs: list[tuple], min_unigram: int,
                       min_bigram: int) -> tuple[list[tuple[dict, dict]], list[int]]:
    """Shard counts in waves of a few tasks per worker thread, each wave merged into one running count
    table per partition (a wave is submitted once the merges of the wave before last are done, so
    unmerged shard counts stay a wave or two); then each partition pruned to its frequent n-grams."""
    from distributed import wait

    wave = max(1, 2 * sum(client.nthreads().values()))
    accumulated: list = [None] * NGRAM_PARTITIONS
    totals, previous = [0, 0], []
    for start in range(0, len(jobs), wave):
        shards = [client.submit(_shard_ngrams, table.store, NGRAM_PARTITIONS, *job, pure=False)
                  for job in jobs[start:start + wave]]
        merges = [client.submit(_merge_parts, accumulated[p], [client.submit(_part, future, p) for future in shards],
                                pure=False) for p in range(NGRAM_PARTITIONS)]
        counted = client.gather([client.submit(operator.itemgetter(0), future) for future in shards])
        totals = [total + sum(values) for total, values in zip(totals, zip(*counted))]
        wait(previous)
        accumulated, previous = merges, merges
        del shards
    pruned = [client.submit(_frequent, acc, min_unigram, min_bigram, pure=False) for acc in accumulated]
    return client.gather(pruned), totals


def _part(result: tuple, number: int) -> tuple[dict, dict]:
    return result[1][number]


def _merge_parts(accumulated: tuple[Counter, Counter] | None, parts: list[tuple[dict, dict]],
                 copy: bool = True) -> tuple[Counter, Counter]:
    """One partition's running counts plus more shards' counts of it (no threshold yet: not exact before
    the end). ``copy``: leave ``accumulated`` unchanged (a Dask task must not change its input)."""
    unigrams, bigrams = accumulated if accumulated is not None else (Counter(), Counter())
    if copy:
        unigrams, bigrams = Counter(unigrams), Counter(bigrams)
    for more_unigrams, more_bigrams in parts:
        unigrams.update(more_unigrams)
        bigrams.update(more_bigrams)
    return unigrams, bigrams


def _frequent(counts: tuple[Counter, Counter] | None, min_unigram: int, min_bigram: int) -> tuple[dict, dict]:
    """What selection needs after the global merge: bigrams reaching ``min_bigram``, and the unigrams
    reaching ``min_unigram`` or the count of such a bigram (a word occurs at least as often as any
    bigram it starts or ends, so the PMI of every kept bigram finds both its words)."""
    if counts is None:
        return {}, {}
    unigrams, bigrams = counts
    floor = min(min_unigram, min_bigram)
    return ({word: count for word, count in unigrams.items() if count >= floor},
            {pair: count for pair, count in bigrams.items() if count >= min_bigram})


# ----- matches, per shard --------------------------------------------------------------------
def match_pool(catalog: Catalog, table: PoolTable, metadata: Metadata, client=None) -> "PoolMatches":
    """Match every shard not yet matched (one task per shard) and check the others; the matches stay per shard."""
    store = catalog.store
    paths = [catalog.metaclip_matches(table.pool, metadata.content_hash, shard.shard_id) for shard in table.shards]
    present = [store.exists(path) for path in paths]
    todo = [(path, shard) for path, shard, done in zip(paths, table.shards, present) if not done]
    if todo:
        list(map_shards(client, _match_shard, todo, store, EntryMatcher(metadata.entries)))
    checks = [(path, shard) for path, shard, done in zip(paths, table.shards, present) if done]
    list(map_shards(client, _check_shard, checks, store))
    return PoolMatches(table=table, paths=paths, n_entries=len(metadata), client=client)


def _match_shard(store: Store, matcher: EntryMatcher, target: str, shard: PoolShard) -> str:
    frame = read_shard(store, shard, ("uid", "text"))
    matches = matcher.match(frame["text"].tolist())
    buffer = io.BytesIO()
    np.savez(buffer, uid=frame["uid"].to_numpy().astype(str), indptr=matches.indptr, entry_ids=matches.entry_ids)
    return store.write_bytes(target, buffer.getvalue())


def _check_shard(store: Store, target: str, shard: PoolShard) -> None:
    uids, _ = read_matches(store, target)
    if not np.array_equal(uids, read_shard(store, shard, ("uid",))["uid"].to_numpy().astype(str)):
        raise StageFailed(f"{store.uri(target)}: its uids are not those of its shard; remove the file to match again")


def read_matches(store: Store, rel: str) -> tuple[np.ndarray, Matches]:
    with np.load(io.BytesIO(store.read_bytes(rel)), allow_pickle=False) as data:
        return data["uid"], Matches(indptr=data["indptr"], entry_ids=data["entry_ids"])


def _candidates(store: Store, path: str, mask: np.ndarray) -> Matches:
    """The matches of a shard's rows under ``mask`` (in row order)."""
    _, matches = read_matches(store, path)
    if matches.n_texts != len(mask):
        raise StageFailed(f"{store.uri(path)}: {matches.n_texts} texts but its shard has {len(mask)} samples; "
                          "remove the file to match again")
    return matches.take(np.flatnonzero(mask))


def _shard_counts(store: Store, n_entries: int, path: str, mask: np.ndarray) -> tuple[np.ndarray, int]:
    matches = _candidates(store, path, mask)
    return (np.bincount(matches.entry_ids, minlength=n_entries).astype(np.int64),
            int(np.count_nonzero(matches.counts_per_text())))


def _shard_matched(store: Store, path: str, mask: np.ndarray) -> np.ndarray:
    return _candidates(store, path, mask).counts_per_text() > 0


def _shard_inverse_sum(store: Store, counts: np.ndarray, path: str, mask: np.ndarray) -> float:
    return float(np.sum(1.0 / _match_counts(_candidates(store, path, mask), counts)))


def _shard_sums(store: Store, counts: np.ndarray, ts: list[float], path: str,
                mask: np.ndarray) -> list[tuple[float, float]]:
    """Per t: the sum of the keep probabilities of the shard's candidates and of their variances."""
    matches = _candidates(store, path, mask)
    rows, per_match = _Rows(matches), _match_counts(matches, counts)
    sums = []
    for t in ts:
        p = rows.probabilities(per_match, t)
        sums.append((float(np.sum(p, dtype=np.float64)), float(np.sum(p * (1.0 - p)))))
    return sums


def _shard_draw(store: Store, counts: np.ndarray, t: float, seed: int | None, keep_values: bool, path: str,
                mask: np.ndarray, offset: int) -> tuple[float, float, np.ndarray | None, np.ndarray | None]:
    """The shard's sums of probabilities and variances at t, its part of the draw (``seed`` given; the
    shard's candidates are texts ``offset...`` of the pool's) and, if asked, the probabilities."""
    matches = _candidates(store, path, mask)
    p = _Rows(matches).probabilities(_match_counts(matches, counts), t)
    keep = draw_texts(p, seed, offset) if seed is not None else None
    return float(np.sum(p, dtype=np.float64)), float(np.sum(p * (1.0 - p))), keep, p if keep_values else None


def _shard_after(store: Store, counts: np.ndarray, t: float, path: str, mask: np.ndarray,
                 keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry counts over the kept candidates and expected entry counts (sum of the keep probabilities)."""
    matches = _candidates(store, path, mask)
    p = _Rows(matches).probabilities(_match_counts(matches, counts), t)
    n_entries = len(counts)
    after = np.bincount(matches.take(keep).entry_ids, minlength=n_entries).astype(np.int64)
    expected = np.bincount(matches.entry_ids, weights=np.repeat(p, matches.counts_per_text()), minlength=n_entries)
    return after, expected


@dataclass
class Draw:
    """A balancing at one t over the candidates: figures, and per candidate (pool order) the draw."""

    expected_size: float
    variance: float
    keep: np.ndarray | None  # bool per candidate, when drawn
    probabilities: np.ndarray | None  # float64 per candidate, when asked


@dataclass
class PoolMatches:
    """The matches of a pool, one file per shard; reductions over the rows of a candidate mask."""

    table: PoolTable
    paths: list[str]  # store-relative, one per shard of the table
    n_entries: int
    client: Any = None

    def _map(self, function, mask: np.ndarray, *shared, extra=None):
        jobs = [(path, local) + (extra[number] if extra else ())
                for number, (path, local) in enumerate(zip(self.paths, self.table.split(mask)))]
        return map_shards(self.client, function, jobs, self.table.store, *shared)

    def entry_counts(self, mask: np.ndarray) -> tuple[np.ndarray, int]:
        """int64 per entry: matches among the rows under ``mask``; and how many of those rows match any entry."""
        counts, matched = np.zeros(self.n_entries, dtype=np.int64), 0
        for shard_counts, shard_matched in self._map(_shard_counts, mask, self.n_entries):
            counts += shard_counts
            matched += shard_matched
        return counts, matched

    def matched(self, mask: np.ndarray) -> np.ndarray:
        """bool per row under ``mask`` (pool order): whether it matches an entry."""
        return np.concatenate(list(self._map(_shard_matched, mask)))

    def sums(self, mask: np.ndarray, counts: np.ndarray, ts: list[float]) -> list[tuple[float, float]]:
        """Per t: the expected size (sum of keep probabilities) of the rows under ``mask``, and its variance."""
        per_shard = list(self._map(_shard_sums, mask, counts, list(ts)))
        return [(math.fsum(shard[i][0] for shard in per_shard), math.fsum(shard[i][1] for shard in per_shard))
                for i in range(len(ts))]

    def threshold_for_expected_size(self, mask: np.ndarray, counts: np.ndarray, n_matched: int, target: int) -> float:
        """:func:`~tasks.metaclip.balance.threshold_for_expected_size` over the rows under ``mask``."""
        if not isinstance(target, (int, float, np.integer, np.floating)) or not 0 < target <= n_matched:
            raise InputError(f"target must lie in (0, {n_matched}] (the number of matched texts), got {target!r}")
        high = float(counts.max())  # every entry counted is matched by a row under the mask
        low = min(high, target / math.fsum(self._map(_shard_inverse_sum, mask, counts)))
        return bisect_threshold(lambda ts: [size for size, _ in self.sums(mask, counts, ts)], low, high, target,
                                depth=BISECTION_DEPTH)

    def draw(self, mask: np.ndarray, counts: np.ndarray, t: float, seed: int | None,
             keep_values: bool = False) -> Draw:
        """Keep probabilities at ``t`` of the rows under ``mask``: their sums, the draw for ``seed`` (equal
        to :func:`~tasks.metaclip.balance.draw` of all of them at once) and, if asked, the probabilities."""
        t = _check_t(t)
        before = np.concatenate([[0], np.cumsum([int(part.sum()) for part in self.table.split(mask)])])
        parts = list(self._map(_shard_draw, mask, counts, t, seed, keep_values,
                               extra=[(int(offset),) for offset in before[:-1]]))
        return Draw(expected_size=math.fsum(part[0] for part in parts), variance=math.fsum(part[1] for part in parts),
                    keep=np.concatenate([part[2] for part in parts]) if seed is not None else None,
                    probabilities=np.concatenate([part[3] for part in parts]) if keep_values else None)

    def after(self, mask: np.ndarray, keep: np.ndarray, counts: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Entry counts over the rows under ``keep`` (a subset of ``mask``) and the expected entry
        counts at ``t`` over the rows under ``mask``."""
        after, expected = np.zeros(self.n_entries, dtype=np.int64), np.zeros(self.n_entries)
        for shard_after, shard_expected in self._map(_shard_after, mask, counts, t,
                                                     extra=[(part[m],) for part, m in
                                                            zip(self.table.split(keep), self.table.split(mask))]):
            after += shard_after
            expected += shard_expected
        return after, expected


__all__ = ["BUILT_FROM_POOL", "DEFAULT_WORDNET_DIR", "PoolMatches", "match_pool", "pool_metadata",
           "pooled_ngrams", "read_matches"]
