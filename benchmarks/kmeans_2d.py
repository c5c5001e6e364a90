"""The 2-D experiment of Vo et al. (Sec. 4.1, Fig. 3c): how uniformly do the top-level centroids cover the square?

    python benchmarks/kmeans_2d.py [--seeds 5]

9,000 points on [-3, 3]^2: three Gaussians plus a uniform background (a quarter of the points).
Every configuration ends with 300 clusters: 1, 2 or 3 levels of k-means, without resampling or
with 10 resampling steps per level (r = half the level's mean cluster size), and, as the lower
bound, 300 points drawn uniformly. For each, a Gaussian kernel density (Scott's bandwidth) of the
300 centroids is evaluated on a 200 x 200 grid of the square, renormalised on it, and its
Kullback-Leibler divergence to the uniform density on the square is computed. Means (and
standard deviations) over seeds; the last line printed is one JSON object with the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import gaussian_kde

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.cluster.hierarchical import HierarchicalKMeans  # noqa: E402

SIDE = 3.0
N_POINTS = 9000
TOP_K = 300
LEVELS = {1: [300], 2: [1500, 300], 3: [3000, 1000, 300]}


def simulated_points(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_uniform = N_POINTS // 4
    means = np.array([[-1.5, -1.2], [1.4, 1.3], [1.2, -1.6]])
    scales = np.array([0.35, 0.5, 0.25])
    which = rng.integers(0, 3, N_POINTS - n_uniform)
    gaussian = means[which] + rng.normal(size=(len(which), 2)) * scales[which, None]
    points = np.concatenate([gaussian, rng.uniform(-SIDE, SIDE, size=(n_uniform, 2))])
    inside = (np.abs(points) <= SIDE).all(axis=1)  # the distribution is bounded by the square
    return points[inside].astype(np.float32)


def kl_to_uniform(centroids: np.ndarray, grid: int = 200) -> float:
    """KL(KDE of the centroids || uniform on the square), the KDE renormalised on the square."""
    axis = np.linspace(-SIDE, SIDE, grid)
    xx, yy = np.meshgrid(axis, axis)
    density = gaussian_kde(centroids.T.astype(np.float64))(np.vstack([xx.ravel(), yy.ravel()]))
    q = density / density.sum()
    u = 1.0 / q.size
    return float(np.sum(q * np.log(np.maximum(q, 1e-300) / u)))


def configurations() -> dict:
    configs = {}
    for levels, ks in LEVELS.items():
        configs[f"{levels} level{'s' if levels > 1 else ''}, no resampling"] = [{"k": k} for k in ks]
        configs[f"{levels} level{'s' if levels > 1 else ''}, resampling"] = [{"k": k, "resampling_steps": 10}
                                                                             for k in ks]
    return configs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results: dict[str, list[float]] = {name: [] for name in configurations()}
    results["300 uniform random points (lower bound)"] = []
    for seed in range(args.seeds):
        points = simulated_points(seed)
        for name, levels in configurations().items():
            model = HierarchicalKMeans(levels, metric="l2", engine="dask", seed=seed, max_iter=100).fit(points)
            results[name].append(kl_to_uniform(model.levels_[-1].centroids))
        uniform = np.random.default_rng(1000 + seed).uniform(-SIDE, SIDE, size=(TOP_K, 2))
        results["300 uniform random points (lower bound)"].append(kl_to_uniform(uniform))
    table = {name: {"kl_mean": round(float(np.mean(v)), 4), "kl_std": round(float(np.std(v)), 4)}
             for name, v in results.items()}
    print(f"{'configuration':45s} {'KL(KDE || uniform)':>20s}")
    for name, row in table.items():
        print(f"{name:45s} {row['kl_mean']:>12.4f} +- {row['kl_std']:.4f}")
    print(json.dumps({"benchmark": "kmeans_2d", "seeds": args.seeds, "points": N_POINTS, "top_clusters": TOP_K,
                      "levels": {str(k): v for k, v in LEVELS.items()}, "kl": table,
                      "seconds": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
