"""QUOTA: hand-computed caps, the random remainder, the grouped form, properties, bad input."""

import numpy as np
import pytest

from tasks.common.errors import InputError
from tasks.sample.quota import grouped_quota, quota


def rng(seed=0):
    return np.random.default_rng(seed)


def test_cap_without_remainder():
    # caps: 3 -> 1+3+3 = 7, 4 -> 1+4+4 = 9 = budget, 5 -> 11 > 9: cap 4, nothing left over
    np.testing.assert_array_equal(quota([1, 5, 10], 9, rng()), [1, 4, 4])
    np.testing.assert_array_equal(quota([10, 1, 5], 9, rng()), [4, 1, 4])  # order of the clusters kept


def test_remainder_goes_to_one_larger_cluster():
    # cap 3 -> 2+3+3+3 = 11, cap 4 -> 14 > 12: one unit left for one of the 7s
    seen = set()
    for seed in range(40):
        allocation = quota([2, 7, 7, 7], 12, rng(seed))
        assert allocation.sum() == 12 and allocation[0] == 2
        assert sorted(allocation[1:].tolist()) == [3, 3, 4]
        seen.add(int(np.flatnonzero(allocation == 4)[0]))
    assert seen == {1, 2, 3}


def test_remainder_is_uniform_over_the_larger_clusters():
    hits = np.zeros(5)
    for seed in range(3000):
        hits += quota([1, 9, 9, 9, 9], 7, rng(seed)) == 2  # cap 1: 5 units, 2 left over for four 9s
    share = hits[1:] / 3000
    assert hits[0] == 0
    np.testing.assert_allclose(share, 0.5, atol=0.04)


def test_everything_when_the_budget_is_enough():
    np.testing.assert_array_equal(quota([3, 0, 4], 7, rng()), [3, 0, 4])
    np.testing.assert_array_equal(quota([3, 0, 4], 100, rng()), [3, 0, 4])
    assert quota([], 5, rng()).tolist() == []
    np.testing.assert_array_equal(quota([3, 4], 0, rng()), [0, 0])


def test_small_clusters_keep_their_size_and_free_budget_for_the_rest():
    # cap 30: 2 + 5 + 30 + 30 = 67; cap 31 -> 69 > 68: one left over for one of the two 100s
    allocation = quota([2, 5, 100, 100], 68, rng())
    assert allocation[:2].tolist() == [2, 5] and sorted(allocation[2:].tolist()) == [30, 31]


def test_budget_smaller_than_the_number_of_clusters():
    allocation = quota([5, 5, 5, 5, 5], 3, rng(1))  # cap 0, three clusters drawn for one unit each
    assert allocation.sum() == 3 and set(allocation.tolist()) == {0, 1}


def test_grouped_equals_quota_per_group_without_remainders():
    sizes = np.array([1, 5, 10, 4, 4, 2, 9])
    groups = np.array([0, 0, 0, 2, 2, 1, 1])  # group 2 takes everything, 1 has cap 3 -> 2 + 3
    budgets = np.array([9, 5, 100])
    allocation = grouped_quota(sizes, groups, budgets, rng())
    np.testing.assert_array_equal(allocation, [1, 4, 4, 4, 4, 2, 3])
    for g in range(3):
        np.testing.assert_array_equal(allocation[groups == g], quota(sizes[groups == g], budgets[g], rng()))


def brute_cap(sizes, budget):
    """The largest cap c with sum(min(c, s)) <= budget, by trying every c."""
    return max(c for c in range(int(max(sizes, default=0)) + 2) if np.minimum(sizes, c).sum() <= budget)


def assert_quota_shape(allocation, sizes, budget):
    """Every cluster gets min(cap, size), clusters larger than the cap maybe one more, summing to
    min(budget, total)."""
    assert allocation.sum() == min(budget, sizes.sum())
    if sizes.sum() <= budget:
        np.testing.assert_array_equal(allocation, sizes)
        return
    cap = brute_cap(sizes, budget)
    extra = allocation - np.minimum(sizes, cap)
    assert set(extra.tolist()) <= {0, 1} and np.all(extra[sizes <= cap] == 0)


def test_grouped_matches_quota_per_group_in_sums_and_caps():
    generator = rng(5)
    sizes = generator.integers(0, 50, 300)
    groups = generator.integers(0, 17, 300)
    budgets = generator.integers(0, 400, 17)
    allocation = grouped_quota(sizes, groups, budgets, rng(7))
    for g in range(17):
        inside = groups == g
        alone = quota(sizes[inside], budgets[g], rng(g))
        assert allocation[inside].sum() == alone.sum()
        assert_quota_shape(allocation[inside], sizes[inside], budgets[g])
        assert_quota_shape(alone, sizes[inside], budgets[g])


@pytest.mark.parametrize("seed", range(30))
def test_properties_on_random_inputs(seed):
    generator = rng(seed)
    n = int(generator.integers(1, 60))
    sizes = generator.integers(0, 1000, n) * (generator.random(n) < 0.8)
    budget = int(generator.integers(0, sizes.sum() + 50))
    allocation = quota(sizes, budget, rng(seed + 100))
    assert allocation.dtype == np.int64
    assert allocation.sum() == min(budget, sizes.sum())
    assert np.all(allocation >= 0) and np.all(allocation <= sizes)
    assert_quota_shape(allocation, sizes, budget)


def test_grouped_properties_on_random_inputs():
    generator = rng(11)
    sizes = generator.integers(0, 300, 5000)
    groups = generator.integers(0, 400, 5000)
    budgets = generator.integers(0, 3000, 400)
    allocation = grouped_quota(sizes, groups, budgets, rng(3))
    totals = np.bincount(groups, weights=sizes, minlength=400)
    np.testing.assert_array_equal(np.bincount(groups, weights=allocation, minlength=400), np.minimum(budgets, totals))
    assert np.all(allocation <= sizes)


def test_bad_input_names_the_parameter():
    with pytest.raises(InputError, match="budget"):
        quota([1, 2], -1, rng())
    with pytest.raises(InputError, match="sizes"):
        quota([1, -2], 3, rng())
    with pytest.raises(InputError, match="sizes"):
        quota([1.5, 2], 3, rng())
    with pytest.raises(InputError, match="budgets"):
        grouped_quota([1, 2], [0, 0], [-1], rng())
    with pytest.raises(InputError, match="groups"):
        grouped_quota([1, 2], [0, 1], [3], rng())
    with pytest.raises(InputError, match="groups"):
        grouped_quota([1, 2], [0], [3], rng())
