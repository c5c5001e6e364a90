"""Dataset-scale indicators over class counts (Feuer and Hegde; METHODS.md section 4), and plots.

In:  one count per class (or cluster, or metadata entry); a class with count 0 belongs to the
     universe of classes but not to the label set.
Out: :func:`indicators`: a JSON-ready dict: label-set size and coverage, per-class size
     statistics over the label set, left skew ``ls<p>`` (share of samples in the largest p% of
     the label set), long tail ``lt<k>`` (share of label-set classes with fewer than k samples),
     normalised entropy. :func:`cumulative_counts_plot` and :func:`class_sizes_plot`: PNG bytes
     comparing several count vectors (a pool, a random subset, a balanced subset).

With an empty label set (every count 0) the statistics and shares are 0, not undefined. The
normalised entropy is ``H(p) / log(label_set_size)``, 1 for perfectly even classes; it is defined
as 0 for a label set of 0 or 1 class, where ``log(label_set_size)`` is 0. Tiny and degenerate
counts (one class, all classes empty or equal) give finite figures; what is not a vector of
counts (no classes at all, NaN, negative or fractional values) raises InputError naming it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from tasks.common.errors import InputError
from tasks.common.plots import png_bytes, subplots
from tasks.sample.quota import nonnegative_integers


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """int64 number of samples of each class ``0..n_classes-1``."""
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 0:
        raise InputError(f"n_classes={n_classes!r}: expected a non-negative integer")
    labels = nonnegative_integers(labels, "labels")
    if len(labels) and labels.max() >= n_classes:
        raise InputError(f"labels: values must lie in [0, {n_classes}), found {labels.max()}")
    return np.bincount(labels, minlength=n_classes).astype(np.int64)


def indicators(counts: np.ndarray, long_tail_thresholds: Sequence[int] = (100, 500),
               skew_fraction: float = 0.05) -> dict:
    """The indicators of one count vector (see the module doc); keys ``ls<round(100 *
    skew_fraction)>`` and ``lt<k>`` for every ``k`` of ``long_tail_thresholds``."""
    counts = nonnegative_integers(counts, "counts")
    if len(counts) == 0:
        raise InputError("counts: empty; expected one count per class")
    if not 0 < skew_fraction <= 1:
        raise InputError(f"skew_fraction={skew_fraction}: expected a fraction in (0, 1]")
    thresholds = list(long_tail_thresholds)
    if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in thresholds):
        raise InputError(f"long_tail_thresholds={thresholds}: expected positive integers")

    present = np.sort(counts[counts > 0])[::-1]
    size = len(present)
    samples = int(present.sum())
    # round() first so that 0.05 * 100 (5.000000000000001 in floating point) counts as 5 classes
    head = math.ceil(round(skew_fraction * size, 9))
    out = {"classes": int(len(counts)), "label_set_size": size, "coverage": size / len(counts),
           "samples": samples,
           "min": int(present[-1]) if size else 0, "median": float(np.median(present)) if size else 0.0,
           "mean": samples / size if size else 0.0, "max": int(present[0]) if size else 0,
           f"ls{round(100 * skew_fraction)}": int(present[:head].sum()) / samples if samples else 0.0}
    for k in thresholds:
        out[f"lt{int(k)}"] = float((present < k).mean()) if size else 0.0
    if size > 1:
        p = present / samples
        out["normalised_entropy"] = float(-(p * np.log(p)).sum() / math.log(size))
    else:
        out["normalised_entropy"] = 0.0
    return out


def _sorted_counts(named_counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not named_counts:
        raise InputError("named_counts: expected at least one count vector")
    out = {}
    for name, counts in named_counts.items():
        values = nonnegative_integers(counts, f"named_counts[{name!r}]")
        if len(values) == 0:
            raise InputError(f"named_counts[{name!r}]: empty")
        out[name] = np.sort(values)[::-1]
    return out


def cumulative_counts_plot(named_counts: dict[str, np.ndarray], title: str) -> bytes:
    """PNG: per count vector, classes from largest to smallest, the cumulative share of samples
    against the fraction of classes (the dotted diagonal: classes of equal size)."""
    fig, ax = subplots(figsize=(6, 4.5))
    for name, counts in _sorted_counts(named_counts).items():
        fraction = np.arange(len(counts) + 1) / len(counts)
        total = counts.sum()
        share = np.concatenate([[0.0], np.cumsum(counts) / total]) if total else np.zeros(len(counts) + 1)
        ax.plot(fraction, share, label=name)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="equal classes")
    ax.set_xlabel("fraction of classes (largest first)")
    ax.set_ylabel("cumulative share of samples")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    ax.legend()
    return png_bytes(fig)


def class_sizes_plot(named_counts: dict[str, np.ndarray], title: str) -> bytes:
    """PNG: per count vector, class sizes from largest to smallest (log scale) against rank /
    number of classes; classes with 0 samples cannot show on the log scale and end the line."""
    fig, ax = subplots(figsize=(6, 4.5))
    for name, counts in _sorted_counts(named_counts).items():
        fraction = (np.arange(len(counts)) + 1) / len(counts)
        present = counts > 0
        ax.plot(fraction[present], counts[present], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("class rank / number of classes")
    ax.set_ylabel("samples in the class")
    ax.set_xlim(0, 1)
    ax.set_title(title)
    ax.legend()
    return png_bytes(fig)
