"""Balanced sampling from a hand-built cluster tree: exact shares, selections, modes, bad input."""

import numpy as np
import pytest

from tasks.cluster.hierarchical import ClusterLevel
from tasks.common.errors import InputError
from tasks.sample.quota import quota
from tasks.sample.tree_sampling import balanced_sample, selected_per_cluster, top_level_distances

# level 1: six clusters of sizes 40, 10, 2, 20, 20, 4 (96 samples); level 2: {0, 1, 2} -> 0, {3, 4, 5} -> 1
SIZES = [40, 10, 2, 20, 20, 4]
PARENTS = [0, 0, 0, 1, 1, 1]
# target 32: top sizes 52 and 44, cap 16 -> 16 each; node 0: cap 7 -> 7, 7, 2; node 1: cap 6 -> 6, 6, 4
SHARES = [7, 7, 2, 6, 6, 4]


def level(labels, k, distances=None, dim=2, seed=0):
    labels = np.asarray(labels, dtype=np.int64)
    if distances is None:
        distances = np.random.default_rng(seed).random(len(labels))
    return ClusterLevel(centroids=np.zeros((k, dim), dtype=np.float32), labels=labels,
                        distances=np.asarray(distances, dtype=np.float32))


def two_level_tree(seed=0):
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(6), SIZES))
    distances = np.random.default_rng(seed + 1).permutation(len(labels)) / 10.0  # all different
    return [level(labels, 6, distances), level(PARENTS, 2)]


def per_cluster(levels, chosen):
    return [c.tolist() for c in selected_per_cluster(levels, chosen)]


@pytest.mark.parametrize("selection", ["r", "c", "f"])
def test_hierarchical_gives_every_cluster_its_quota(selection):
    levels = two_level_tree()
    chosen = balanced_sample(levels, 32, selection=selection, seed=3)
    assert chosen.dtype == np.int64 and len(chosen) == 32
    assert np.all(np.diff(chosen) > 0)  # sorted, no duplicates
    assert per_cluster(levels, chosen) == [SHARES, [16, 16]]


def test_closest_and_furthest():
    levels = two_level_tree()
    labels, distances = levels[0].labels, levels[0].distances
    for selection, pick in (("c", np.argsort), ("f", lambda d: np.argsort(-d))):
        chosen = balanced_sample(levels, 32, selection=selection, seed=0)
        expected = np.concatenate([np.flatnonzero(labels == j)[pick(distances[labels == j])[:share]]
                                   for j, share in enumerate(SHARES)])
        np.testing.assert_array_equal(chosen, np.sort(expected))


def test_ties_in_distance_are_broken_at_random():
    levels = [level(np.zeros(20), 1, np.zeros(20))]
    draws = {tuple(balanced_sample(levels, 5, selection="c", seed=seed)) for seed in range(10)}
    assert len(draws) > 1


@pytest.mark.parametrize("selection, always", [("c", 0), ("f", 4)])
def test_a_tie_at_the_cut_is_drawn_at_random(selection, always):
    distances = [0.1, 0.2, 0.2, 0.2, 0.5] if selection == "c" else [0.1, 0.4, 0.4, 0.4, 0.5]
    levels = [level(np.zeros(5), 1, distances)]
    draws = [balanced_sample(levels, 2, selection=selection, seed=seed) for seed in range(60)]
    assert all(always in chosen for chosen in draws)
    others = np.bincount(np.concatenate(draws), minlength=5)[[1, 2, 3]]
    assert others.sum() == 60 and others.min() > 5  # each of the three tied samples gets drawn


def test_random_differs_across_seeds_and_is_deterministic():
    levels = two_level_tree()
    first = balanced_sample(levels, 32, seed=1)
    np.testing.assert_array_equal(first, balanced_sample(levels, 32, seed=1))
    assert not np.array_equal(first, balanced_sample(levels, 32, seed=2))


def test_random_is_uniform_inside_a_cluster():
    labels = np.repeat([0, 1], [10, 4])  # target 6: cap 3 -> 3 of 10 and 3 of 4
    levels = [level(labels, 2)]
    runs = 2000
    hits = np.zeros(14)
    for seed in range(runs):
        hits[balanced_sample(levels, 6, seed=seed)] += 1
    np.testing.assert_allclose(hits[:10] / runs, 0.3, atol=0.05)
    np.testing.assert_allclose(hits[10:] / runs, 0.75, atol=0.05)


