"""QUOTA: split a sample budget over clusters as evenly as their sizes allow (METHODS.md section 2).

In:  cluster sizes (non-negative integers), a budget, and a numpy random generator; for
     :func:`grouped_quota` also the group of every cluster and one budget per group.
Out: the int64 number of samples each cluster receives. Inside a group whose sizes sum to at
     most its budget every cluster gets its size; otherwise every cluster gets ``min(c, size)``
     for the largest integer cap ``c`` that fits, and the units left over go as +1 to clusters
     larger than ``c`` chosen uniformly at random. A group's allocation sums to
     ``min(budget, sum of its sizes)``.

Also here, shared with the tree sampler: :func:`grouped_order` (indices sorting items by group,
then by an unsigned key), :func:`expand_ranges` and :func:`random_subsets` (a uniformly random
subset of given size inside every run of a sequence).
"""

from __future__ import annotations

import numbers

import numpy as np

from tasks.common.errors import InputError


def nonnegative_integers(values, name: str) -> np.ndarray:
    """``values`` as a 1-D int64 array; floats are accepted when they hold whole numbers."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise InputError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"{name}: expected integers, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not (np.isfinite(array).all() and (array == np.round(array)).all()):
        raise InputError(f"{name}: expected whole numbers, got non-integer or non-finite values")
    if len(array) and array.min() < 0:
        raise InputError(f"{name}: must not be negative (found {array.min()} at position {int(array.argmin())})")
    return array.astype(np.int64, copy=False)


def nonnegative_integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name}={value!r}: expected an integer")
    if value < 0:
        raise InputError(f"{name}={value}: must not be negative")
    return int(value)


def group_bits(n_groups: int) -> int:
    """Bits needed for a group number below ``n_groups``."""
    return max(int(n_groups) - 1, 0).bit_length()


def grouped_order(groups: np.ndarray, n_groups: int, key: np.ndarray, key_bits: int) -> np.ndarray:
    """Indices that sort items by ``groups`` (0..n_groups-1), then by ``key`` (< 2 ** key_bits).

    Group and key are packed into one uint64 and argsorted when they fit in 64 bits: on 10M
    items that is about 6x faster than ``np.lexsort`` on the two columns. Order among equal
    (group, key) pairs is unspecified but deterministic.
    """
    key = np.asarray(key).astype(np.uint64, copy=False)
    if group_bits(n_groups) + key_bits > 64:
        return np.lexsort((key, groups))
    packed = key if n_groups <= 1 else (groups.astype(np.uint64) << np.uint64(key_bits)) | key
    return np.argsort(packed)


def exclusive_cumsum(values: np.ndarray) -> np.ndarray:
    """``len(values) + 1`` running totals starting at 0."""
    out = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=out[1:])
    return out


def expand_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``start, start + 1, ..., start + length - 1`` for every range, one range after the other."""
    lengths = np.asarray(lengths, dtype=np.int64)
    shift = np.repeat(np.asarray(starts, dtype=np.int64) - exclusive_cumsum(lengths)[:-1], lengths)
    return shift + np.arange(len(shift))


