"""A grown pool's samples put into an existing cluster tree, level by level, without re-clustering.

In:  the catalog, the grown pool's snapshot (embedded and filtered), the :class:`ClusterConfig`, a
     :class:`~tasks.cluster.drift.TreeUpdateConfig`, the manifest of the tree to extend (the newest
     tree of the pool made with the same config by the same code from the same embedder, for an
     older snapshot: :func:`previous_tree`) and optionally a Dask client.
Out: a tree folder (:func:`assigned_folder`) in the layout of a fitted tree (:mod:`tasks.cluster.tree`),
     so that subsets sample from it as from a fresh tree: the base tree's centroids at every level,
     level 1's labels and distances over every kept sample of the grown pool (in its embedding
     run's shard order, as a fitted tree's inputs), levels 2+ unchanged, ``inputs.parquet``;
     ``drift.json`` (:func:`tasks.cluster.drift.drift_report`) and, last, the manifest (stage
     ``cluster``; its ``stats.assigned`` names the base tree, the tree the chain was fitted as, and
     the counts; ``stats.drift`` the drift figures).

A sample that was an input of the base tree (same shard id and row, still kept) keeps its cluster
and distance; every other kept sample goes to the nearest level-1 centroid (squared L2, rows
L2-normalised first for the cosine metric: the rule the fit assigned by; a level 1 fitted as a
recursive split is searched whole, not within the sample's coarse cluster), and at each upper
level to the parent of its cluster below, which is how the tree is defined. Samples the filters
no longer keep leave the tree (counted as ``dropped``). One Dask task per shard reads the shard's
decisions and, only when it holds new samples, its embeddings; the driver holds the level-1 labels
and distances (8 bytes a sample, as a fit does) and writes ``inputs.parquet`` a shard at a time.

The drift reference (per level, the ``quantile`` of the fitted samples' distances to their
centroids, and the entropy of the samples per cluster) is computed once per fitted tree, by an
exact distributed order statistic over per-shard distances held on the workers
(:func:`tasks.filters.clip_score.quantile`), cached in the fitted tree's folder
(:func:`tasks.cluster.tree.reference_path`) and carried along by every tree assigned from it.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from tasks.cluster.drift import TreeShape, TreeUpdateConfig, beyond_reference, drift_report, size_entropies
from tasks.cluster.hierarchical import ClusterLevel, normalise_rows
from tasks.cluster.kmeans import assign_points
from tasks.cluster.pool_input import inputs_table, pool_embeddings, write_inputs
from tasks.cluster.run import CLUSTER_VERSION, ClusterConfig, filter_settings, publish_tree
from tasks.cluster.tree import StoreCheckpoints, load_tree, reference_path, samples_per_cluster
from tasks.common.catalog import Catalog, PoolSnapshot
from tasks.common.errors import InputError
from tasks.common.hashing import code_version, hash_json
from tasks.common.store import Store


def previous_tree(catalog: Catalog, snapshot: PoolSnapshot, config: ClusterConfig) -> dict | None:
    """The newest finished tree of the pool to assign this snapshot to, or ``None``: same config, same
    code version, embedded by the same embedder (same embedding folder) and filtered with the same
    settings, made from another snapshot."""
    embedded, filtered = snapshot.require_filtered("tree update")
    settings = filter_settings(filtered.manifest)
    version = code_version("cluster", CLUSTER_VERSION)
    for manifest in reversed(catalog.trees(snapshot.pool.name)):
        if (manifest.get("config") == config.to_dict() and manifest.get("code_version") == version
                and manifest.get("inputs") != snapshot.hashes
                and manifest.get("stats", {}).get("embedding_folder") == embedded.manifest["outputs"]["folder"]
                and manifest.get("stats", {}).get("filter_settings") == settings):
            return manifest
    return None


def assigned_folder(catalog: Catalog, snapshot: PoolSnapshot, config: ClusterConfig, update: TreeUpdateConfig,
                    base: dict) -> str:
    key = hash_json({"inputs": snapshot.hashes, "config": config.to_dict(), "version": CLUSTER_VERSION,
                     "assigned_to": base["content_hash"], "update": {**update.to_dict(), "mode": "assign"}})
    return catalog.tree_folder(snapshot.pool.name, key)


def _points(matrix: np.ndarray, metric: str) -> np.ndarray:
    return normalise_rows(matrix, "new samples") if metric == "cosine" else np.asarray(matrix, dtype=np.float32)


def base_inputs(store: Store, inputs: str) -> dict[str, tuple[int, np.ndarray]]:
    """shard id -> (first input of the shard among the tree's inputs, its rows) from ``inputs.parquet``."""
    with store.open(inputs) as handle:
        parquet = pq.ParquetFile(handle)
        if {"shard_id", "row"} - set(parquet.schema_arrow.names):
            raise InputError(f"tree inputs {store.uri(inputs)}: no shard_id and row columns (a tree made before "
                             "trees recorded them); fit a new tree (tree_update mode 'fit')")
        out, start = {}, 0
        for group in range(parquet.num_row_groups):  # one group per shard: the driver reads a shard at a time
            table = parquet.read_row_group(group, columns=["shard_id", "row"])
            if not table.num_rows:
                continue
            ids = table.column("shard_id").to_numpy(zero_copy_only=False)
            rows = table.column("row").to_numpy()
            cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
            for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(ids)]])):
                first, piece = out.get(ids[lo], (start + lo, np.zeros(0, dtype=np.int64)))
                out[ids[lo]] = (first, np.concatenate([piece, rows[lo:hi]]))
            start += table.num_rows
    return out


