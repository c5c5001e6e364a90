"""SemDeDup: planted semantic duplicates inside k-means clusters, one kept per group, bounded windows."""

import numpy as np

from tasks.cluster.hierarchical import normalise_rows
from tasks.filters.semdedup import later_duplicates


def test_later_duplicates_exact_case():
    points = normalise_rows(np.array([[1, 0], [0.999, 0.04], [0, 1], [0.02, 1], [1, 0.01]], dtype=np.float32))
    labels = np.array([0, 0, 1, 1, 2])  # row 4 is close to row 0 but in another cluster: not compared
    rank = np.array([1, 0, 0, 1, 0])
    np.testing.assert_array_equal(later_duplicates(points, labels, rank, 0.99), [True, False, False, True, False])


def test_windows_give_the_same_answer_as_one_block():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(400, 16)).astype(np.float32)
    points = normalise_rows(np.concatenate([base, base[:150] + 0.01 * rng.normal(size=(150, 16)).astype(np.float32)]))
    labels = rng.integers(0, 3, len(points))
    labels[400:] = labels[:150]
    rank = rng.random(len(points))
    whole = later_duplicates(points, labels, rank, 0.98, window_rows=10_000, window_columns=10_000)
    windowed = later_duplicates(points, labels, rank, 0.98, window_rows=7, window_columns=13)
    np.testing.assert_array_equal(whole, windowed)
    assert whole.sum() == 150  # one of every planted pair goes
