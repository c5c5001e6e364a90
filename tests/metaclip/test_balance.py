"""MetaCLIP balancing: keep probabilities, thresholds, offline and online draws, the report."""

import numpy as np
import pytest

from tasks.common.errors import InputError
from tasks.metaclip.balance import (balance_report, draw, entry_counts, expected_size, keep_probabilities,
                                    online_keep, threshold_for_expected_size, threshold_for_tail_share)
from tasks.metaclip.matching import Matches, _from_sets


def random_matches(n_texts: int, n_entries: int, seed: int) -> Matches:
    """Zipf-like entry popularity, 0 to 4 draws of an entry per text (repeats collapse)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_entries + 1)
    sizes = rng.integers(0, 5, n_texts)
    texts = np.repeat(np.arange(n_texts), sizes)
    entries = rng.choice(n_entries, size=len(texts), p=weights / weights.sum())
    texts, entries = np.divmod(np.unique(texts * n_entries + entries), n_entries)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(texts, minlength=n_texts))])
    return Matches(indptr, entries)


def test_entry_counts_over_shards():
    a = _from_sets([{0, 1}, {1}, set()])
    b = _from_sets([{2}, {1, 2}])
    assert entry_counts(a, 4).tolist() == [1, 2, 0, 0]
    assert entry_counts([a, b], 4).tolist() == [1, 3, 2, 0]
    with pytest.raises(InputError, match="n_entries"):
        entry_counts(b, 2)


def test_keep_probabilities_by_hand():
    matches = _from_sets([{0, 1}, {0}, set(), {1}, {0}])
    counts = np.array([10, 2])
    p = keep_probabilities(matches, counts, t=5)
    assert p.tolist() == [1.0, 0.5, 0.0, 1.0, 0.5]
    two = _from_sets([{0, 1}])
    assert keep_probabilities(two, np.array([10, 20]), t=5)[0] == pytest.approx(1 - 0.5 * 0.75)
    assert keep_probabilities(two, np.array([10 ** 12, 10 ** 12]), t=1)[0] == pytest.approx(2e-12, rel=1e-9)
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(InputError, match="t must"):
            keep_probabilities(matches, counts, t=bad)
    with pytest.raises(InputError, match="entry 1"):
        keep_probabilities(matches, np.array([10, 0]), t=5)
    with pytest.raises(InputError, match="counts"):
        keep_probabilities(matches, np.array([10]), t=5)


def test_threshold_for_tail_share_by_hand():
    counts = np.array([1, 2, 3, 4, 90, 0])  # 100 matches
    assert threshold_for_tail_share(counts, 0.01) == 2  # count < 2 holds 1%
    assert threshold_for_tail_share(counts, 0.02) == 3  # count < 3 holds 3%
    assert threshold_for_tail_share(counts, 0.06) == 4  # count < 4 holds 6%
    assert threshold_for_tail_share(counts, 0.07) == 5  # count < 5 holds 10%
    assert threshold_for_tail_share(counts, 0.5) == 91
    assert threshold_for_tail_share(np.array([5, 5, 5, 5]), 0.1) == 6  # ties join together
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(InputError, match="tail_share"):
            threshold_for_tail_share(counts, bad)
    with pytest.raises(InputError):
        threshold_for_tail_share(np.zeros(3, dtype=int), 0.5)


def test_threshold_for_expected_size():
    matches = random_matches(20_000, 500, seed=0)
    counts = entry_counts(matches, 500)
    n_matched = int(np.count_nonzero(matches.counts_per_text()))
    for target in (100, 5_000, n_matched - 10, n_matched):
        t = threshold_for_expected_size(matches, counts, target)
        assert expected_size(keep_probabilities(matches, counts, t)) == pytest.approx(target, rel=1e-6)
    with pytest.raises(InputError, match="target"):
        threshold_for_expected_size(matches, counts, n_matched + 1)
    with pytest.raises(InputError, match="target"):
        threshold_for_expected_size(matches, counts, 0)


def test_draw_realised_size():
    matches = random_matches(100_000, 2_000, seed=1)
    counts = entry_counts(matches, 2_000)
    p = keep_probabilities(matches, counts, t=50)
    kept = draw(p, seed=3)
    sigma = np.sqrt(np.sum(p * (1 - p)))
    assert abs(kept.sum() - expected_size(p)) < 4 * sigma
    assert np.array_equal(kept, draw(p, seed=3))
    assert not kept[p == 0].any() and kept[p == 1].all()
    report = balance_report(matches, counts, kept, t=50)
    assert report["realised_size"] == kept.sum()
    assert report["expected_size"] == pytest.approx(expected_size(p))
    assert report["tail_kept_whole_share"] == 1.0
    assert report["n_head_entries"] == int((counts > 50).sum()) > 0
    assert report["n_head_entries"] + report["n_tail_entries"] == report["n_matched_entries"]
    # Head entries end near t; texts kept through other entries push them a little above.
    assert 0.8 < report["head_realised_over_t_median"] < 2.0
    assert report["counts_after"].tolist() == entry_counts(matches.take(kept), 2_000).tolist()


def test_online_keep():
    rng = np.random.default_rng(0)
    n = 200_000
    p = rng.random(n)
    ids = rng.permutation(np.arange(10 ** 9, 10 ** 9 + n, dtype=np.int64)).astype(np.uint64)
    first = online_keep(p, ids, epoch=0, seed=7)
    assert np.array_equal(first, online_keep(p, ids, epoch=0, seed=7))
    order = rng.permutation(n)
    assert np.array_equal(first[order], online_keep(p[order], ids[order], epoch=0, seed=7))
    halves = np.concatenate([online_keep(p[:1000], ids[:1000], 0, 7), online_keep(p[1000:], ids[1000:], 0, 7)])
    assert np.array_equal(first, halves)
    second = online_keep(p, ids, epoch=1, seed=7)
    other_seed = online_keep(p, ids, epoch=0, seed=8)
    assert (first != second).mean() > 0.2 and (first != other_seed).mean() > 0.2
    for mask in (first, second, other_seed):
        assert abs(mask.sum() - p.sum()) < 4 * np.sqrt(np.sum(p * (1 - p)))
    # Independence across epochs: P(kept in both) = sum p^2, not sum p.
    both = (first & second).sum()
    assert abs(both - np.sum(p * p)) < 4 * np.sqrt(np.sum(p * p * (1 - p * p)))
    half = np.full(n, 0.5)
    assert abs(online_keep(half, ids, 5, 0).mean() - 0.5) < 0.01
    assert online_keep(np.ones(3), np.array([-1, 0, 1]), 0, 0).all()
    assert not online_keep(np.zeros(3), np.array([-1, 0, 1]), 0, 0).any()
    with pytest.raises(InputError):
        online_keep(p[:3], ids[:4], 0, 0)
