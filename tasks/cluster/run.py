"""The clustering stage: hierarchical k-means over a pool's filtered embeddings, into the store.

In:  the catalog, a resolved pool snapshot (its embedding and filter runs), a
     :class:`ClusterConfig`, and optionally a Dask client (the embeddings are streamed to its
     workers shard by shard).
Out: the tree folder (:meth:`~tasks.common.catalog.Catalog.tree_folder`, keyed by the filter and
     embedding manifests and the config; see :mod:`tasks.cluster.tree`) with ``inputs.parquet``
     (uid, shard id and row of every input), every level, ``cluster_sizes.png``, ``tree.json`` (per level k, its inputs and the
     distribution of samples per cluster) and, written last, the stage's manifest.
     A rerun skips finished levels and resumes an unfinished level at its last resampling step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from tasks.cluster.hierarchical import (AUTO_SPLIT_FROM, METRICS, HierarchicalKMeans, LevelSpec, check_level_k,
                                        check_levels)
from tasks.cluster.kmeans import ENGINES
from tasks.cluster.pool_input import pool_embeddings
from tasks.cluster.tree import StoreCheckpoints, samples_per_cluster, size_summary
from tasks.common.catalog import Catalog, PoolSnapshot
from tasks.common.errors import InputError
from tasks.common.hashing import code_version, hash_json
from tasks.common.manifest import Manifest
from tasks.common.options import check_known_settings
from tasks.common.plots import png_bytes, subplots

CLUSTER_VERSION = 3  # bump when a change alters the tree a config produces (3: k-means||, automatic recursive split)


@dataclass(frozen=True)
class ClusterConfig:
    """Levels (k, resampling steps, points per cluster, resampling), metric, engine, iterations, seed,
    and ``auto_split_from``: a level 1 with at least that many clusters and no ``split`` runs as a
    recursive split level (32 coarse clusters, each split into 32, and so on up to ``k``; see
    :class:`~tasks.cluster.hierarchical.LevelSpec`); 0 never splits unless a level asks to."""

    levels: tuple[LevelSpec, ...] = field(default_factory=lambda: (LevelSpec(1000), LevelSpec(100, 10),
                                                                   LevelSpec(10, 10)))
    metric: str = "cosine"
    engine: str = "auto"
    max_iter: int = 50
    tol: float = 1e-4
    seed: int = 0
    auto_split_from: int = AUTO_SPLIT_FROM

    @classmethod
    def from_dict(cls, values: dict | None) -> "ClusterConfig":
        """The config checked whole, before any level runs (the levels by
        :func:`~tasks.cluster.hierarchical.check_levels`: every level shrinks the tree); an
        InputError names the setting. Whether level 1 fits the samples: :meth:`check_samples`."""
        if values is not None and not isinstance(values, dict):
            raise InputError(f"clustering: expected an object of settings, got {values!r}")
        values = dict(values or {})
        check_known_settings("clustering", values, cls.__dataclass_fields__)
        config = cls(**values)
        if config.metric not in METRICS:
            raise InputError(f"clustering metric={config.metric!r}: expected one of {', '.join(METRICS)}")
        if config.engine not in ENGINES:
            raise InputError(f"clustering engine={config.engine!r}: expected one of {', '.join(ENGINES)}")
        if not _whole(config.auto_split_from) or config.auto_split_from < 0:
            raise InputError(f"clustering auto_split_from={config.auto_split_from!r}: expected 0 (never) or a "
                             f"positive number of level-1 clusters")
        if not _whole(config.max_iter) or config.max_iter < 1:
            raise InputError(f"clustering max_iter={config.max_iter!r}: expected a whole number of at least 1")
        if isinstance(config.tol, bool) or not isinstance(config.tol, (int, float)) or not config.tol >= 0:
            raise InputError(f"clustering tol={config.tol!r}: expected a number of at least 0")
        if not _whole(config.seed):
            raise InputError(f"clustering seed={config.seed!r}: expected a whole number")
        levels = check_levels(config.levels, config.metric, config.auto_split_from)
        return replace(config, levels=tuple(levels))

    def check_samples(self, n_samples: int) -> None:
        """Level 1's ``k`` is no larger than the ``n_samples`` the tree is fitted on (the filters' kept samples)."""
        check_level_k(1, self.levels[0].k, n_samples)

    def to_dict(self) -> dict:
        return {**asdict(self), "levels": [asdict(level) for level in self.levels]}

    def key(self, snapshot: PoolSnapshot) -> str:
        return hash_json({"inputs": snapshot.hashes, "config": self.to_dict(), "version": CLUSTER_VERSION})


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def tree_folder(catalog: Catalog, snapshot: PoolSnapshot, config: ClusterConfig) -> str:
    return catalog.tree_folder(snapshot.pool.name, config.key(snapshot))


def cluster_pool(catalog: Catalog, snapshot: PoolSnapshot, config: ClusterConfig, client=None, on_step=None) -> dict:
    """Fit (or finish fitting) the tree of the snapshot's filtered pool; returns the stage's manifest."""
    store = catalog.store
    folder = tree_folder(catalog, snapshot, config)
    done = catalog.finished(folder)
    if done is not None:
        return done
    pool = pool_embeddings(store, snapshot)
    if not store.exists(f"{folder}/inputs.parquet"):
        pool.write_uids(f"{folder}/inputs.parquet")
    model = HierarchicalKMeans(list(config.levels), metric=config.metric, engine=config.engine,
                               max_iter=config.max_iter, tol=config.tol, seed=config.seed, client=client,
                               checkpoints=StoreCheckpoints(store, folder), on_step=on_step,
                               auto_split_from=config.auto_split_from)
    model.fit(pool.as_dask_array())
    return publish_tree(catalog, snapshot, config, folder, model.levels_, model.plans_)


def publish_tree(catalog: Catalog, snapshot: PoolSnapshot, config: ClusterConfig, folder: str, levels: list,
                 ran: list[dict], stats: dict | None = None, outputs: dict | None = None) -> dict:
    """Write a tree's ``tree.json`` and plot, then its manifest (last), for a fitted or an assigned tree.

    ``levels``: its :class:`~tasks.cluster.hierarchical.ClusterLevel` list (already saved under
    ``folder``); ``ran``: what each level ran; ``stats``/``outputs``: what an assigned tree adds."""
    store = catalog.store
    embedded, filtered = snapshot.require_filtered("clustering")
    per_cluster = samples_per_cluster(levels)
    samples, dim = int(len(levels[0].labels)), int(levels[0].centroids.shape[1])
    summary = {
        "pool": snapshot.pool.name, "folder": store.uri(folder), "samples": samples, "dim": dim,
        "config": config.to_dict(), "inputs": snapshot.hashes,
        "levels": [{"level": number, "k": level.k, "inputs": int(len(level.labels)), "ran": ran[number - 1],
                    "inputs_per_cluster": size_summary(level.sizes),
                    "samples_per_cluster": size_summary(counts)}
                   for number, (level, counts) in enumerate(zip(levels, per_cluster), 1)],
        **(stats or {}),
    }
    manifest = Manifest(
        stage="cluster", name=snapshot.pool.name, store=store.root, config=config.to_dict(),
        code_version=code_version("cluster", CLUSTER_VERSION), inputs=snapshot.hashes,
        outputs={"folder": store.uri(folder), "inputs": store.uri(f"{folder}/inputs.parquet"),
                 "plot": store.write_bytes(f"{folder}/cluster_sizes.png", cluster_size_plot(per_cluster)),
                 "tree": store.write_json(f"{folder}/tree.json", summary), **(outputs or {})},
        rows={"samples": samples, **{f"level_{level['level']}_k": level["k"] for level in summary["levels"]}},
        # the embedding run's folder (one per embedder and pool) and the filter settings: a later, grown
        # snapshot of the pool may be assigned to this tree only when embedded and filtered the same way
        stats={"levels": summary["levels"], "dim": dim, "metric": config.metric,
               "embedding_folder": embedded.manifest["outputs"]["folder"],
               "filter_settings": filter_settings(filtered.manifest), **(stats or {})})
    return catalog.publish(folder, manifest)


def filter_settings(filter_manifest: dict) -> str:
    """A hash of a filter run's settings and code version: what a tree's samples were chosen by."""
    return hash_json({"config": filter_manifest.get("config"), "code_version": filter_manifest.get("code_version")})


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
