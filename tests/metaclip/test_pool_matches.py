"""MetaCLIP kept per shard: every reduction equals the whole-pool computation on a pool of several shards."""

import numpy as np
import pytest

from tasks.common.catalog import Catalog
from tasks.common.errors import InputError, StageFailed
from tasks.common.store import Store
from tasks.metaclip.balance import (bisect_threshold, draw, entry_counts, expected_size, keep_probabilities,
                                    threshold_for_expected_size)
from tasks.metaclip.matching import Matches
from tasks.metaclip.metadata import Metadata, pool_ngrams
from tasks.metaclip.run import match_pool, pooled_ngrams, read_matches
from tasks.sample.pool_samples import pool_table, whole_pool_frame
from tests.sample.test_subset import write_pool

ENTRIES = ("photo", "red circle", "circle", "blue", "square", "green star", "star", "stock image", "bar chart",
           "chart", "website")


@pytest.fixture
def matched(tmp_path):
    store = Store(str(tmp_path / "store"))
    write_pool(store, n_shards=4, rows=50, seed=3)
    catalog = Catalog(store)
    table = pool_table(store, catalog.snapshot("test"))
    pool = match_pool(catalog, table, Metadata(ENTRIES, "test"))
    whole = Matches.concatenate(read_matches(store, path)[1] for path in pool.paths)
    return store, table, pool, whole


def test_matches_stay_per_shard_and_equal_the_whole_pool(matched):
    store, table, pool, whole = matched
    assert len(pool.paths) == 4 and whole.n_texts == len(table) == 4 * 49
    mask = np.random.default_rng(0).random(len(table)) < 0.7
    rows = np.flatnonzero(mask)
    counts, n_matched = pool.entry_counts(mask)
    assert counts.tolist() == entry_counts(whole.take(rows), len(ENTRIES)).tolist()
    assert n_matched == int(np.count_nonzero(whole.take(rows).counts_per_text()))
    assert pool.matched(mask).tolist() == (whole.take(rows).counts_per_text() > 0).tolist()
    for t in (1.0, 3.5, 20.0):
        p = keep_probabilities(whole.take(rows), counts, t)
        result = pool.draw(mask, counts, t, seed=11, keep_values=True)
        assert np.array_equal(result.probabilities, p)  # bit for bit: a text's probability is its own
        assert np.array_equal(result.keep, draw(p, 11))  # the shards' draws are the whole pool's draw
        assert result.expected_size == pytest.approx(expected_size(p), rel=1e-12)
        assert pool.sums(mask, counts, [t])[0][1] == pytest.approx(float(np.sum(p * (1 - p))), rel=1e-12)
        keep = np.zeros(len(table), dtype=bool)
        keep[rows[result.keep]] = True
        after, expected = pool.after(mask, keep, counts, t)
        assert after.tolist() == entry_counts(whole.take(np.flatnonzero(keep)), len(ENTRIES)).tolist()
        reference = np.bincount(whole.take(rows).entry_ids, weights=np.repeat(p, whole.take(rows).counts_per_text()),
                                minlength=len(ENTRIES))
        np.testing.assert_allclose(expected, reference, rtol=1e-12)
    for target in (5, n_matched // 2, n_matched):
        sharded = pool.threshold_for_expected_size(mask, counts, n_matched, target)
        reference = threshold_for_expected_size(whole.take(rows), counts, target)
        # the same root; at target = n_matched the size is flat within rounding below max(counts),
        # where sums in another order may stop the bisection elsewhere on the flat part
        assert expected_size(keep_probabilities(whole.take(rows), counts, sharded)) == pytest.approx(target, rel=1e-9)
        if target < n_matched:
            assert sharded == pytest.approx(reference, rel=1e-12)
    with pytest.raises(InputError, match="target must lie"):
        pool.threshold_for_expected_size(mask, counts, n_matched, n_matched + 1)


def test_one_shard_is_bit_for_bit_the_whole_computation(tmp_path):
    store = Store(str(tmp_path / "store"))
    write_pool(store, n_shards=1, rows=120, seed=4)
    catalog = Catalog(store)
    table = pool_table(store, catalog.snapshot("test"))
    pool = match_pool(catalog, table, Metadata(ENTRIES, "test"))
    whole = read_matches(store, pool.paths[0])[1]
    mask = np.ones(len(table), dtype=bool)
    counts, n_matched = pool.entry_counts(mask)
    assert pool.threshold_for_expected_size(mask, counts, n_matched, 40) == threshold_for_expected_size(whole, counts,
                                                                                                        40)
    assert pool.draw(mask, counts, 2.0, None).expected_size == expected_size(keep_probabilities(whole, counts, 2.0))


def test_a_rerun_checks_the_matches_it_finds(matched):
    store, table, pool, _ = matched
    catalog = Catalog(store)
    again = match_pool(catalog, table, Metadata(ENTRIES, "test"))
    assert again.paths == pool.paths
    # a matches file of another shard in place of this one's is found out
    store.write_bytes(pool.paths[0], store.read_bytes(pool.paths[1]))
    with pytest.raises(StageFailed, match="its uids are not those of its shard"):
        match_pool(catalog, table, Metadata(ENTRIES, "test"))


def test_bisection_in_rounds_is_the_same_bisection():
    def sizes(ts):
        return [sum(1 - np.exp(-t / c) for c in (1.0, 3.0, 7.0, 50.0, 400.0)) for t in ts]

    for target in (0.3, 2.2, 4.9):
        one = bisect_threshold(sizes, 0.01, 400.0, target)
        for depth in (2, 4, 7):
            assert bisect_threshold(sizes, 0.01, 400.0, target, depth=depth) == one
    with pytest.raises(InputError, match="depth"):
        bisect_threshold(sizes, 0.01, 400.0, 1.0, depth=0)


def test_draw_with_an_offset_is_a_slice_of_the_whole_draw():
    p = np.random.default_rng(1).random(1000)
    whole = draw(p, 5)
    assert np.array_equal(np.concatenate([draw(p[:10], 5), draw(p[10:700], 5, 10), draw(p[700:], 5, 700)]), whole)


def test_pooled_ngrams_equal_pool_ngrams_of_every_caption(tmp_path):
    store = Store(str(tmp_path / "store"))
    write_pool(store, n_shards=3, rows=40, seed=2)
    snapshot = Catalog(store).snapshot("test")
    table = pool_table(store, snapshot)
    texts = whole_pool_frame(table, ("text",))["text"].tolist()
    for options in ({"min_unigram_count": 5}, {"min_unigram_count": 2, "min_bigram_count": 2, "min_bigram_pmi": 1.0},
                    {"min_unigram_count": 1000}):
        assert pooled_ngrams(table, **options) == pool_ngrams(texts, **options)
    with pytest.raises(InputError, match="unknown setting"):
        pooled_ngrams(table, min_trigram_count=3)
    with pytest.raises(InputError, match="min_bigram_count must be at least 1"):
        pooled_ngrams(table, min_bigram_count=0)
