"""The sampling stage per shard: the pool table, trees mapped by kept counts, per-shard distances, a Dask run."""

import numpy as np
import pandas as pd
import pytest

from tasks.cluster.hierarchical import ClusterLevel
from tasks.cluster.tree import StoreCheckpoints, load_tree
from tasks.common.catalog import Catalog
from tasks.common.errors import InputError
from tasks.common.manifest import Manifest
from tasks.common.store import Store
from tasks.sample.pool_samples import pool_table, whole_pool_frame
from tasks.sample.run import SubsetConfig, make_subset
from tasks.sample.tree_sampling import balanced_sample, top_level_distances
from tests.sample.test_subset import write_pool


def write_filtered_pool(store: Store, n_shards: int = 4, rows: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """A downloaded pool with an embedding run and a filter run (about 80% kept) published through the
    catalog; returns the kept uids and their embeddings, in the order a tree's inputs follow."""
    catalog = Catalog(store)
    samples = write_pool(store, n_shards=n_shards, rows=rows)
    pool = catalog.pool("test")
    rng = np.random.default_rng(5)
    embedding_folder, filter_folder = catalog.embedding_folder("test", "emb"), catalog.filter_folder("test", "f" * 16)
    embedded, decisions, uids, vectors = [], {}, [], []
    for number, shard in enumerate(pool.shards_with_samples):
        frame = samples[samples["key"].str.startswith(f"{number:04d}")]
        matrix = (np.eye(8)[frame["concept"].to_numpy()] * 3 + rng.normal(size=(len(frame), 8))).astype(np.float16)
        record = catalog.embedded_shard(embedding_folder, shard.shard_id)
        store.write_npy(record.image_embeddings, matrix)
        store.write_npy(record.text_embeddings, matrix)
        store.write_bytes(record.parquet, frame[["uid"]].to_parquet(index=False))
        keep = rng.random(len(frame)) < 0.8
        decisions[shard.shard_id] = store.write_bytes(catalog.filter_decisions(filter_folder, shard.shard_id), pd.DataFrame(
            {"uid": frame["uid"], "key": frame["key"], "text": frame["caption"], "keep": keep}).to_parquet(index=False))
        embedded.append({**record.to_dict(), "rows": len(frame), "parquet": store.uri(record.parquet),
                         "image_embeddings": store.uri(record.image_embeddings),
                         "text_embeddings": store.uri(record.text_embeddings)})
        uids.append(frame["uid"].to_numpy()[keep])
        vectors.append(matrix[keep])
    embeddings = catalog.publish(embedding_folder, Manifest(
        stage="embed", name="test", store=store.root, config={}, code_version="test",
        inputs={"pool_manifest": pool.content_hash}, outputs={"folder": store.uri(embedding_folder), "shards": embedded}),
        archive=True)
    filters = catalog.publish(filter_folder, Manifest(
        stage="filter", name="test", store=store.root, config={}, code_version="test",
        inputs={"embeddings": embeddings["content_hash"]},
        outputs={"folder": store.uri(filter_folder), "decisions": decisions}))
    catalog.set_latest_runs("test", embeddings, filters)
    return np.concatenate(uids), np.concatenate(vectors).astype(np.float32)


def _level(points: np.ndarray, k: int, seed: int) -> ClusterLevel:
    centroids = points[np.random.default_rng(seed).choice(len(points), k, replace=False)]
    for _ in range(5):
        labels = ((points[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        centroids = np.stack([points[labels == j].mean(0) if (labels == j).any() else centroids[j] for j in range(k)])
    distances = ((points[:, None] - centroids[None]) ** 2).sum(-1)
    labels = distances.argmin(1)
    return ClusterLevel(centroids=centroids.astype(np.float32), labels=labels,
                        distances=distances[np.arange(len(points)), labels].astype(np.float32))


def write_fitted_tree(store: Store, uids: np.ndarray, vectors: np.ndarray, metric: str, inputs: dict,
                      folder: str = "clusters/test/fitted") -> dict:
    """A 2-level tree over the kept samples, published as the clustering stage does (inputs: snapshot hashes)."""
    points = vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if metric == "cosine" else vectors
    first = _level(points, 8, 1)
    checkpoints = StoreCheckpoints(store, folder)
    checkpoints.save_level(1, first)
    checkpoints.save_level(2, _level(first.centroids, 3, 2))
    table = store.write_bytes(f"{folder}/inputs.parquet", pd.DataFrame({"uid": uids}).to_parquet(index=False))
    return Catalog(store).publish(folder, Manifest(
        stage="cluster", name="test", store=store.root, config={"metric": metric}, code_version="test",
        inputs=inputs, outputs={"folder": store.uri(folder), "inputs": table}))


@pytest.fixture
def filtered(tmp_path):
    store = Store(str(tmp_path / "store"))
    uids, vectors = write_filtered_pool(store)
    snapshot = Catalog(store).snapshot("test")
    return store, snapshot, uids, vectors, write_fitted_tree(store, uids, vectors, "cosine", snapshot.hashes)


def test_pool_table_holds_numbers_per_shard(filtered):
    store, snapshot, uids, _, _ = filtered
    table = pool_table(store, snapshot)
    frame = whole_pool_frame(table)
    assert table.sizes.tolist() == [49] * 4 and len(table) == len(frame)
    assert table.kept.dtype == bool and np.array_equal(table.kept, frame["kept"].to_numpy())
    assert np.array_equal(frame["uid"].to_numpy()[table.kept], uids)  # tree inputs: kept rows in shard order
    rows = np.array([0, 48, 49, 150, 195])
    assert [part.tolist() for part in table.local_rows(rows)] == [[0, 48], [0], [], [3, 48]]


def test_a_uid_in_two_shards_is_an_error(tmp_path):
    store = Store(str(tmp_path / "store"))
    write_pool(store, n_shards=2, rows=10)
    catalog = Catalog(store)
    first = catalog.pool("test").shards[0]
    frame = pd.read_parquet(store.path(store.relative(catalog.pool("test").shards[1].parquet)))
    frame.loc[3, "uid"] = pd.read_parquet(store.path(store.relative(first.parquet)))["uid"][5]
    store.write_bytes(store.relative(catalog.pool("test").shards[1].parquet), frame.to_parquet(index=False))
    with pytest.raises(InputError, match="appears twice"):
        pool_table(store, catalog.snapshot("test"))


def test_flat_distance_sampling_equals_the_whole_pool_computation(filtered):
    store, snapshot, uids, vectors, tree = filtered
    levels = load_tree(store, store.relative(tree["outputs"]["folder"]))
    for selection in ("c", "f"):
        config = SubsetConfig.from_dict({"recipe": [{"step": "filters"}, {"step": "hkmeans", "target": 60, "mode": "flat",
                                                                           "selection": selection, "seed": 3}],
                                         "reshard": False})
        manifest = make_subset(Catalog(store), snapshot, f"flat-{selection}", config, {"tree": tree})
        chosen = balanced_sample(levels, 60, mode="flat", selection=selection, seed=3,
                                 distances=top_level_distances(levels, vectors, "cosine"))
        table = pd.read_parquet(manifest["outputs"]["parquet"])
        assert sorted(table["uid"]) == sorted(uids[chosen])
        report = Catalog(store).store.read_json(store.relative(manifest["outputs"]["indicators"]))
        assert report["final"]["tree level 2"]["samples"] == 60


def test_a_tree_of_another_snapshot_is_refused(filtered):
    store, snapshot, uids, vectors, _ = filtered
    stale = write_fitted_tree(store, uids, vectors, "l2", {**snapshot.hashes, "filters": "0" * 64}, "clusters/test/old")
    config = SubsetConfig.from_dict({"recipe": [{"step": "hkmeans", "target": 10}], "reshard": False})
    with pytest.raises(InputError, match="not samples of pool 'test'"):
        make_subset(Catalog(store), snapshot, "stale", config, {"tree": stale})
    fewer = write_fitted_tree(store, uids[:-1], vectors[:-1], "l2", snapshot.hashes, "clusters/test/fewer")
    with pytest.raises(InputError, match="inputs but pool 'test' has"):
        make_subset(Catalog(store), snapshot, "fewer", config, {"tree": fewer})


def test_a_dask_run_writes_the_same_subset(filtered, tmp_path):
    from distributed import Client, LocalCluster

    store, snapshot, _, _, tree = filtered
    config = SubsetConfig.from_dict({"recipe": [{"step": "filters"}, {"step": "metaclip", "target": 60, "seed": 2},
                                                {"step": "hkmeans", "target": 40, "mode": "flat", "selection": "c"}],
                                     "ngrams": {"min_unigram_count": 5}, "shard_size": 15})
    local = make_subset(Catalog(store), snapshot, "local", config, {"tree": tree})
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        remote = make_subset(Catalog(store), snapshot, "remote", config, {"tree": tree}, client=client)
    pd.testing.assert_frame_equal(pd.read_parquet(local["outputs"]["parquet"]),
                                  pd.read_parquet(remote["outputs"]["parquet"]))
    assert store.read_bytes(store.relative(local["outputs"]["datacomp"])) == store.read_bytes(
        store.relative(remote["outputs"]["datacomp"]))
    assert local["inputs"]["metadata"] == remote["inputs"]["metadata"]  # the same n-grams, counted on the workers
    assert local["stats"] == remote["stats"]
    assert [s["n_success"] for s in local["outputs"]["shards"]] == [s["n_success"] for s in remote["outputs"]["shards"]]