def _shard_distances(store: Store, shape: TreeShape, metric: str, embeddings: str, rows: np.ndarray,
                     level1: np.ndarray) -> np.ndarray:
    """One shard's fitted samples (``rows``, level-1 clusters ``level1``): distance to their centroid per level."""
    return shape.distances(_points(store.read_npy(embeddings)[rows], metric), level1)


def _column(distances: np.ndarray, level: int) -> np.ndarray:
    return distances[:, level]


def fitted_reference(catalog: Catalog, snapshot: PoolSnapshot, fitted: dict, levels: list[ClusterLevel],
                     quantile: float, client=None) -> dict:
    """The fitted tree's per-level distance quantile and size entropy, cached in its folder."""
    import dask

    from tasks.common.shuffle import compute
    from tasks.filters.clip_score import quantile as distributed_quantile

    store = catalog.store
    folder = store.relative(fitted["outputs"]["folder"])
    cached = reference_path(folder, quantile)
    if store.exists(cached):
        return store.read_json(cached)
    embedded, _ = snapshot.require_filtered("tree update")
    matrices = {shard.shard_id: store.relative(shard.image_embeddings) for shard in embedded.shards}
    # one key each: the tree and the store travel once per worker, not once per shard
    shape, metric = dask.delayed(TreeShape.of(levels), pure=True), fitted["config"]["metric"]
    parts, samples = [], 0
    for shard, (first, rows) in base_inputs(store, store.relative(fitted["outputs"]["inputs"])).items():
        if shard not in matrices:  # a shard the grown pool lost: its samples cannot be read any more
            continue
        level1 = levels[0].labels[first:first + len(rows)]
        parts.append(dask.delayed(_shard_distances, pure=True)(store, shape, metric, matrices[shard], rows, level1))
        samples += len(rows)
    parts = client.persist(parts) if client is not None else compute(None, parts)
    distances = []
    for level in range(len(levels)):
        columns = [dask.delayed(_column, pure=True)(part, level) for part in parts]
        columns = client.persist(columns) if client is not None else compute(None, columns)
        distances.append(distributed_quantile(columns, quantile, client))
    reference = {"tree": fitted["outputs"]["folder"], "quantile": quantile, "samples": samples,
                 "distance": distances, "entropy": size_entropies(samples_per_cluster(levels))}
    store.write_json(cached, reference)
    return reference


def _assign_shard(store: Store, shape: TreeShape, metric: str, reference: np.ndarray, shard_id: str,
                  embeddings: str, decisions: str, old_rows: np.ndarray, old_labels: np.ndarray,
                  old_distances: np.ndarray):
    """One shard of the grown pool: (its inputs table, level-1 labels and distances of its kept samples,
    new samples, new samples beyond the reference per level)."""
    import pandas as pd

    with store.open(decisions) as handle:
        frame = pd.read_parquet(handle, columns=["uid", "keep"])
    kept = np.flatnonzero(frame["keep"].to_numpy(dtype=bool))
    position = np.minimum(np.searchsorted(old_rows, kept), max(len(old_rows) - 1, 0))
    known = (old_rows[position] == kept) if len(old_rows) else np.zeros(len(kept), dtype=bool)
    labels = np.empty(len(kept), dtype=np.int64)
    distances = np.empty(len(kept), dtype=np.float32)
    labels[known], distances[known] = old_labels[position[known]], old_distances[position[known]]
    far = np.zeros(len(shape.centroids), dtype=np.int64)
    new = ~known
    if new.any():  # only a shard with new samples reads its embeddings
        points = _points(store.read_npy(embeddings)[kept[new]], metric)
        new_labels, new_distances = assign_points(points, shape.centroids[0])
        labels[new], distances[new] = new_labels, new_distances
        far = beyond_reference(shape.distances(points, new_labels), reference)
    table = inputs_table(frame["uid"].to_numpy()[kept], shard_id, kept)
    return table, labels, distances, int(new.sum()), far


