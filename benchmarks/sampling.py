"""Benchmark: balanced sampling from a 4-level cluster tree over 10M samples, on one core.

    python benchmarks/sampling.py [--samples 10000000] [--ks 100000 10000 1000 100] [--target 1000000]
                                  [--large-target 3000000] [--repeats 3] [--zipf 1.0] [--core 0]

The tree is synthetic (no k-means): level-1 cluster sizes follow Zipf's law (size of the j-th
largest ~ 1 / j ** zipf, every cluster at least 1 sample), each level's clusters get a parent at
the level above drawn with the same law (every parent at least one child), distances are
uniform float32. Building the :class:`ClusterLevel` objects (their member sort) is not timed.

1. ``balanced_sample`` (tasks/sample/tree_sampling.py), median of ``--repeats`` runs each:
   hierarchical "r" (``sampling_seconds_10m``), hierarchical "c", flat "r", flat "c" (with given
   top-level distances), and hierarchical "r" with ``--large-target``.
2. The peer a user would otherwise write: the same hierarchical sampling as a Python loop over
   the nodes (a QUOTA per node over its children, read from ``ClusterLevel.members``), then
   ``rng.choice(members, share, replace=False)`` in every level-1 cluster; it gets the tree's
   member lists for free, as ours does. Median of ``--repeats`` runs on the same tree;
   ``time_ratio_loop_vs_ours`` = loop / ours (hierarchical "r").

Everything runs on one core: thread pools are limited to 1 before numpy is imported and the
process is pinned to ``--core``. ``peak_rss_gib`` is the process's high-water mark (tree
included); ``sampling_peak_extra_gib`` is the most memory one hierarchical "r" call allocated on
top (tracemalloc, in a separate, untimed call). The figures go to
``benchmarks/results/sampling.json`` as well; the last line printed is one JSON object.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.cluster.hierarchical import ClusterLevel  # noqa: E402
from tasks.cluster.tree import samples_per_cluster  # noqa: E402
from tasks.sample.tree_sampling import balanced_sample, selected_per_cluster  # noqa: E402
from timing import median_seconds  # noqa: E402 - benchmarks/timing.py, next to this script

RESULTS = Path(__file__).resolve().parent / "results" / "sampling.json"
GIB = 1024 ** 3


def zipf_sizes(total: int, k: int, exponent: float) -> np.ndarray:
    """``k`` sizes summing to ``total``, each at least 1, the j-th largest ~ 1 / j ** exponent."""
    weights = 1.0 / np.arange(1, k + 1) ** exponent
    sizes = 1 + np.floor(weights / weights.sum() * (total - k)).astype(np.int64)
    sizes[: total - sizes.sum()] += 1
    return sizes


def synthetic_tree(samples: int, ks: list[int], exponent: float, seed: int) -> list[ClusterLevel]:
    rng = np.random.default_rng(seed)
    inputs = [samples] + ks[:-1]
    levels = []
    for n_inputs, k in zip(inputs, ks):
        labels = rng.permutation(np.repeat(rng.permutation(k), zipf_sizes(n_inputs, k, exponent)))
        levels.append(ClusterLevel(centroids=np.zeros((k, 1), dtype=np.float32), labels=labels.astype(np.int64),
                                   distances=rng.random(n_inputs, dtype=np.float32)))
    return levels


def loop_quota(sizes: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """QUOTA as one would write it: raise the cap cluster by cluster over the sorted sizes."""
    if sizes.sum() <= budget:
        return sizes.copy()
    order = np.argsort(sizes)
    left, remaining = budget, len(sizes)
    cap = 0
    for size in sizes[order]:
        if size * remaining > left:
            cap = left // remaining
            break
        left -= size
        remaining -= 1
    allocation = np.minimum(sizes, cap)
    larger = np.flatnonzero(sizes > cap)
    allocation[rng.choice(larger, budget - allocation.sum(), replace=False)] += 1
    return allocation


def loop_hierarchical(levels: list[ClusterLevel], target: int, seed: int) -> np.ndarray:
    """Hierarchical "r" sampling with a Python loop over the nodes of every level."""
    rng = np.random.default_rng(seed)
    counts = samples_per_cluster(levels)
    shares = loop_quota(counts[-1], target, rng)
    for number in range(len(levels) - 1, 0, -1):
        below = np.zeros(levels[number - 1].k, dtype=np.int64)
        for node in np.flatnonzero(shares):
            children = levels[number].members(node)
            below[children] = loop_quota(counts[number - 1][children], int(shares[node]), rng)
        shares = below
    chosen = [rng.choice(levels[0].members(cluster), shares[cluster], replace=False)
              for cluster in np.flatnonzero(shares)]
    return np.sort(np.concatenate(chosen))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000_000)
    parser.add_argument("--ks", type=int, nargs="+", default=[100_000, 10_000, 1_000, 100])
    parser.add_argument("--target", type=int, default=1_000_000)
    parser.add_argument("--large-target", type=int, default=3_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})

    started = time.perf_counter()
    levels = synthetic_tree(args.samples, args.ks, args.zipf, args.seed)
    build_seconds = time.perf_counter() - started
    top_distances = np.random.default_rng(args.seed + 1).random(args.samples, dtype=np.float32)
    sizes = levels[0].sizes
    print(f"tree: {args.samples} samples, k = {args.ks}, level-1 sizes {sizes.min()}..{sizes.max()} "
          f"(median {np.median(sizes):.0f}); built in {build_seconds:.1f} s")

    runs = {
        "hierarchical_r": dict(mode="hierarchical", selection="r"),
        "hierarchical_c": dict(mode="hierarchical", selection="c"),
        "flat_r": dict(mode="flat", selection="r"),
        "flat_c": dict(mode="flat", selection="c", distances=top_distances),
    }
    seconds = {}
    for name, options in runs.items():
        seconds[name], chosen = median_seconds(lambda: balanced_sample(levels, args.target, seed=args.seed, **options),
                                      args.repeats)
        assert len(chosen) == args.target and np.all(np.diff(chosen) > 0)
        print(f"{name}: {seconds[name]:.2f} s for {args.target} of {args.samples}")
    large, chosen = median_seconds(lambda: balanced_sample(levels, args.large_target, seed=args.seed), args.repeats)
    assert len(chosen) == args.large_target
    print(f"hierarchical_r, target {args.large_target}: {large:.2f} s")

    tracemalloc.start()
    balanced_sample(levels, args.target, seed=args.seed)
    extra = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    loop_seconds, looped = median_seconds(lambda: loop_hierarchical(levels, args.target, args.seed), args.repeats)
    ours = balanced_sample(levels, args.target, seed=args.seed)
    # same algorithm, other random draws: the same total and the same shares at the top level
    assert len(looped) == args.target and len(np.unique(looped)) == args.target
    np.testing.assert_array_equal(np.sort(selected_per_cluster(levels, looped)[-1]),
                                  np.sort(selected_per_cluster(levels, ours)[-1]))
    print(f"python loop over the nodes: {loop_seconds:.2f} s "
          f"({loop_seconds / seconds['hierarchical_r']:.1f}x ours)")

    figures = {"benchmark": "sampling", "samples": args.samples, "ks": args.ks, "zipf": args.zipf,
               "target": args.target, "repeats": args.repeats, "cores": 1,
               "level1_sizes": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max())},
               "sampling_seconds_10m": round(seconds["hierarchical_r"], 3),
               "hierarchical_c_seconds": round(seconds["hierarchical_c"], 3),
               "flat_r_seconds": round(seconds["flat_r"], 3),
               "flat_c_seconds": round(seconds["flat_c"], 3),
               "large_target": args.large_target, "hierarchical_r_large_target_seconds": round(large, 3),
               "loop_seconds": round(loop_seconds, 3),
               "time_ratio_loop_vs_ours": round(loop_seconds / seconds["hierarchical_r"], 2),
               "sampling_peak_extra_gib": round(extra / GIB, 3),
               "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2),
               "tree_build_seconds": round(build_seconds, 1)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures) + "\n")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
