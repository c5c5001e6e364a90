"""MetaCLIP balancing: per-text keep probabilities from entry counts and a threshold t.

In:  :class:`~tasks.metaclip.matching.Matches` of a pool (one or several shards), the entry
     counts over the whole pool, and a threshold t (or a target tail share / expected size that
     determines it).
Out: keep probabilities per text, offline draws (a boolean mask), the per-epoch draw a data
     loader makes online, and a report of how balanced the result is.

An entry matched by ``count_e`` texts keeps each of them with probability
``p_e = min(1, t / count_e)``; a text is kept when any of its entries draws true, i.e. with
probability ``1 - prod_e (1 - p_e)`` (METHODS.md section 3). Entries with ``count_e <= t`` (the
tail) keep all their texts; head entries are cut to about t texts.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from tasks.common.errors import InputError
from tasks.metaclip.matching import Matches

_MASK64 = (1 << 64) - 1
_GAMMA, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
BISECTION_STEPS = 60


def entry_counts(matches: Matches | Sequence[Matches], n_entries: int) -> np.ndarray:
    """int64 per entry: how many texts match it, summed over the given shards."""
    shards = [matches] if isinstance(matches, Matches) else list(matches)
    counts = np.zeros(n_entries, dtype=np.int64)
    for shard in shards:
        if len(shard.entry_ids) and (shard.entry_ids.max() >= n_entries or shard.entry_ids.min() < 0):
            raise InputError(f"n_entries is {n_entries} but matches hold entry id {shard.entry_ids.max()}")
        counts += np.bincount(shard.entry_ids, minlength=n_entries)
    return counts


def _check_t(t: float) -> float:
    if not isinstance(t, (int, float, np.integer, np.floating)) or not math.isfinite(t) or t <= 0:
        raise InputError(f"t must be a finite number above 0, got {t!r}")
    return float(t)


def _match_counts(matches: Matches, counts: np.ndarray) -> np.ndarray:
    """The pool count of the entry of every match, as float64."""
    counts = np.asarray(counts)
    if counts.ndim != 1:
        raise InputError(f"counts must be a 1-d array per entry, got shape {counts.shape}")
    if len(matches.entry_ids) == 0:
        return np.zeros(0, dtype=np.float64)
    if matches.entry_ids.max() >= len(counts):
        raise InputError(f"counts has {len(counts)} entries but matches hold entry id {matches.entry_ids.max()}")
    per_match = counts[matches.entry_ids].astype(np.float64)
    if per_match.min() < 1:
        entry = int(matches.entry_ids[np.argmin(per_match)])
        raise InputError(f"counts: entry {entry} is matched by a text but its count is {counts[entry]}; "
                         f"counts must come from the same pool as the matches")
    return per_match


class _Rows:
    """Per-text reduction of per-match values (rows without matches give 0)."""

    def __init__(self, matches: Matches):
        self.n_texts = matches.n_texts
        sizes = matches.counts_per_text()
        self.nonempty = np.flatnonzero(sizes > 0)
        self.starts = matches.indptr[self.nonempty]

    def probabilities(self, per_match_counts: np.ndarray, t: float) -> np.ndarray:
        out = np.zeros(self.n_texts, dtype=np.float64)
        if len(self.nonempty) == 0:
            return out
        p = np.minimum(1.0, t / per_match_counts)
        with np.errstate(divide="ignore"):
            log_miss = np.log1p(-p)  # -inf where p == 1, which makes the text's probability exactly 1
        # reduceat over the starts of the non-empty rows only: each segment is then exactly one
        # row's matches (empty rows in between add no elements).
        out[self.nonempty] = -np.expm1(np.add.reduceat(log_miss, self.starts))
        return out


def keep_probabilities(matches: Matches, counts: np.ndarray, t: float) -> np.ndarray:
    """float64 per text: ``1 - prod_e (1 - min(1, t / counts[e]))`` over its entries; 0 if none."""
    t = _check_t(t)
    return _Rows(matches).probabilities(_match_counts(matches, counts), t)


def threshold_for_tail_share(counts: np.ndarray, tail_share: float) -> int:
    """The smallest integer t whose tail (entries with count < t) holds >= ``tail_share`` of matches.

    The share is ``sum(counts[counts < t]) / sum(counts)``. MetaCLIP's t = 20,000 on 400M pairs
    puts about 6% of all matches in the tail.
    """
    if not isinstance(tail_share, (int, float, np.integer, np.floating)) or not 0 < tail_share < 1:
        raise InputError(f"tail_share must lie strictly between 0 and 1, got {tail_share!r}")
    counts = np.asarray(counts)
    if counts.ndim != 1 or (len(counts) and counts.min() < 0):
        raise InputError("counts must be a 1-d array of counts >= 0")
    ordered = np.sort(counts.astype(np.int64))
    cumulative = np.cumsum(ordered)
    if len(cumulative) == 0 or cumulative[-1] == 0:
        raise InputError("counts: no entry is matched by any text")
    # The share jumps when t passes count + 1; the first sorted entry at which the cumulative
    # share reaches the target fixes t (ties join the tail together, which only adds to it).
    first = int(np.searchsorted(cumulative, tail_share * cumulative[-1], side="left"))
    return int(ordered[first]) + 1


def expected_size(probabilities: np.ndarray) -> float:
    return float(np.sum(probabilities, dtype=np.float64))


def threshold_for_expected_size(matches: Matches, counts: np.ndarray, target: int) -> float:
    """The t whose keep probabilities sum to ``target`` (bisection on log t).

    The expected size rises continuously with t, from 0 to the number of matched texts, which it
    reaches at t = max count. Below ``target / sum_matches(1 / count)`` it is below target (the
    union bound), which brackets the root.
    """
    per_match = _match_counts(matches, counts)
    rows = _Rows(matches)
    n_matched = len(rows.nonempty)
    if not isinstance(target, (int, float, np.integer, np.floating)) or not 0 < target <= n_matched:
        raise InputError(f"target must lie in (0, {n_matched}] (the number of matched texts), got {target!r}")
    high = float(per_match.max())
    low = min(high, target / float(np.sum(1.0 / per_match)))
    return bisect_threshold(lambda ts: [expected_size(rows.probabilities(per_match, t)) for t in ts], low, high, target)


def bisect_threshold(sizes: Callable[[Sequence[float]], Sequence[float]], low: float, high: float, target: float,
                     steps: int = BISECTION_STEPS, depth: int = 1) -> float:
    """The t in ``[low, high]`` whose expected size is nearest ``target``: ``steps`` halvings of log t.

    ``sizes(ts)`` gives the expected size at every t of ``ts``. ``depth`` > 1 asks for the
    ``2 ** depth - 1`` midpoints the next ``depth`` halvings may visit in one call (for a pool kept
    per shard, one round of tasks instead of ``depth``); the halvings, and so the result, are the
    same for every depth.
    """
    if depth < 1:
        raise InputError(f"depth must be at least 1, got {depth}")
    done = 0
    while done < steps:
        rounds = min(depth, steps - done)
        paths, points, frontier = [], [], [((), low, high)]
        for _ in range(rounds):
            following = []
            for path, below, above in frontier:
                middle = math.sqrt(below * above)
                paths.append(path)
                points.append(middle)
                following += [(path + (False,), middle, above), (path + (True,), below, middle)]
            frontier = following
        at = dict(zip(paths, sizes(points)))
        path: tuple = ()
        for _ in range(rounds):
            middle = math.sqrt(low * high)
            above = not at[path] < target
            if above:
                high = middle
            else:
                low = middle
            path += (above,)
        done += rounds
    size_low, size_high = sizes([low, high])
    return low if abs(size_low - target) < abs(size_high - target) else high


def draw(probabilities: np.ndarray, seed: int, offset: int = 0) -> np.ndarray:
    """One offline draw: text i kept with probability ``probabilities[i]``.

    ``offset``: these are texts ``offset, offset + 1, ...`` of a longer sequence; the draw is then
    the part of that sequence's draw for ``seed`` (the generator is advanced by ``offset``
    numbers), so a pool drawn shard by shard gets exactly the draw of the whole pool at once.
    """
    probabilities = np.asarray(probabilities)
    generator = np.random.PCG64(seed)  # what np.random.default_rng(seed) uses
    if offset:
        generator.advance(int(offset))  # one 64-bit number per uniform double
    return np.random.Generator(generator).random(len(probabilities)) < probabilities


def _splitmix64_int(x: int) -> int:
    z = (x + _GAMMA) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x + np.uint64(_GAMMA)  # uint64 array arithmetic wraps modulo 2**64, as intended
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def online_keep(probabilities: np.ndarray, sample_ids: np.ndarray, epoch: int, seed: int) -> np.ndarray:
    """The draw a data loader makes for each sample it reads in ``epoch``.

    ``u = splitmix64(sample_id XOR salt) / 2**64`` with ``salt = splitmix64(splitmix64(seed) XOR
    epoch)``, and the sample is kept when ``u < p``. ``u`` depends only on (seed, epoch,
    sample id), so the draw does not depend on the order or batching of the samples, repeats
    exactly on a rerun, and is a fresh, (pseudo-)independent uniform each epoch. Sample ids must be
    unique within the pool (negative ids are taken modulo 2**64).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    sample_ids = np.asarray(sample_ids)
    if probabilities.shape != sample_ids.shape or probabilities.ndim != 1:
        raise InputError(f"probabilities {probabilities.shape} and sample_ids {sample_ids.shape} must be "
                         f"1-d arrays of the same length")
    if not np.issubdtype(sample_ids.dtype, np.integer):
        raise InputError(f"sample_ids must be integers, got {sample_ids.dtype}")
    salt = _splitmix64_int(_splitmix64_int(int(seed) & _MASK64) ^ (int(epoch) & _MASK64))
    hashed = _splitmix64(sample_ids.astype(np.uint64) ^ np.uint64(salt))
    uniform = (hashed >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return uniform < probabilities


def balance_report(matches: Matches, counts_before: np.ndarray, keep_mask: np.ndarray, t: float) -> dict:
    """How a draw balanced the entries. ``matches`` and ``counts_before`` cover the same pool.

    Head entries (count > t) should end near t texts (``head_realised_over_t_*`` near 1); tail
    entries (0 < count <= t) keep every text (``tail_kept_whole_share`` = 1 for any draw from
    :func:`keep_probabilities`). ``counts_after`` is the per-entry array of realised counts.
    """
    t = _check_t(t)
    keep_mask = np.asarray(keep_mask, dtype=bool)
    if keep_mask.shape != (matches.n_texts,):
        raise InputError(f"keep_mask has shape {keep_mask.shape} for {matches.n_texts} texts")
    counts_before = np.asarray(counts_before, dtype=np.int64)
    probabilities = keep_probabilities(matches, counts_before, t)
    counts_after = entry_counts(matches.take(keep_mask), len(counts_before))
    return report_from_counts(t, matches.n_texts, int(np.count_nonzero(matches.counts_per_text())),
                              expected_size(probabilities), int(keep_mask.sum()), counts_before, counts_after)


def report_from_counts(t: float, n_texts: int, n_matched_texts: int, expected: float, realised: int,
                       counts_before: np.ndarray, counts_after: np.ndarray) -> dict:
    """:func:`balance_report` from its reductions: numbers of texts, expected and realised sizes,
    and the entry counts before and after the draw (for a pool whose matches stay per shard)."""
    t = _check_t(t)
    counts_before = np.asarray(counts_before, dtype=np.int64)
    counts_after = np.asarray(counts_after, dtype=np.int64)
    head = counts_before > t
    tail = (counts_before > 0) & ~head
    head_ratio = counts_after[head] / t
    return {
        "t": t,
        "n_texts": int(n_texts),
        "n_matched_texts": int(n_matched_texts),
        "expected_size": float(expected),
        "realised_size": int(realised),
        "n_entries": len(counts_before),
        "n_matched_entries": int(np.count_nonzero(counts_before)),
        "n_head_entries": int(head.sum()),
        "n_tail_entries": int(tail.sum()),
        "head_realised_over_t_median": float(np.median(head_ratio)) if len(head_ratio) else None,
        "head_realised_over_t_max": float(head_ratio.max()) if len(head_ratio) else None,
        "tail_kept_whole_share": (float(np.mean(counts_after[tail] == counts_before[tail]))
                                  if tail.any() else None),
        "matches_before": int(counts_before.sum()),
        "matches_after": int(counts_after.sum()),
        "counts_after": counts_after,
    }
