"""Filters against the planted truth: tiny and degenerate inputs give a table, never an error."""

import json

import numpy as np
import pandas as pd
import pytest

from tasks.demo_pool.filter_truth import CHECKS, DEDUP_CHECKS, filter_precision_recall

FILTERS = sorted({name for name, *_ in CHECKS.values()} | {name for name, _ in DEDUP_CHECKS.values()})


def _truth(n, **columns):
    truth = pd.DataFrame({"uid": [f"u{i}" for i in range(n)], "too_small": [False] * n,
                          "extreme_aspect": [False] * n, "caption_kind": ["named"] * n,
                          "unsafe_caption": [False] * n, "eval_leak": [False] * n,
                          "dup_kind": [""] * n, "dup_of": [""] * n})
    return truth.assign(**columns)


def _decisions(n, keep, reason):
    columns = {"uid": [f"u{i}" for i in range(n)]}
    for name in FILTERS:
        columns[f"keep_{name}"], columns[f"reason_{name}"] = keep, reason
    return pd.DataFrame(columns)


def _by_check(rows):
    json.dumps(rows)  # plain Python values only
    for row in rows:
        assert row["precision"] is None or 0 <= row["precision"] <= 1
        assert row["recall"] is None or 0 <= row["recall"] <= 1
    return {row["check"]: row for row in rows}


@pytest.mark.parametrize("decisions,truth", [
    (_decisions(0, [], []), _truth(0)),                                      # no samples
    (_decisions(2, [True, False], ["", "too_small"]).assign(uid=["x", "y"]), _truth(2)),  # no overlap
    (_decisions(1, [False], ["too_small"]), _truth(1, too_small=[True])),    # one sample
])
def test_tiny_inputs_give_a_table(decisions, truth):
    rows = _by_check(filter_precision_recall(decisions, truth))
    assert len(rows) == len(CHECKS) + len(DEDUP_CHECKS)
    removed_small = rows["too small images"]["removed"]
    assert rows["too small images"]["recall"] == (1.0 if removed_small and len(truth) == 1 else None)


def test_nan_decisions_are_kept_and_nan_truth_is_not_planted():
    decisions = _decisions(3, [True, np.nan, False], [None, np.nan, "exact,too_small"])
    truth = _truth(3, too_small=[np.nan, False, True], caption_kind=[None, "junk", "named"],
                   dup_kind=["", "exact", "exact"], dup_of=[None, "u0", "u0"])
    rows = _by_check(filter_precision_recall(decisions, truth))
    assert rows["too small images"] == {"check": "too small images", "filter": "basic", "planted": 1,
                                        "removed": 1, "precision": 1.0, "recall": 1.0}
    exact = rows["exact duplicates"]  # one group of 3 (u0 and two copies): 2 removals needed, 1 made
    assert (exact["planted"], exact["removed"], exact["recall"], exact["precision"]) == (2, 1, 0.5, 1.0)
    assert rows["short or junk captions"]["planted"] == 1 and rows["short or junk captions"]["removed"] == 0


def test_every_copy_removed():
    truth = _truth(4, dup_kind=["", "exact", "exact", "exact"], dup_of=["", "u0", "u0", "u0"])
    rows = _by_check(filter_precision_recall(_decisions(4, [False] * 4, ["exact"] * 4), truth))
    assert rows["exact duplicates"]["recall"] == 1.0 and rows["exact duplicates"]["precision"] == 1.0
