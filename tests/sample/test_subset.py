"""make_subset on a small pool written into a store: recipes, files read back, reshard, bad input."""

import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest

from tasks.cluster.hierarchical import ClusterLevel
from tasks.cluster.tree import StoreCheckpoints
from tasks.common.catalog import Catalog, shard_id
from tasks.common.errors import InputError
from tasks.common.manifest import Manifest
from tasks.common.store import Store
from tasks.sample.run import SubsetConfig
from tasks.sample.run import make_subset as make_subset_from_snapshot
from tasks.sample.subset_files import DATACOMP_DTYPE, datacomp_uid_array, uids_from_datacomp
from tasks.train.run import training_data

WORDS = ["red circle", "blue square", "green star", "website screenshot", "bar chart"]
WEIGHTS = np.array([0.6, 0.2, 0.1, 0.07, 0.03])


def make_subset(store: Store, pool: str, name: str, config: SubsetConfig, trees: dict):
    """The sampling stage on the pool as the catalog resolves it now."""
    catalog = Catalog(store)
    return make_subset_from_snapshot(catalog, catalog.snapshot(pool), name, config, trees)


def write_pool(store: Store, n_shards: int = 3, rows: int = 40, seed: int = 0) -> pd.DataFrame:
    """A downloaded pool: per shard a tar (jpg, txt, json) and img2dataset's parquet, published through
    the catalog as a download would; returns all samples."""
    catalog = Catalog(store)
    rng = np.random.default_rng(seed)
    shards, samples = [], []
    for number in range(n_shards):
        concept = rng.choice(len(WORDS), size=rows, p=WEIGHTS)
        keys = [f"{number:04d}{i:04d}" for i in range(rows)]
        uids = [f"{number:08x}{i:08x}{seed:016x}" for i in range(rows)]
        texts = [f"a photo of a {WORDS[c]}, stock image" for c in concept]
        frame = pd.DataFrame({"uid": uids, "key": keys, "caption": texts, "status": "success", "concept": concept})
        frame.loc[rows - 1, "status"] = "failed_to_download"
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for row in frame[frame["status"] == "success"].itertuples():
                for ext, data in (("jpg", f"image {row.uid}".encode()), ("txt", row.caption.encode()),
                                  ("json", json.dumps({"uid": row.uid, "key": row.key}).encode())):
                    info = tarfile.TarInfo(f"{row.key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        folder = catalog.slice_folder("test", 0, f"abc{seed}")
        tar_uri = store.write_bytes(f"{folder}/{number:05d}.tar", buffer.getvalue())
        parquet = store.write_bytes(f"{folder}/{number:05d}.parquet",
                                    frame.drop(columns=["concept"]).to_parquet(index=False))
        shards.append({"shard_id": shard_id(0, f"abc{seed}", number), "tar": tar_uri, "parquet": parquet,
                       "n_success": rows - 1, "n_rows": rows, "content_hash": f"{seed}-{number}"})
        samples.append(frame[frame["status"] == "success"])
    catalog.publish_pool(Manifest(stage="download", name="test", store=store.root, config={}, code_version="test",
                                  outputs={"shards": shards}))
    return pd.concat(samples, ignore_index=True)


def write_tree(store: Store, samples: pd.DataFrame, folder: str = "clusters/test/t") -> dict:
    """A 2-level tree: level-1 clusters = the concepts, one top cluster for concepts 0-2, one for 3-4;
    returns its manifest, as the clustering stage publishes it."""
    checkpoints = StoreCheckpoints(store, folder)
    labels = samples["concept"].to_numpy()
    level1 = ClusterLevel(centroids=np.eye(5, dtype=np.float32), labels=labels,
                          distances=np.random.default_rng(1).random(len(labels)).astype(np.float32))
    level2 = ClusterLevel(centroids=np.eye(2, 5, dtype=np.float32), labels=np.array([0, 0, 0, 1, 1]),
                          distances=np.zeros(5, dtype=np.float32))
    checkpoints.save_level(1, level1)
    checkpoints.save_level(2, level2)
    inputs = store.write_bytes(f"{folder}/inputs.parquet", samples[["uid"]].to_parquet(index=False))
    return Catalog(store).publish(folder, Manifest(
        stage="cluster", name="test", store=store.root, config={"metric": "l2"}, code_version="test",
        outputs={"folder": store.uri(folder), "inputs": inputs}))


@pytest.fixture
def pool(tmp_path):
    store = Store(str(tmp_path / "store"))
    samples = write_pool(store)
    return store, samples, write_tree(store, samples)


def test_datacomp_uid_file_round_trip():
    uids = np.array(["ffffffffffffffff0000000000000001", "00000000000000010000000000000002",
                     "0000000000000001000000000000000a"])
    records = datacomp_uid_array(uids)
    assert records.dtype == DATACOMP_DTYPE
    assert records["f0"].tolist() == [1, 1, 2 ** 64 - 1] and records["f1"].tolist() == [2, 10, 1]
    assert list(uids_from_datacomp(records)) == sorted(uids)
    with pytest.raises(InputError, match="32 hex"):
        datacomp_uid_array(np.array(["abc"]))


def test_hkmeans_subset_is_balanced_and_resharded(pool):
    store, samples, tree = pool
    config = SubsetConfig.from_dict({"recipe": [{"step": "hkmeans", "target": 20}], "shard_size": 8,
                                     "report_metadata": True, "ngrams": {"min_unigram_count": 5}})
    manifest = make_subset(store, "test", "balanced", config, {"tree": tree})
    table = pd.read_parquet(manifest["outputs"]["parquet"])
    assert len(table) == 20 == manifest["rows"]["subset"]
    concept = samples.set_index("uid").loc[table["uid"], "concept"].to_numpy()
    # QUOTA: 10 per top cluster; the top cluster of concepts 3-4 has fewer than 10, the rest goes nowhere else
    top = np.where(concept >= 3, 1, 0)
    small = int((samples["concept"] >= 3).sum())
    assert np.bincount(top, minlength=2).tolist() == [20 - min(10, small), min(10, small)]
    datacomp = np.load(manifest["outputs"]["datacomp"])
    assert sorted(uids_from_datacomp(datacomp)) == sorted(table["uid"])
    shards, data_hash, n = training_data(manifest)
    assert n == 20 and data_hash == manifest["content_hash"] and len(shards) >= 2
    ids = [shard["shard_id"] for shard in manifest["outputs"]["shards"]]
    assert len(set(ids)) == len(ids) == len(shards)  # the subset's own shards have ids too
    pool_ids = {shard.shard_id for shard in Catalog(store).pool("test").shards}
    assert set(table["source_shard_id"]) <= pool_ids  # each sample names the pool shard it came from
    resharded = set()
    for uri in shards:
        with tarfile.open(uri) as tar:
            names = tar.getnames()
        resharded.update(name.split(".")[0] for name in names)
        assert {name.split(".")[1] for name in names} == {"jpg", "txt", "json"}
    assert resharded == set(table["uid"])
    report = json.loads(open(manifest["outputs"]["indicators"]).read())
    assert [stage["after"] for stage in report["stages"]] == ["pool", "1. hkmeans"]
    assert "metadata entries" in report["final"] and "tree level 2" in report["final"]
    # a second call finds the manifest: nothing is rewritten
    assert make_subset(store, "test", "balanced", config, {"tree": tree})["created_at"] == manifest["created_at"]


def test_metaclip_then_random_composition(pool):
    store, samples, tree = pool
    config = SubsetConfig.from_dict({"recipe": [{"step": "metaclip", "t": 5}, {"step": "random", "target": 15}],
                                     "reshard": False, "ngrams": {"min_unigram_count": 5}})
    manifest = make_subset(store, "test", "meta", config, {})
    steps = manifest["stats"]["steps"]
    assert steps[0]["step"] == "metaclip" and steps[0]["t"] == 5 and steps[0]["expected_size"] > 15
    assert steps[1]["size"] == 15 == manifest["rows"]["subset"]
    assert "shards" not in manifest["outputs"]
    json.dumps(manifest)  # plain JSON: Prefect persists it as the task's result


def test_metaclip_target_gives_exactly_the_target(pool):
    store, _, _ = pool
    config = SubsetConfig.from_dict({"recipe": [{"step": "metaclip", "target": 30}], "reshard": False,
                                     "ngrams": {"min_unigram_count": 5}})
    manifest = make_subset(store, "test", "meta-target", config, {})
    step = manifest["stats"]["steps"][0]
    assert manifest["rows"]["subset"] == 30 and step["drawn_size"] >= 30
    assert step["expected_size"] == pytest.approx(30 + 3 * step["expected_size_sd"], abs=1.0)
    json.dumps(manifest)


def test_online_mode_keeps_probabilities(pool):
    store, _, _ = pool
    config = SubsetConfig.from_dict({"recipe": [{"step": "metaclip", "t": 3, "online": True}], "reshard": False,
                                     "ngrams": {"min_unigram_count": 5}})
    table = pd.read_parquet(make_subset(store, "test", "online", config, {})["outputs"]["parquet"])
    assert (table["keep_probability"] > 0).all() and (table["keep_probability"] <= 1).all()
    assert (table["keep_probability"] < 1).any()


def test_bad_recipes(pool):
    store, samples, tree = pool
    with pytest.raises(InputError, match="step='sort'"):
        SubsetConfig.from_dict([{"step": "sort"}])
    with pytest.raises(InputError, match="t=0 must be above zero"):
        SubsetConfig.from_dict([{"step": "metaclip", "t": 0}])
    with pytest.raises(InputError, match="mode='deep'"):
        SubsetConfig.from_dict([{"step": "hkmeans", "target": 3, "mode": "deep"}])
    with pytest.raises(InputError, match="selection='x'"):
        SubsetConfig.from_dict([{"step": "hkmeans", "target": 3, "selection": "x"}])
    with pytest.raises(InputError, match="target=500 is larger than the 117"):
        make_subset(store, "test", "big", SubsetConfig.from_dict([{"step": "random", "target": 500}]), {})
    with pytest.raises(InputError, match="has not been filtered"):
        make_subset(store, "test", "f", SubsetConfig.from_dict([{"step": "filters"}]), {})
    other = write_tree(store, samples.assign(uid=samples["uid"].str.replace("0", "f")), "clusters/test/other")
    with pytest.raises(InputError, match="are not samples of pool 'test'"):
        make_subset(store, "test", "x", SubsetConfig.from_dict([{"step": "hkmeans", "target": 5}]), {"tree": other})
    assert not store.exists("subsets/test") or not store.list("subsets/test", "*/manifest.json")


def test_subset_is_made_from_the_snapshot_it_was_given(pool):
    """A pool refresh between resolving the catalog and making the subset does not mix snapshots."""
    store, samples, _ = pool
    catalog = Catalog(store)
    before = catalog.snapshot("test")
    write_pool(store, n_shards=2, rows=30, seed=1)  # a refresh publishes another pool under the same name
    config = SubsetConfig.from_dict({"recipe": [{"step": "random", "target": 10}], "reshard": False})
    manifest = make_subset_from_snapshot(catalog, before, "snap", config, {})
    uids = set(pd.read_parquet(manifest["outputs"]["parquet"])["uid"])
    assert uids <= set(samples["uid"]) and manifest["inputs"]["pool"] == before.pool.content_hash
    after = make_subset(store, "test", "snap", config, {})
    assert after["inputs"]["pool"] != before.pool.content_hash and after["outputs"]["folder"] != manifest["outputs"]["folder"]
