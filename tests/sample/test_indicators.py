"""Dataset-scale indicators on hand-computed counts, the count helper, the plots, bad input."""

import json
import math

import numpy as np
import pytest

from tasks.common.errors import InputError
from tasks.sample.indicators import class_counts, class_sizes_plot, cumulative_counts_plot, indicators


def test_hand_computed_counts():
    out = indicators(np.array([50, 30, 10, 5, 5, 0]))
    entropy = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.1 * math.log(0.1) + 2 * 0.05 * math.log(0.05))
    assert out == pytest.approx({
        "classes": 6, "label_set_size": 5, "coverage": 5 / 6, "samples": 100,
        "min": 5, "median": 10.0, "mean": 20.0, "max": 50,
        "ls5": 0.5,  # ceil(0.05 * 5) = 1 class: the largest, 50 of 100
        "lt100": 1.0, "lt500": 1.0, "normalised_entropy": entropy / math.log(5)})
    assert out["normalised_entropy"] == pytest.approx(0.76896, abs=1e-5)
    json.dumps(out)  # plain Python numbers only
    assert all(type(v) in (int, float) for v in out.values())


def test_long_tail_and_skew_options():
    counts = [200, 100, 600, 0, 99]  # label set 4, 999 samples
    out = indicators(counts, long_tail_thresholds=(100, 500, 1000), skew_fraction=0.5)
    assert out["ls50"] == pytest.approx(800 / 999)  # the 2 largest of 4
    assert (out["lt100"], out["lt500"], out["lt1000"]) == (0.25, 0.75, 1.0)  # fewer than k: 99 < 100, 100 is not
    assert indicators(counts, skew_fraction=0.25)["ls25"] == pytest.approx(600 / 999)  # ceil(1.0) = 1 class


def test_balanced_and_degenerate_counts():
    balanced = indicators(np.full(100, 10))
    assert balanced["ls5"] == pytest.approx(0.05) and balanced["normalised_entropy"] == pytest.approx(1.0)
    assert balanced["coverage"] == 1.0 and balanced["lt100"] == 1.0
    single = indicators([0, 7, 0])
    assert single["label_set_size"] == 1 and single["normalised_entropy"] == 0.0 and single["ls5"] == 1.0
    empty = indicators([0, 0])
    assert empty["label_set_size"] == 0 and empty["samples"] == 0 and empty["coverage"] == 0.0
    assert empty["ls5"] == 0.0 and empty["lt100"] == 0.0 and empty["normalised_entropy"] == 0.0
    json.dumps(empty)


@pytest.mark.parametrize("counts", [[0], [7], [0, 0, 0], [5, 5, 5], [0, 3]])
def test_tiny_and_degenerate_counts_never_raise(counts):
    # one class, no samples, all classes equal: every figure is a finite plain number, and the plots draw
    out = indicators(counts)
    assert all(type(v) in (int, float) and math.isfinite(v) for v in out.values())
    assert out["label_set_size"] == sum(c > 0 for c in counts) and out["classes"] == len(counts)
    for plot in (cumulative_counts_plot, class_sizes_plot):
        assert plot({"a": np.array(counts), "b": np.array(counts[:1])}, "degenerate")[:4] == b"\x89PNG"


def test_class_counts():
    np.testing.assert_array_equal(class_counts(np.array([0, 2, 2, 4]), 6), [1, 0, 2, 0, 1, 0])
    assert class_counts(np.array([], dtype=np.int64), 3).tolist() == [0, 0, 0]
    with pytest.raises(InputError, match="labels"):
        class_counts(np.array([0, 6]), 6)
    with pytest.raises(InputError, match="labels"):
        class_counts(np.array([-1]), 6)
    with pytest.raises(InputError, match="n_classes"):
        class_counts(np.array([0]), -1)


def test_plots_are_png():
    named = {"pool": np.array([500, 100, 20, 5, 0]), "balanced": np.array([20, 20, 20, 5, 0])}
    for plot in (cumulative_counts_plot, class_sizes_plot):
        png = plot(named, "a title")
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    with pytest.raises(InputError, match="named_counts"):
        cumulative_counts_plot({}, "nothing")
    with pytest.raises(InputError, match="named_counts"):
        class_sizes_plot({"pool": np.array([1, -1])}, "negative")


def test_bad_counts_name_the_parameter():
    with pytest.raises(InputError, match="counts"):
        indicators([])
    with pytest.raises(InputError, match="counts"):
        indicators([3, -1])
    with pytest.raises(InputError, match="counts"):
        indicators([[1, 2]])
    with pytest.raises(InputError, match="skew_fraction"):
        indicators([1, 2], skew_fraction=0)
    with pytest.raises(InputError, match="long_tail_thresholds"):
        indicators([1, 2], long_tail_thresholds=(0,))