def random_subsets(starts: np.ndarray, allocation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions (unordered) of a uniformly random subset of ``allocation[g]`` items in every run
    ``starts[g]:starts[g + 1]`` of a sequence.

    Positions are drawn with replacement and repeats dropped, round after round, until every run
    has its share; a run that gives more than half its items draws the ones it leaves out
    instead, so each draw is new with probability at least 1/2 and the number of rounds grows
    with the log of the largest share. Work is proportional to the shares, not to the run sizes.
    Every step treats the items of a run alike, so every subset of the right size is equally likely.
    """
    sizes = np.diff(starts)
    partial = (allocation > 0) & (allocation < sizes)
    flip = partial & (2 * allocation > sizes)
    need = np.where(flip, sizes - allocation, np.where(partial, allocation, 0))
    taken = np.zeros(int(starts[-1]), dtype=bool)
    owner = np.empty(int(starts[-1]), dtype=np.int64)  # only read where this round has just written
    drawn, drawn_groups = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    while (active := np.flatnonzero(need)).size:
        groups = np.repeat(active, need[active])
        positions = starts[groups] + rng.integers(0, sizes[groups])
        new = ~taken[positions]
        positions, groups = positions[new], groups[new]
        # one draw per position survives (whichever write lands last): repeats dropped without a sort
        draw = np.arange(len(positions))
        owner[positions] = draw
        survives = owner[positions] == draw
        positions, groups = positions[survives], groups[survives]
        taken[positions] = True
        need -= np.bincount(groups, minlength=len(need))
        drawn.append(positions)
        drawn_groups.append(groups)
    drawn, drawn_groups = np.concatenate(drawn), np.concatenate(drawn_groups)
    left_out = expand_ranges(starts[:-1][flip], sizes[flip])
    whole = (allocation == sizes) & (sizes > 0)
    return np.concatenate([drawn[~flip[drawn_groups]], left_out[~taken[left_out]],
                           expand_ranges(starts[:-1][whole], sizes[whole])])


def grouped_quota(sizes, groups, budgets, rng: np.random.Generator) -> np.ndarray:
    """QUOTA inside every group at once: item ``i`` of size ``sizes[i]`` is in group ``groups[i]``,
    which shares ``budgets[groups[i]]``; returns each item's allocation (int64)."""
    sizes = nonnegative_integers(sizes, "sizes")
    budgets = nonnegative_integers(budgets, "budgets")
    groups = np.asarray(groups)
    if groups.shape != sizes.shape or not (np.issubdtype(groups.dtype, np.integer) or len(groups) == 0):
        raise InputError(f"groups: expected one integer group per size ({len(sizes)}), got shape {groups.shape} "
                         f"and dtype {groups.dtype}")
    groups = groups.astype(np.int64, copy=False)
    n, n_groups = len(sizes), len(budgets)
    if n and (groups.min() < 0 or groups.max() >= n_groups):
        raise InputError(f"groups: values must lie in [0, {n_groups}) (one budget per group), "
                         f"found {groups.min()}..{groups.max()}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)

    order = grouped_order(groups, n_groups, sizes, int(sizes.max()).bit_length())
    s, g = sizes[order], groups[order]
    position = np.arange(n)
    start = exclusive_cumsum(np.bincount(groups, minlength=n_groups))
    end = start[1:]
    running = exclusive_cumsum(s)
    before = running[:-1] - running[start[:-1]][g]  # sizes of the group's smaller items
    after = end[g] - position  # items from this one to the group's end
    # f = sum over the group of min(s_i, s_j): what cap s_i would cost; non-decreasing in the group
    fill = before + s * after
    capped = running[end] - running[start[:-1]] > budgets
    first = start[:-1] + np.bincount(g[fill <= budgets[g]], minlength=n_groups)  # first item with f > budget

    cap = np.full(n_groups, np.iinfo(np.int64).max)
    remainder = np.zeros(n_groups, dtype=np.int64)
    at = first[capped]
    cap[capped] = (budgets[capped] - before[at]) // after[at]
    remainder[capped] = budgets[capped] - before[at] - cap[capped] * after[at]
    allocation = np.minimum(s, cap[g])

    # the leftover units go as +1 to items larger than the cap: in sorted order, the run of each
    # capped group from `first` to its end
    larger = np.flatnonzero(capped[g] & (position >= first[g]))
    runs = exclusive_cumsum(np.bincount(g[larger], minlength=n_groups))
    allocation[larger[random_subsets(runs, remainder, rng)]] += 1

    out = np.empty(n, dtype=np.int64)
    out[order] = allocation
    return out


def quota(sizes, budget: int, rng: np.random.Generator) -> np.ndarray:
    """QUOTA over one set of clusters: each cluster's share of ``budget`` (int64, sums to
    ``min(budget, sum(sizes))``)."""
    budget = nonnegative_integer(budget, "budget")
    sizes = nonnegative_integers(sizes, "sizes")
    return grouped_quota(sizes, np.zeros(len(sizes), dtype=np.int64), np.array([budget]), rng)
