import json
import math

import pytest

from tasks.demo_pool.ab_statistics import choose_length, paired_test, seed_spread, summarise


# Two-sided p-values of Student's t with few degrees of freedom, in closed form (independent of scipy):
def p_df1(t: float) -> float:
    return 1 - 2 / math.pi * math.atan(abs(t))


def p_df2(t: float) -> float:
    return 1 - abs(t) / math.sqrt(2 + t * t)


def p_df3(t: float) -> float:
    x = abs(t) / math.sqrt(3)
    return 1 - 2 / math.pi * (math.atan(x) + x / (1 + x * x))


def test_summarise_mean_and_standard_error():
    out = summarise([0.10, 0.14, 0.12])
    assert out["n"] == 3
    assert out["mean"] == pytest.approx(0.12)
    assert out["se"] == pytest.approx(0.02 / math.sqrt(3))  # sample sd 0.02


@pytest.mark.parametrize("values,expected", [
    ([0.2], {"mean": 0.2, "se": None, "n": 1}),
    ([], {"mean": None, "se": None, "n": 0}),
    ([None, float("nan")], {"mean": None, "se": None, "n": 0}),
    ([0.3, None, 0.5], {"mean": 0.4, "se": 0.1, "n": 2}),  # missing values are left out
])
def test_summarise_degenerate(values, expected):
    out = summarise(values)
    assert out["n"] == expected["n"]
    for key in ("mean", "se"):
        assert out[key] == (None if expected[key] is None else pytest.approx(expected[key]))
    json.dumps(out, allow_nan=False)


def test_paired_t_test_three_degrees_of_freedom():
    random = {0: 0.10, 1: 0.20, 2: 0.30, 3: 0.40}
    arm = {0: 0.11, 1: 0.22, 2: 0.33, 3: 0.44}  # differences 0.01 .. 0.04: mean 0.025, sd sqrt(5/3) / 100
    out = paired_test(arm, random)
    t = 0.025 / (math.sqrt(5 / 3) / 100 / 2)
    assert out["n"] == 4
    assert out["mean_difference"] == pytest.approx(0.025)
    assert out["t"] == pytest.approx(t)
    assert out["p"] == pytest.approx(p_df3(t), rel=1e-6)
    assert 0.02 < out["p"] < 0.04


def test_paired_t_test_pairs_by_seed_not_by_order():
    random = {2: 0.5, 0: 0.1, 1: 0.2}
    arm = {0: 0.2, 1: 0.25, 2: 0.8, 7: 0.9}  # seed 7 has no random run: left out
    out = paired_test(arm, random)
    d = [0.1, 0.05, 0.3]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    t = mean / (sd / math.sqrt(3))
    assert out["n"] == 3
    assert out["t"] == pytest.approx(t)
    assert out["p"] == pytest.approx(p_df2(t), rel=1e-6)


def test_paired_t_test_negative_difference_is_two_sided():
    out = paired_test({0: 0.1, 1: 0.3}, {0: 0.2, 1: 0.6})  # differences -0.1 and -0.3
    t = -0.2 / (math.sqrt(0.02) / math.sqrt(2))
    assert out["t"] == pytest.approx(t)
    assert out["p"] == pytest.approx(p_df1(t), rel=1e-6)


@pytest.mark.parametrize("arm,random,p", [
    ({0: 0.3}, {0: 0.1}, None),                           # one pair: no test
    ({}, {}, None),                                       # none
    ({0: 0.3, 1: 0.4}, {2: 0.1, 3: 0.2}, None),           # no common seed
    ({0: 0.3, 1: None}, {0: 0.1, 1: 0.2}, None),          # a missing value leaves one pair
    ({0: 0.3, 1: 0.5, 2: 0.6}, {0: 0.1, 1: 0.3, 2: 0.4}, None),  # identical non-zero differences: not testable
    ({0: 0.2, 1: 0.4}, {0: 0.2, 1: 0.4}, 1.0),            # identical arms
    ({0: float("nan"), 1: 0.4, 2: 0.5}, {0: 0.2, 1: 0.4, 2: 0.5}, 1.0),
])
def test_paired_t_test_degenerate(arm, random, p):
    out = paired_test(arm, random)
    assert out["p"] == p
    json.dumps(out, allow_nan=False)  # never NaN or infinity


