"""The demo's curation A/B: the subsets it compares, their true-concept balance, and the result table.

In:  the number of samples the download and the filters kept; later the subset manifests, the
     train_eval results of the trained arms and the demo's truth file (true concept per uid; read
     here, in evaluation steps only, never by a curation stage).
Out: :func:`demo_subsets`: the recipes of the arms trained at equal size (random, filters,
     hierarchical k-means, MetaCLIP, a composition) and of the sampling-only comparisons (1 level
     against 4 levels, flat against hierarchical, r / c / f selection);
     :func:`concept_balance`: indicators over the true concepts of the pool and of every subset;
     :func:`ab_rows`: one row per trained arm with its accuracies and indicators, and the winner.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.demo_pool.by_frequency import recall_by_frequency
from tasks.sample.indicators import cumulative_counts_plot, indicators

# Concept-level long-tail thresholds: an equal-size subset of 4,000 over 100 concepts averages
# 40 samples per concept, so DataComp-scale thresholds (100, 500) would say "all tail" for all arms.
CONCEPT_LONG_TAIL = (10, 20)


def subset_size(kept: int) -> int:
    """The A/B's common subset size: 4,000 on the default pool, a third of what the filters kept on smaller ones."""
    return max(1, min(4000, kept // 3))


def demo_subsets(kept: int) -> dict[str, dict]:
    """Recipes by tree: ``trained`` arms (resharded), then sampling-only comparisons on each tree."""
    n = subset_size(kept)
    report = {"report_metadata": True, "ngrams": {"min_unigram_count": 20, "min_bigram_count": 20}}
    trained = {
        "random": [{"step": "random", "target": n}],
        "filters": [{"step": "filters"}, {"step": "random", "target": n}],
        "hkmeans": [{"step": "filters"}, {"step": "hkmeans", "target": n}],
        "metaclip": [{"step": "metaclip", "target": n}],
        "composition": [{"step": "filters"}, {"step": "metaclip", "target": min(2 * n, kept)},
                        {"step": "hkmeans", "target": n}],
    }
    sampling_only = {
        "hkmeans flat": [{"step": "hkmeans", "target": n, "mode": "flat"}],
        "hkmeans closest (c)": [{"step": "hkmeans", "target": n, "selection": "c"}],
        "hkmeans furthest (f)": [{"step": "hkmeans", "target": n, "selection": "f"}],
    }
    return {
        "4 levels, resampling": {**{name: {"recipe": recipe, **report} for name, recipe in trained.items()},
                     **{name: {"recipe": recipe, "reshard": False, **report} for name, recipe in sampling_only.items()}},
        "1 level": {"hkmeans 1 level": {"recipe": [{"step": "hkmeans", "target": n}], "reshard": False, **report}},
    }


TRAINED_ARMS = ("random", "filters", "hkmeans", "metaclip", "composition")


def concept_balance(subset_uids: dict[str, np.ndarray], truth: pd.DataFrame, pool_uids: np.ndarray,
                    kept_uids: np.ndarray) -> tuple[list[dict], bytes]:
    """Indicators over the true concepts for the pool, what the filters kept and each subset; and a plot."""
    concept_of = truth.set_index("uid")["concept_id"]
    n_concepts = int(truth["concept_id"].max()) + 1
    named = {"pool (downloaded)": pool_uids, "kept by the filters": kept_uids, **subset_uids}
    counts = {name: np.bincount(concept_of.reindex(uids).dropna().to_numpy(dtype=np.int64), minlength=n_concepts)
              for name, uids in named.items()}
    rows = [{"samples of": name, **_concept_row(values)} for name, values in counts.items()]
    plot = cumulative_counts_plot({name: counts[name] for name in ("pool (downloaded)", *subset_uids)},
                                  "true concepts: cumulative share of samples")
    return rows, plot


def _concept_row(counts: np.ndarray) -> dict:
    values = indicators(counts, long_tail_thresholds=CONCEPT_LONG_TAIL)
    return {key: (round(value, 4) if isinstance(value, float) else value) for key, value in values.items()
            if key in ("samples", "label_set_size", "normalised_entropy", "ls5", "min", "max")
            or key.startswith("lt")}


def ab_rows(evaluations: dict[str, dict], balance: list[dict], pool_concept_counts: np.ndarray) -> tuple[list[dict], str]:
    """One row per trained arm and the name of the arm with the best zero-shot accuracy.

    ``evaluations``: per arm, ``summary`` (the evaluation summary) and ``concepts`` (the
    ``demo/concepts`` line of its results, with per-class recall). Tail recall is the mean recall
    over the rarer half of the concepts *of the pool*, the same concepts for every arm.
    """
    by_name = {row["samples of"]: row for row in balance}
    rows = []
    for name, evaluation in evaluations.items():
        scores = {task["key"]: task["score"] for task in evaluation["summary"]["tasks"]}
        metrics = evaluation["concepts"]["metrics"]
        groups = recall_by_frequency(metrics["per_class_recall"], pool_concept_counts)["groups"]
        balance_row = by_name.get(name, {})
        rows.append({"arm": name, "samples": balance_row.get("samples"), "acc1": metrics["acc1"],
                     "acc5": metrics["acc5"], "retrieval_r1": scores.get("demo/retrieval"),
                     "tail_recall": groups[-1]["mean_recall"],
                     **{key: balance_row[key] for key in ("normalised_entropy", "ls5", "label_set_size")
                        if key in balance_row}})
    winner = max(rows, key=lambda row: row["acc1"])["arm"] if rows else ""
    return rows, winner