def assign_tree(catalog: Catalog, snapshot: PoolSnapshot, config: ClusterConfig, update: TreeUpdateConfig,
                base: dict, client=None) -> dict:
    """Assign the snapshot's kept samples to the tree of ``base`` (a tree manifest); the new tree's manifest."""
    from tasks.sample.pool_samples import map_shards

    store = catalog.store
    folder = assigned_folder(catalog, snapshot, config, update, base)
    done = catalog.finished(folder)
    if done is not None:
        return done
    levels = load_tree(store, store.relative(base["outputs"]["folder"]))
    chain = base["stats"].get("assigned")  # the base was itself assigned: the chain's fit and reference
    fitted = chain["fitted"] if chain else base
    if chain and chain["reference"]["quantile"] == update.quantile:
        reference = chain["reference"]
    else:
        fitted_levels = load_tree(store, store.relative(fitted["outputs"]["folder"])) if chain else levels
        reference = fitted_reference(catalog, snapshot, fitted, fitted_levels, update.quantile, client)
    old = base_inputs(store, store.relative(base["outputs"]["inputs"]))
    pool = pool_embeddings(store, snapshot)
    shape, metric = TreeShape.of(levels), config.metric
    empty = np.zeros(0, dtype=np.int64)
    jobs = []
    for shard in pool.shards:
        first, rows = old.get(shard.shard_id, (0, empty))
        jobs.append((shard.shard_id, shard.embeddings, shard.decisions, rows, levels[0].labels[first:first + len(rows)],
                     levels[0].distances[first:first + len(rows)]))
    labels, distances = [], []
    counts = {"new": 0, "far": np.zeros(len(levels), dtype=np.int64)}

    def pieces():
        for table, shard_labels, shard_distances, new, far in map_shards(
                client, _assign_shard, jobs, store, shape, metric, np.asarray(reference["distance"])):
            labels.append(shard_labels)
            distances.append(shard_distances)
            counts["new"] += new
            counts["far"] += far
            yield table

    write_inputs(store, f"{folder}/inputs.parquet", pieces())
    if not sum(len(part) for part in labels):
        raise InputError(f"pool {snapshot.pool.name!r}: the filters kept no sample; nothing to assign")
    first = ClusterLevel(centroids=levels[0].centroids, labels=np.concatenate(labels),
                         distances=np.concatenate(distances))
    # base inputs not kept any more, in a shard of the grown pool or in a shard it lost
    counts["dropped"] = len(levels[0].labels) - (len(first.labels) - counts["new"])
    assigned = [first, *levels[1:]]
    checkpoints = StoreCheckpoints(store, folder)
    for number, level in enumerate(assigned, 1):
        checkpoints.save_level(number, level)
    before = chain["since_fit"] if chain else {"samples": 0, "far": [0] * len(levels)}
    since_fit = {"samples": before["samples"] + counts["new"],
                 "far": (np.asarray(before["far"], dtype=np.int64) + counts["far"]).tolist()}
    drift = drift_report(update, reference, counts["new"], counts["far"], since_fit["samples"],
                         np.asarray(since_fit["far"]), size_entropies(samples_per_cluster(assigned)))
    stats = {"assigned": {"base": base["outputs"]["folder"], "fitted": fitted, "reference": reference,
                          "new_samples": counts["new"], "dropped_samples": counts["dropped"],
                          "since_fit": since_fit},
             "drift": drift}
    ran = [{**level.get("ran", {}), "assigned_from": base["outputs"]["folder"]} for level in base["stats"]["levels"]]
    return publish_tree(catalog, snapshot, config, folder, assigned, ran, stats=stats,
                        outputs={"drift": store.write_json(f"{folder}/drift.json", drift)})
