"""Seeding for k-means: exact k-means++ in memory, and k-means|| over blocks that stay where they are.

:func:`kmeans_plus_plus` (Arthur and Vassilvitskii), greedy like scikit-learn.
In:  points (``n x d``, numpy or cupy, in memory), ``k``, a numpy ``Generator``, optional weights.
Out: the indices of the ``k`` chosen seeds (numpy int64).
Each new seed is the best of ``2 + ln k`` candidates drawn with probability proportional to
the (weighted) squared distance to the seeds so far; the candidates' distances to every point are
one matrix product. The loop over seeds is sequential in ``k``: its cost is ``n k d (2 + ln k)``.

:func:`kmeans_parallel`: k-means|| (Bahmani et al., "Scalable k-means++", 2012) for inputs too
large for that.
In:  the blocks of the points (a :class:`BlockRunner`: in memory, or Dask blocks on the workers
     that hold them), ``k``, a numpy ``Generator``, the number of rounds, the oversampling factor
     and optionally a sample size (the rounds then run on a uniform sample of the rows, drawn and
     kept on the workers).
Out: ``k x d`` float32 seeds and the number of candidates the driver received.
One uniformly drawn point starts the candidate set ``C``. Each of ``rounds`` rounds is one pass
over the blocks where they are: every point keeps its squared distance to ``C`` (and the candidate
it is nearest to) between rounds, so a round only compares the points with the candidates added in
the previous one; then every point joins ``C`` independently with probability ``l d^2 / phi``
(``l = oversampling * k``, ``phi`` the sum of ``d^2``). Random numbers are drawn per row from a
counter-based generator (Philox advanced to the row's position), so the draw does not depend on
how the points are cut into blocks. A round that draws more than ``l`` points keeps ``l`` of them
at random, so the driver never holds more than ``1 + rounds * l`` candidate rows (10 k + 1 with the
defaults). The candidates are weighted by the number of points nearest to them (read from the kept
state, no extra pass) and reduced to ``k`` by the greedy weighted :func:`kmeans_plus_plus` in the
driver; its cost, ``(rounds * l) k d (2 + ln k)``, grows as ``k^2`` and not with ``n`` (the reason a large level-1 ``k`` is split by default,
:mod:`tasks.cluster.hierarchical`). Deterministic for a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from tasks.cluster.lloyd import DEFAULT_CHUNK_ROWS, array_module, assign, to_host

SEEDING_ROUNDS = 5
OVERSAMPLING = 2.0  # l = OVERSAMPLING * k candidates drawn per round, on average


def kmeans_plus_plus(points, k: int, rng: np.random.Generator, weights=None, trials: int | None = None) -> np.ndarray:
    xp = array_module(points)
    x = xp.asarray(points, dtype=xp.float32)
    n = len(x)
    w = xp.ones(n, dtype=xp.float64) if weights is None else xp.asarray(weights, dtype=xp.float64)
    squared_norms = (x * x).sum(axis=1)
    trials = trials or (2 + int(math.log(k)) if k > 1 else 1)
    first = int(rng.choice(n, p=to_host(w / w.sum())))
    chosen = [first]
    closest = xp.maximum(squared_norms - 2.0 * (x @ x[first]) + squared_norms[first], 0.0)
    potential = float((w * closest).sum())
    for _ in range(1, k):
        if potential <= 0.0:  # every point coincides with a seed: take unused points in order
            unused = np.setdiff1d(np.arange(n), chosen)[: k - len(chosen)]
            chosen.extend(int(i) for i in unused)
            break
        cumulative = xp.cumsum(w * closest)
        targets = xp.asarray(rng.random(trials) * potential)
        candidates = xp.minimum(xp.searchsorted(cumulative, targets), n - 1)
        distances = xp.maximum(squared_norms[None, :] - 2.0 * (x[candidates] @ x.T)
                               + squared_norms[candidates][:, None], 0.0)
        candidate_closest = xp.minimum(closest[None, :], distances)
        potentials = (w[None, :] * candidate_closest).sum(axis=1)
        best = int(potentials.argmin())
        chosen.append(int(candidates[best]))
        closest = candidate_closest[best]
        potential = float(potentials[best])
    return np.asarray(chosen, dtype=np.int64)


class BlockRunner(Protocol):
    """Runs a function on every block where the block is (see :class:`tasks.cluster.kmeans.Blocks`)."""

    n: int
    starts: np.ndarray  # first global row of every block

    def map(self, function: Callable, *shared: Any, per_block: list[tuple] | None = None) -> list: ...
    def gather(self, handles: list) -> list: ...
    def rows(self, indices: np.ndarray) -> np.ndarray: ...
    def derived(self, function: Callable, *shared: Any, per_block: list[tuple] | None = None) -> "BlockRunner": ...


@dataclass
class SeedingState:
    """Per point of a block: squared distance to the nearest candidate so far, and that candidate."""

    closest: Any  # float32, numpy or cupy
    nearest: Any  # int64


def _update(points, state: SeedingState | None, candidates, first: int, chunk_rows: int) -> SeedingState:
    nearest, closest = assign(points, candidates, chunk_rows)
    if state is None:
        return SeedingState(closest, nearest + first)
    xp = array_module(points)
    better = closest < state.closest
    return SeedingState(xp.where(better, closest, state.closest), xp.where(better, nearest + first, state.nearest))


def _potential(points, state: SeedingState) -> float:
    return float(state.closest.astype(np.float64).sum())


def row_uniforms(key: int, start: int, count: int) -> np.ndarray:
    """Uniform numbers for global rows ``start .. start + count`` of one stream, however the rows are cut."""
    generator = np.random.Philox(key=key)
    generator.advance(start // 4)  # a Philox counter step yields 4 of the 64-bit words random() uses one of
    draws = np.random.Generator(generator).random(start % 4 + count)
    return draws[start % 4:]


def _draw(points, state: SeedingState, start: int, oversampling: float, potential: float, key: int) -> np.ndarray:
    closest = to_host(state.closest).astype(np.float64)
    chosen = np.flatnonzero(row_uniforms(key, start, len(closest)) * potential < oversampling * closest)
    xp = array_module(points)
    return to_host(points[xp.asarray(chosen)]).astype(np.float32).reshape(len(chosen), points.shape[1])


def _weights(points, state: SeedingState, n_candidates: int) -> np.ndarray:
    xp = array_module(points)
    return to_host(xp.bincount(state.nearest, minlength=n_candidates)).astype(np.int64)


def _sample(points, start: int, fraction: float, key: int):
    keep = np.flatnonzero(row_uniforms(key, start, len(points)) < fraction)
    return points[array_module(points).asarray(keep)]


def candidate_bound(k: int, rounds: int = SEEDING_ROUNDS, oversampling: float = OVERSAMPLING) -> int:
    """The most candidate rows :func:`kmeans_parallel` brings to the driver."""
    return 1 + rounds * math.ceil(oversampling * k)


def kmeans_parallel(blocks: BlockRunner, k: int, rng: np.random.Generator, rounds: int = SEEDING_ROUNDS,
                    oversampling: float = OVERSAMPLING, sample_size: int | None = None,
                    chunk_rows: int = DEFAULT_CHUNK_ROWS, reduce_trials: int | None = None) -> tuple[np.ndarray, int]:
    """``k`` seeds (float32) by k-means|| and the number of candidates that reached the driver.

    ``sample_size``: run on a uniform sample of about that many rows, drawn and kept where the
    blocks are (the rounds then cost ``sample_size`` instead of ``n`` rows). ``reduce_trials``:
    candidates tried per seed by the weighted k-means++ that reduces the candidates to ``k`` (None:
    the greedy ``2 + ln k``; 1, plain k-means++, is cheaper but lost clusters on mixtures in tests).
    """
    if sample_size is not None and sample_size < blocks.n:
        fraction, key = sample_size / blocks.n, int(rng.integers(2 ** 63))
        blocks = blocks.derived(_sample, fraction, key, per_block=[(int(start),) for start in blocks.starts])
    per_round = math.ceil(oversampling * k)
    candidates = [blocks.rows(np.array([rng.integers(blocks.n)]))]
    total = 1
    states = blocks.map(_update, candidates[0], 0, chunk_rows, per_block=[(None,)] * len(blocks.starts))
    for _ in range(rounds):
        potential = sum(blocks.gather(blocks.map(_potential, per_block=[(s,) for s in states])))
        if potential <= 0.0:
            break
        key = int(rng.integers(2 ** 63))
        drawn = blocks.gather(blocks.map(_draw, float(per_round), potential, key,
                                         per_block=[(s, int(start)) for s, start in zip(states, blocks.starts)]))
        new = np.concatenate(drawn)
        if len(new) > per_round:
            new = new[np.sort(rng.choice(len(new), per_round, replace=False))]
        if len(new) == 0:
            continue
        states = blocks.map(_update, new, total, chunk_rows, per_block=[(s,) for s in states])
        candidates.append(new)
        total += len(new)
    pool = np.concatenate(candidates)
    if total < k:  # fewer distinct points than k (or a degenerate draw): fill with uniform rows
        extra = blocks.rows(np.sort(rng.choice(blocks.n, k - total, replace=False)))
        return np.concatenate([pool, extra]), total
    weights = np.sum(blocks.gather(blocks.map(_weights, total, per_block=[(s,) for s in states])), axis=0)
    return pool[kmeans_plus_plus(pool, k, rng, weights, trials=reduce_trials)], total
