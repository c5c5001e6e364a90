"""Statistics of an A/B repeated over seeds: mean and standard error, a paired t-test against the
random arm, and the training length read off a measured curve.

In:  per arm, one value of a metric per seed (``None`` or NaN for a value that is missing);
     for the training length, per candidate length the values of a baseline arm and of a better
     arm over a few seeds.
Out: :func:`summarise`: ``{"mean", "se", "n"}`` (standard error = sample standard deviation over
     sqrt(n); ``None`` for fewer than two values: one seed says nothing of the spread); :func:`paired_test`: a two-sided paired
     t-test over the seeds both arms have, ``{"n", "mean_difference", "t", "p"}``;
     :func:`choose_length`: the shortest length at which the seeds' spread is at most half the
     gap between the arms, the curve's figures, and a sentence saying why.

Degenerate input never raises and never gives NaN: fewer than 2 pairs give ``p = None``; pairs
whose differences are all equal (no spread to test against; equal to within 1e-12 of the values'
size, so that rounding in the subtraction does not count) give ``p = 1.0`` when the difference is
zero and ``p = None`` (not testable: the t statistic is infinite) when it is not, with ``t = None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

IDENTICAL = 1e-12  # differences closer than this (relative to the values' size) are the same difference


def finite_values(values: Sequence[float | None]) -> np.ndarray:
    """The values that are numbers and finite, as float64, in their order."""
    array = np.array([np.nan if value is None else value for value in values], dtype=float)
    return array[np.isfinite(array)]


def seed_spread(values: Sequence[float | None]) -> float | None:
    """Sample standard deviation (ddof 1) of the finite values; ``None`` for fewer than two."""
    array = finite_values(values)
    return float(array.std(ddof=1)) if len(array) > 1 else None


def summarise(values: Sequence[float | None]) -> dict:
    """``{"mean", "se", "n"}`` of the finite values: se = sample sd / sqrt(n) (``None`` for n < 2), mean ``None`` for n = 0."""
    array = finite_values(values)
    n = len(array)
    if n == 0:
        return {"mean": None, "se": None, "n": 0}
    return {"mean": float(array.mean()), "se": float(array.std(ddof=1) / math.sqrt(n)) if n > 1 else None, "n": n}


def paired_test(arm_values: Mapping[int, float | None], random_values: Mapping[int, float | None]) -> dict:
    """Two-sided paired t-test of an arm against the random arm, pairs matched by seed.

    ``arm_values`` and ``random_values``: seed -> value. Only seeds present in both with finite
    values in both count. Returns ``{"n": pairs, "mean_difference": arm - random (None without
    pairs), "t": t statistic (None where infinite or undefined), "p": two-sided p-value or None}``.
    """
    seeds = sorted(set(arm_values) & set(random_values))
    pairs = np.array([[np.nan if arm_values[s] is None else arm_values[s],
                       np.nan if random_values[s] is None else random_values[s]] for s in seeds],
                     dtype=float).reshape(-1, 2)
    pairs = pairs[np.isfinite(pairs).all(axis=1)]
    differences = pairs[:, 0] - pairs[:, 1]
    n = len(differences)
    mean = float(differences.mean()) if n else None
    if n < 2:
        return {"n": n, "mean_difference": mean, "t": None, "p": None}
    # Differences equal but for rounding (0.3 - 0.1 and 0.5 - 0.3) count as identical: a t of 1e16 is noise.
    tolerance = IDENTICAL * max(1.0, float(np.abs(pairs).max()))
    if float(np.ptp(differences)) <= tolerance:
        return {"n": n, "mean_difference": mean, "t": None, "p": None if abs(mean) > tolerance else 1.0}
    sd = float(differences.std(ddof=1))
    t = mean / (sd / math.sqrt(n))
    p = float(min(1.0, max(0.0, 2.0 * stats.t.sf(abs(t), df=n - 1))))
    return {"n": n, "mean_difference": mean, "t": float(t), "p": p}


def choose_length(curve: Mapping[int, Mapping[str, Sequence[float | None]]], better: str = "composition",
                  baseline: str = "random") -> dict:
    """The training length (samples seen) at which ``better`` and ``baseline`` are told apart beyond seed noise.

    ``curve``: length -> arm -> values over seeds (both arms at each length). Per length, the gap
    is mean(better) - mean(baseline) and the spread the larger of the two arms' sample standard
    deviations over seeds. The chosen length is the shortest with a positive gap and a spread at
    most half the gap; if there is none, the longest. Returns ``{"samples_seen": the length,
    "settled": whether it met that condition, "chosen_by": a sentence, "curve": {length: {"gap",
    "spread", "values": {arm: values}}}}``; gap and spread are ``None`` where an arm has no value.
    """
    if not curve:
        raise ValueError("choose_length: the curve has no length")
    rows: dict[int, dict] = {}
    for length in sorted(curve):
        values = curve[length]
        for arm in (better, baseline):
            if arm not in values:
                raise ValueError(f"choose_length: length {length} has no values for arm {arm!r}")
        high, low = summarise(values[better])["mean"], summarise(values[baseline])["mean"]
        spreads = [seed_spread(values[arm]) for arm in (baseline, better)]
        gap = None if high is None or low is None else high - low
        spread = None if None in spreads else max(spreads)
        rows[length] = {"gap": gap, "spread": spread, "values": {arm: list(values[arm]) for arm in (baseline, better)}}
    settled = [length for length, row in rows.items()
               if row["gap"] is not None and row["spread"] is not None and row["gap"] > 0
               and row["spread"] <= row["gap"] / 2]
    if settled:
        length = settled[0]
        row = rows[length]
        sentence = (f"the shortest curve length where the spread between seeds ({row['spread']:.4f}, the larger "
                    f"sample sd of {baseline} and {better}) is at most half the gap in acc@1 between {better} and "
                    f"{baseline} ({row['gap']:.4f}): {length} samples seen")
    else:
        length = max(rows)
        sentence = (f"no curve length had a spread between seeds at most half a positive gap between {better} and "
                    f"{baseline} (gap, spread: " + "; ".join(
                        f"{n}: {_figure(row['gap'])}, {_figure(row['spread'])}" for n, row in rows.items())
                    + f"), so the longest, {length} samples seen, was used; the ranking may not be settled")
    return {"samples_seen": length, "settled": bool(settled), "chosen_by": sentence, "curve": rows}


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