def test_candidates_restrict_the_choice_and_the_sizes():
    levels = two_level_tree()
    candidates = np.ones(96, dtype=bool)
    candidates[np.flatnonzero(levels[0].labels == 0)[5:]] = False  # cluster 0 keeps 5 of its 40
    # top sizes 17 and 44, cap 16 -> 16 each; node 0: cap 9 -> 5, 9, 2; node 1 as before
    for selection in "rcf":
        chosen = balanced_sample(levels, 32, selection=selection, seed=4, candidates=candidates)
        assert len(chosen) == 32 and candidates[chosen].all()
        assert per_cluster(levels, chosen) == [[5, 9, 2, 6, 6, 4], [16, 16]]
    everything = balanced_sample(levels, int(candidates.sum()), candidates=candidates)
    np.testing.assert_array_equal(everything, np.flatnonzero(candidates))


def test_top_level_shares_equal_quota_with_a_remainder():
    levels = two_level_tree()
    for seed in range(5):
        chosen = balanced_sample(levels, 31, seed=seed)
        top = selected_per_cluster(levels, chosen)[1]
        assert sorted(top.tolist()) == [15, 16]  # cap 15, one unit left for either node
        assert top.tolist() == quota([52, 44], 31, np.random.default_rng(seed)).tolist()


def test_hierarchical_gives_a_tiny_child_its_share_and_flat_does_not():
    labels = np.repeat([0, 1, 2], [1000, 10, 500])  # node 0: a huge and a tiny child; node 1: one child
    levels = [level(labels, 3), level([0, 0, 1], 2)]
    tiny = labels == 1
    hierarchical = balanced_sample(levels, 40, mode="hierarchical", seed=0)
    assert tiny[hierarchical].sum() == 10  # node 0's 20: cap 10 -> 10 and 10
    flat = [tiny[balanced_sample(levels, 40, mode="flat", seed=seed)].sum() for seed in range(50)]
    assert np.mean(flat) == pytest.approx(20 * 10 / 1010, abs=0.2)  # 20 random picks among 1010
    assert per_cluster(levels, hierarchical)[1] == [20, 20]


def test_flat_picks_by_top_level_distance():
    levels = two_level_tree()
    top_distances = np.random.default_rng(9).permutation(96).astype(np.float32)
    top = levels[1].labels[levels[0].labels]
    for selection, sign in (("c", 1), ("f", -1)):
        chosen = balanced_sample(levels, 32, mode="flat", selection=selection, distances=top_distances)
        expected = np.concatenate([np.flatnonzero(top == j)[np.argsort(sign * top_distances[top == j])[:16]]
                                   for j in (0, 1)])
        np.testing.assert_array_equal(chosen, np.sort(expected))


@pytest.mark.parametrize("selection", ["r", "c", "f"])
def test_one_level_hierarchical_equals_flat(selection):
    rng = np.random.default_rng(2)
    levels = [level(rng.integers(0, 7, 300), 7, rng.random(300))]
    candidates = rng.random(300) < 0.7
    for kwargs in ({}, {"candidates": candidates}):
        hierarchical = balanced_sample(levels, 50, "hierarchical", selection, seed=5, **kwargs)
        flat = balanced_sample(levels, 50, "flat", selection, seed=5, **kwargs)
        np.testing.assert_array_equal(hierarchical, flat)
        given = balanced_sample(levels, 50, "flat", selection, seed=5, distances=levels[0].distances, **kwargs)
        np.testing.assert_array_equal(given, flat)


def test_three_levels_sum_exactly():
    rng = np.random.default_rng(0)
    sizes = (1000 / np.arange(1, 201) ** 1.1).astype(int) + 1
    labels = rng.permutation(np.repeat(np.arange(200), sizes))
    levels = [level(labels, 200), level(rng.permutation(np.arange(200) % 30), 30), level(np.arange(30) % 4, 4)]
    top = levels[2].labels[levels[1].labels[labels]]
    candidates = rng.random(len(labels)) < 0.6
    for mode in ("hierarchical", "flat"):
        for selection in "rcf":
            extra = {"distances": rng.random(len(labels))} if mode == "flat" and selection != "r" else {}
            for target in (1, 37, 500, len(labels)):
                chosen = balanced_sample(levels, target, mode=mode, selection=selection, seed=target, **extra)
                assert len(np.unique(chosen)) == target
                assert all(c.sum() == target for c in selected_per_cluster(levels, chosen))
            chosen = balanced_sample(levels, 300, mode=mode, selection=selection, candidates=candidates, **extra)
            assert len(np.unique(chosen)) == 300 and candidates[chosen].all()
            top_counts = np.bincount(top[chosen], minlength=4)
            available = np.bincount(top[candidates], minlength=4)
            cap = max(c for c in range(301) if np.minimum(available, c).sum() <= 300)
            assert np.all((top_counts == np.minimum(available, cap)) | (top_counts == cap + 1))


