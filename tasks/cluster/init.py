"""k-means++ seeding (Arthur and Vassilvitskii), greedy like scikit-learn, for numpy or cupy points.

In:  points (``n x d``, in memory), ``k``, a numpy ``Generator``, optional per-point weights.
Out: the indices of the ``k`` chosen seeds (numpy int64).

Each new seed is the best of ``2 + ln k`` candidates drawn with probability proportional to
the squared distance to the seeds so far; the candidates' distances to every point are one
matrix product. The loop over seeds is inherent to k-means++ (it is sequential in ``k``); for
large inputs the estimator seeds on a uniform sample of the points instead of all of them.
"""

from __future__ import annotations

import math

import numpy as np

from tasks.cluster.lloyd import array_module, to_host


def kmeans_plus_plus(points, k: int, rng: np.random.Generator, weights=None) -> np.ndarray:
    xp = array_module(points)
    x = xp.asarray(points, dtype=xp.float32)
    n = len(x)
    w = xp.ones(n, dtype=xp.float64) if weights is None else xp.asarray(weights, dtype=xp.float64)
    squared_norms = (x * x).sum(axis=1)
    trials = 2 + int(math.log(k)) if k > 1 else 1
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
