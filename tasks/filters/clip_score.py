"""CLIP score filter: keep samples whose image-text cosine is above a threshold, or in the top fraction.

In:  ``clip_score`` per sample (NaN where the sample could not be embedded) and either a
     threshold or a top fraction of the pool; for the fraction, the scores of every shard (numpy
     arrays, or Dask delayed objects/futures on a client).
Out: :func:`clip_score_cutoff` the score a sample needs; :func:`clip_score_decisions`
     ``keep_clip_score``/``reason_clip_score`` (``low_clip_score``, or ``not_embedded`` for NaN
     scores, which never pass).

The top fraction's cutoff is the exact ``1 - fraction`` quantile of the finite scores (linear
interpolation between the two order statistics around ``(n - 1)(1 - fraction)``), found without
gathering the scores: each order statistic is selected by radix, 16 bits of an order-preserving
64-bit key at a time, from per-shard histograms summed in a tree (four passes over the shards
per order statistic, 65,536 counts each; with the count, at most nine passes). The interpolation
is numpy's (its ``linear`` method), so the cutoff is ``np.quantile``'s. One code path, whether
the shards are on one machine or on many.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

DIGIT_BITS = 16
DIGITS = 1 << DIGIT_BITS
REDUCE_FANIN = 16


def sortable_keys(scores: np.ndarray) -> np.ndarray:
    """Unsigned keys in the order of the finite float64 ``scores`` (NaN and infinities dropped)."""
    values = np.asarray(scores, dtype=np.float64)
    bits = values[np.isfinite(values)].view(np.uint64)
    negative = (bits >> np.uint64(63)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint64(1 << 63))


def key_value(key: int) -> float:
    """The float64 whose :func:`sortable_keys` key is ``key``."""
    key = np.uint64(key)
    bits = key & ~np.uint64(1 << 63) if key >> np.uint64(63) else ~key
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def digit_histogram(scores: np.ndarray, prefix: int, shift: int) -> np.ndarray:
    """Counts of the 16-bit digit at ``shift`` among the keys whose bits above the digit equal ``prefix``."""
    keys = sortable_keys(scores)
    if shift + DIGIT_BITS < 64:
        keys = keys[(keys >> np.uint64(shift + DIGIT_BITS)) == np.uint64(prefix)]
    digits = ((keys >> np.uint64(shift)) & np.uint64(DIGITS - 1)).astype(np.int64)
    return np.bincount(digits, minlength=DIGITS)


def finite_count(scores: np.ndarray) -> int:
    return int(np.isfinite(np.asarray(scores, dtype=np.float64)).sum())


def _summed(parts: Sequence, function, args: tuple, client):
    """``function(part, *args)`` of every part, summed by a tree of reductions on the workers."""
    import dask

    from tasks.common.shuffle import compute

    if not parts:
        return 0
    if client is None and all(isinstance(p, np.ndarray) for p in parts):
        return sum(function(p, *args) for p in parts)
    values = [dask.delayed(function, pure=True)(part, *args) for part in parts]
    while len(values) > 1:
        values = [dask.delayed(sum, pure=True)(values[i:i + REDUCE_FANIN]) for i in range(0, len(values), REDUCE_FANIN)]
    return compute(client, values)[0]


def order_statistic(parts: Sequence, rank: int, client=None) -> float:
    """The ``rank``-th smallest (from 0) finite score of all parts, exactly."""
    prefix = 0
    for shift in range(64 - DIGIT_BITS, -1, -DIGIT_BITS):
        counts = _summed(parts, digit_histogram, (prefix, shift), client)
        cumulative = np.cumsum(counts)
        digit = int(np.searchsorted(cumulative, rank, side="right"))
        rank -= int(cumulative[digit - 1]) if digit else 0
        prefix = (prefix << DIGIT_BITS) | digit
    return key_value(prefix)


def quantile(parts: Sequence, q: float, client=None) -> float | None:
    """The ``q`` quantile of the finite scores of all parts (linear interpolation); None without any."""
    n = int(_summed(parts, finite_count, (), client))
    if n == 0:
        return None
    position = (n - 1) * q
    below = min(n - 1, math.floor(position))
    low = order_statistic(parts, below, client)
    high = order_statistic(parts, below + 1, client) if below + 1 < n else low
    fraction = position - below
    difference = high - low
    # numpy's lerp: from the nearer end, so the result is bit-identical to np.quantile's
    return float(high - difference * (1 - fraction) if fraction >= 0.5 else low + difference * fraction)


def clip_score_cutoff(scores: Sequence, threshold: float | None, top_fraction: float | None,
                      client=None) -> float | None:
    """The score a sample needs: the threshold, or the (1 - fraction) quantile of the finite scores.

    ``scores``: one array of the whole (small) pool, or a list of per-shard parts.
    """
    if threshold is not None:
        return float(threshold)
    if top_fraction is None:
        return None
    parts = [scores] if isinstance(scores, np.ndarray) else list(scores)
    return quantile(parts, 1 - top_fraction, client)


def clip_score_decisions(scores: pd.Series, cutoff: float) -> pd.DataFrame:
    values = scores.to_numpy(dtype=np.float64)
    missing = ~np.isfinite(values)
    low = ~missing & (values < cutoff)
    reason = np.where(missing, "not_embedded", np.where(low, "low_clip_score", ""))
    return pd.DataFrame({"keep_clip_score": ~(missing | low), "reason_clip_score": reason}, index=scores.index)
