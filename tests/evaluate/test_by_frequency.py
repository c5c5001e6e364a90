import numpy as np
import pytest

from tasks.evaluate.by_frequency import recall_by_frequency


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
    assert np.isnan(out["spearman_count_vs_recall"]) or abs(out["spearman_count_vs_recall"]) < 1e-9
