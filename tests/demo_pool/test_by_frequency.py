import json

import numpy as np
import pytest

from tasks.demo_pool.by_frequency import recall_by_frequency


def test_groups_and_correlation():
    counts = np.array([1000, 500, 100, 50, 40, 30, 20, 10, 5, 2])
    recall = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, None]
    out = recall_by_frequency(recall, counts)
    head, torso, tail = out["groups"]
    assert head["classes"] == 1 and head["mean_recall"] == 0.9 and head["train_samples_per_class"] == "1000-1000"
    assert torso["classes"] == 4 and torso["mean_recall"] == pytest.approx(0.65)
    assert tail["classes"] == 4 and tail["mean_recall"] == pytest.approx(0.25)
    assert out["spearman_count_vs_recall"] == pytest.approx(1.0)


def test_no_relation_gives_no_correlation():
    counts = np.array([100, 10, 100, 10])
    out = recall_by_frequency([0.5, 0.5, 0.5, 0.5] , counts)
    assert out["spearman_count_vs_recall"] is None  # constant recall: the correlation is undefined


@pytest.mark.parametrize("recall,counts", [
    ([], []),                                   # no classes
    ([0.5], [10]),                              # one class
    ([None, None], [3, 4]),                     # no class with a recall
    ([0.2, 0.4, 0.6], [7, 7, 7]),               # all counts equal
    ([0.0, 0.0, 0.0], [0, 0, 0]),               # zeros
    ([0.3, np.nan, 0.9, 0.1], [5, 2, np.nan, 1]),  # NaN recall and count
])
def test_degenerate_inputs_give_an_answer(recall, counts):
    out = recall_by_frequency(recall, np.array(counts, dtype=float))
    assert sum(row["classes"] for row in out["groups"]) == sum(
        r is not None and np.isfinite(r) and np.isfinite(c) for r, c in zip(recall, counts))
    spearman = out["spearman_count_vs_recall"]
    assert spearman is None or -1 <= spearman <= 1
    if len(set(c for c in counts if np.isfinite(c))) < 2:
        assert spearman is None
    json.dumps(out)


def test_nan_count_left_out():
    out = recall_by_frequency([0.3, np.nan, 0.9, 0.1], np.array([5, 2, np.nan, 1]))
    assert out["spearman_count_vs_recall"] == pytest.approx(1.0)  # (5, 0.3) and (1, 0.1)
    assert all(row["train_share"] is not None for row in out["groups"])
    zero = recall_by_frequency([0.1, 0.2], np.array([0, 0]))
    assert all(row["train_share"] is None for row in zero["groups"])