def test_ties_do_not_depend_on_the_path():
    rng = np.random.default_rng(4)
    levels = [level(rng.integers(0, 5, 400), 5, rng.integers(0, 6, 400) / 4)]  # many equal distances
    for selection in "cf":
        flat = balanced_sample(levels, 90, "flat", selection, seed=2, distances=levels[0].distances)
        np.testing.assert_array_equal(flat, balanced_sample(levels, 90, "hierarchical", selection, seed=2))


def test_top_level_distances():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(50, 3)).astype(np.float32)
    level1 = ClusterLevel(centroids=rng.normal(size=(5, 3)).astype(np.float32), labels=rng.integers(0, 5, 50),
                          distances=np.zeros(50, dtype=np.float32))
    top_centroids = rng.normal(size=(2, 3)).astype(np.float32)
    level2 = ClusterLevel(centroids=top_centroids, labels=np.array([0, 1, 1, 0, 1]), distances=np.zeros(5, np.float32))
    top = level2.labels[level1.labels]
    raw = top_level_distances([level1, level2], embeddings, "l2", chunk_rows=7)
    np.testing.assert_allclose(raw, ((embeddings - top_centroids[top]) ** 2).sum(1), rtol=1e-5)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    cosine = top_level_distances([level1, level2], embeddings, "cosine", chunk_rows=7)
    np.testing.assert_allclose(cosine, ((unit - top_centroids[top]) ** 2).sum(1), rtol=1e-5)
    assert raw.dtype == np.float32
    with pytest.raises(InputError, match="metric"):
        top_level_distances([level1, level2], embeddings, "dot")
    with pytest.raises(InputError, match="embeddings"):
        top_level_distances([level1, level2], embeddings[:10], "l2")
    embeddings[3] = 0
    with pytest.raises(InputError, match="embeddings"):
        top_level_distances([level1, level2], embeddings, "cosine")


def test_bad_input_names_the_parameter():
    levels = two_level_tree()
    with pytest.raises(InputError, match="target"):
        balanced_sample(levels, 97)
    with pytest.raises(InputError, match="target"):
        balanced_sample(levels, 0)
    with pytest.raises(InputError, match="target"):
        balanced_sample(levels, 10, candidates=np.arange(96) < 5)
    with pytest.raises(InputError, match="mode.*hierarchical, flat"):
        balanced_sample(levels, 10, mode="deep")
    with pytest.raises(InputError, match="selection.*r, c, f"):
        balanced_sample(levels, 10, selection="x")
    with pytest.raises(InputError, match="distances"):
        balanced_sample(levels, 10, mode="flat", selection="c")
    with pytest.raises(InputError, match="distances"):
        balanced_sample(levels, 10, mode="flat", selection="f", distances=np.zeros(5))
    with pytest.raises(InputError, match="candidates"):
        balanced_sample(levels, 10, candidates=np.ones(95, dtype=bool))
    with pytest.raises(InputError, match="candidates"):
        balanced_sample(levels, 10, candidates=np.ones(96))
    with pytest.raises(InputError, match="seed"):
        balanced_sample(levels, 10, seed=-1)
    with pytest.raises(InputError, match="levels"):
        balanced_sample([], 10)


def test_a_broken_tree_names_the_level():
    levels = two_level_tree()
    with pytest.raises(InputError, match="level 2"):
        balanced_sample([levels[0], level([0, 1, 0, 1], 2)], 10)  # 4 labels for 6 level-1 clusters
    out_of_range = level(PARENTS, 2)
    out_of_range.labels = np.array([0, 0, 0, 1, 1, 2])
    with pytest.raises(InputError, match="level 2"):
        balanced_sample([levels[0], out_of_range], 10)
    stale = two_level_tree()[0]
    stale.labels = np.where(stale.labels == 0, 1, stale.labels)  # in range, but order/offsets are now stale
    with pytest.raises(InputError, match="level 1"):
        balanced_sample([stale, levels[1]], 10)
    first = two_level_tree()[0]
    first.labels = first.labels.copy()
    first.labels[0] = -1
    with pytest.raises(InputError, match="level 1"):
        balanced_sample([first, levels[1]], 10)