def test_seed_spread():
    assert seed_spread([0.1, 0.3]) == pytest.approx(math.sqrt(0.02))
    assert seed_spread([0.1]) is None
    assert seed_spread([None]) is None


def test_choose_length_takes_the_shortest_settled_length():
    curve = {
        20480: {"random": [0.10, 0.11], "composition": [0.16, 0.17]},   # gap 0.06, spread 0.007: settled too
        5120: {"random": [0.05, 0.09], "composition": [0.06, 0.07]},    # gap -0.005: not settled
        10240: {"random": [0.10, 0.12], "composition": [0.15, 0.16]},   # gap 0.045, spread 0.0141 <= 0.0225
    }
    out = choose_length(curve)
    assert out["samples_seen"] == 10240 and out["settled"]
    assert list(out["curve"]) == [5120, 10240, 20480]
    row = out["curve"][10240]
    assert row["gap"] == pytest.approx(0.045)
    assert row["spread"] == pytest.approx(0.02 / math.sqrt(2))
    assert row["values"] == {"random": [0.10, 0.12], "composition": [0.15, 0.16]}
    assert "10240" in out["chosen_by"]


def test_choose_length_falls_back_to_the_longest_and_says_so():
    curve = {
        5120: {"random": [0.10, 0.10], "composition": [0.10, 0.10]},   # gap 0, spread 0: not a settled ranking
        10240: {"random": [0.10, 0.20], "composition": [0.16, 0.18]},  # gap 0.02, spread 0.07
    }
    out = choose_length(curve)
    assert out["samples_seen"] == 10240 and not out["settled"]
    assert "longest" in out["chosen_by"]
    json.dumps(out, allow_nan=False)


def test_choose_length_with_missing_values():
    out = choose_length({5120: {"random": [None, None], "composition": [0.2, 0.3]}})
    assert out["samples_seen"] == 5120
    assert out["curve"][5120]["gap"] is None and "longest" in out["chosen_by"]


def test_choose_length_refuses_an_empty_curve_or_a_missing_arm():
    with pytest.raises(ValueError, match="no length"):
        choose_length({})
    with pytest.raises(ValueError, match="composition"):
        choose_length({5120: {"random": [0.1, 0.2]}})


def test_the_demo_cites_the_result_over_seeds(tmp_path):
    from tasks.demo_pool.task import curation_ab_over_seeds

    assert curation_ab_over_seeds(3769, tmp_path / "absent.json")["result"] is None
    result = {"samples_seen": 20480, "seeds": [0, 1, 2], "ranking_by_acc1": ["composition", "random"], "subset_size": 3769,
              "arms": {"random": {"acc1": {"mean": 0.1, "se": 0.01, "values": [0.09, 0.1, 0.11]}},
                       "composition": {"acc1": {"mean": 0.2, "se": 0.01, "values": [0.19, 0.2, 0.21]}}},
              "p_vs_random": {"composition": 0.0123}}
    (tmp_path / "curation_ab.json").write_text(json.dumps(result))
    cited = curation_ab_over_seeds(3769, tmp_path / "curation_ab.json")
    assert cited["ranking_by_acc1"] == ["composition", "random"] and cited["same_subset_size"]
    assert "Over 3 seeds at 20480 samples seen" in cited["says"]
    assert "composition 0.200 (p 0.012), random 0.100" in cited["says"]
    assert "not 200: another run" in curation_ab_over_seeds(200, tmp_path / "curation_ab.json")["says"]
    result["arms"]["random"]["acc1"]["mean"] = None  # a metric without values is said, not a crash
    (tmp_path / "curation_ab.json").write_text(json.dumps(result))
    assert "random n/a" in curation_ab_over_seeds(3769, tmp_path / "curation_ab.json")["says"]
    (tmp_path / "curation_ab.json").write_text(json.dumps({"arms": {}}))
    assert curation_ab_over_seeds(3769, tmp_path / "curation_ab.json")["result"] is None
