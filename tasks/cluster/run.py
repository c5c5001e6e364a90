"""The clustering stage: hierarchical k-means over a pool's filtered embeddings, into the store.

In:  the store, a pool name (its embed-and-filter stage has run), a :class:`ClusterConfig`, and
     optionally a Dask client (the embeddings are streamed to its workers shard by shard).
Out: the tree folder ``clusters/<pool>/<key>/`` (see :mod:`tasks.cluster.tree`) with
     ``inputs.parquet`` (uids), every level, ``cluster_sizes.png`` and, written last,
     ``tree.json``: per level k, its inputs and the distribution of samples per cluster.
     A rerun skips finished levels and resumes an unfinished level at its last resampling step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from tasks.cluster.hierarchical import METRICS, HierarchicalKMeans, LevelSpec
from tasks.cluster.kmeans import ENGINES
from tasks.cluster.pool_input import pool_embeddings
from tasks.cluster.tree import StoreCheckpoints, samples_per_cluster, size_summary
from tasks.common.errors import InputError
from tasks.common.hashing import hash_json
from tasks.common.plots import png_bytes, subplots
from tasks.common.store import Store

CLUSTER_VERSION = 1  # bump when a change alters the tree a config produces


@dataclass(frozen=True)
class ClusterConfig:
    """Levels (k, resampling steps, points per cluster, resampling), metric, engine, iterations, seed."""

    levels: tuple[LevelSpec, ...] = field(default_factory=lambda: (LevelSpec(1000), LevelSpec(100, 10),
                                                                   LevelSpec(10, 10)))
    metric: str = "cosine"
    engine: str = "auto"
    max_iter: int = 50
    tol: float = 1e-4
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict | None) -> "ClusterConfig":
        values = dict(values or {})
        unknown = set(values) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise InputError(f"clustering: unknown setting(s) {sorted(unknown)}")
        if "levels" in values:
            values["levels"] = tuple(LevelSpec.from_value(v) for v in values["levels"])
        config = cls(**values)
        if config.metric not in METRICS:
            raise InputError(f"clustering metric={config.metric!r}: expected one of {', '.join(METRICS)}")
        if config.engine not in ENGINES:
            raise InputError(f"clustering engine={config.engine!r}: expected one of {', '.join(ENGINES)}")
        return config

    def to_dict(self) -> dict:
        return {**asdict(self), "levels": [asdict(level) for level in self.levels]}

    def key(self, filters_manifest_hash: str) -> str:
        return hash_json({"filters": filters_manifest_hash, "config": self.to_dict(), "version": CLUSTER_VERSION})[:16]


def cluster_pool(store: Store, pool_name: str, config: ClusterConfig, client=None, on_step=None) -> dict:
    """Fit (or finish fitting) the tree of ``pool_name``; returns the contents of ``tree.json``."""
    pool = pool_embeddings(store, pool_name)
    folder = f"clusters/{pool_name}/{config.key(pool.filters_manifest_hash)}"
    if store.exists(f"{folder}/tree.json"):
        return store.read_json(f"{folder}/tree.json")
    if not store.exists(f"{folder}/inputs.parquet"):
        store.write_bytes(f"{folder}/inputs.parquet", pd.DataFrame({"uid": pool.uids}).to_parquet(index=False))
    model = HierarchicalKMeans(list(config.levels), metric=config.metric, engine=config.engine,
                               max_iter=config.max_iter, tol=config.tol, seed=config.seed, client=client,
                               checkpoints=StoreCheckpoints(store, folder), on_step=on_step)
    model.fit(pool.as_dask_array())
    per_cluster = samples_per_cluster(model.levels_)
    summary = {
        "pool": pool_name, "folder": store.uri(folder), "samples": pool.rows, "dim": pool.dim,
        "config": config.to_dict(), "filters_manifest": pool.filters_manifest_hash,
        "levels": [{"level": number, "k": level.k, "inputs": int(len(level.labels)),
                    "inputs_per_cluster": size_summary(level.sizes),
                    "samples_per_cluster": size_summary(counts)}
                   for number, (level, counts) in enumerate(zip(model.levels_, per_cluster), 1)],
    }
    store.write_bytes(f"{folder}/cluster_sizes.png", cluster_size_plot(per_cluster))
    store.write_json(f"{folder}/tree.json", summary)
    return summary


def cluster_size_plot(per_cluster: list[np.ndarray]) -> bytes:
    """Samples per cluster at every level, clusters sorted from largest to smallest (log scale)."""
    fig, axis = subplots(figsize=(7, 4.5))
    for number, counts in enumerate(per_cluster, 1):
        ranked = np.sort(counts)[::-1]
        axis.plot(np.arange(1, len(ranked) + 1) / len(ranked), np.maximum(ranked, 0.8),
                  label=f"level {number} (k={len(ranked)})")
    axis.set_yscale("log")
    axis.set_xlabel("cluster rank (fraction of the level's clusters)")
    axis.set_ylabel("samples in the cluster")
    axis.set_title("cluster-size distribution per level")
    axis.legend()
    return png_bytes(fig)
