"""Accuracy against how often a class occurs in the training data: does the long tail show?

In:  per-class recall (from zero-shot classification) and each class's count in the training data.
Out: rows of a table, one per frequency group (head, torso, tail by rank of count), with the
     group's count range, training-sample share and mean recall; and Spearman's rank correlation
     between count and recall over all classes.

Classes with no recall (None or NaN) or no finite count are left out. Tiny and degenerate inputs
never raise: an empty group has no row, a share of 0 training samples is None, and the
correlation is None where it is undefined (fewer than 2 classes, or constant counts or recall).
"""

from __future__ import annotations

import numpy as np

from tasks.common.errors import InputError


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    # average ranks of ties, so that equal counts do not create a correlation of their own
    unique, inverse = np.unique(values, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / np.bincount(inverse))[inverse]


def _correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's correlation of x and y; None with fewer than 2 values or a constant x or y."""
    if len(x) < 2 or x.min() == x.max() or y.min() == y.max():
        return None
    dx, dy = x - x.mean(), y - y.mean()
    return float((dx * dy).sum() / np.sqrt((dx * dx).sum() * (dy * dy).sum()))


def recall_by_frequency(per_class_recall: list[float | None], class_counts: np.ndarray,
                        groups: tuple[tuple[str, float, float], ...] = (("head (top 10%)", 0.0, 0.1),
                                                                       ("torso", 0.1, 0.5),
                                                                       ("tail (bottom 50%)", 0.5, 1.0))) -> dict:
    """One recall and one training count per class -> ``{"groups": rows, "spearman_count_vs_recall": r}``."""
    recall = np.array([np.nan if r is None else r for r in per_class_recall], dtype=float)
    counts = np.asarray(class_counts, dtype=float)
    if recall.shape != counts.shape:
        raise InputError(f"per_class_recall has {len(recall)} classes, class_counts {counts.shape}")
    valid = np.isfinite(recall) & np.isfinite(counts)
    order = np.argsort(-counts, kind="stable")
    order = order[valid[order]]
    total = counts[np.isfinite(counts)].sum()
    rows = []
    for name, low, high in groups:
        members = order[int(np.ceil(low * len(order))):int(np.ceil(high * len(order)))]
        if len(members) == 0:
            continue
        rows.append({"group": name, "classes": int(len(members)),
                     "train_samples_per_class": f"{int(counts[members].min())}-{int(counts[members].max())}",
                     "train_share": round(float(counts[members].sum() / total), 4) if total > 0 else None,
                     "mean_recall": round(float(recall[members].mean()), 4)})
    spearman = _correlation(_ranks(counts[valid]), _ranks(recall[valid]))
    return {"groups": rows, "spearman_count_vs_recall": None if spearman is None else round(spearman, 4)}
