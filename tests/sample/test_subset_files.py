"""reshard writes img2dataset's _stats.json per shard and open_clip's sizes.json, which open_clip reads."""

from __future__ import annotations

import json

import numpy as np
from open_clip_train.data import get_dataset_size

from test_subset import write_pool
from tasks.common.catalog import Catalog
from tasks.common.store import Store
from tasks.sample.pool_samples import pool_shards
from tasks.sample.run import SubsetConfig
from tasks.sample.run import make_subset
from tasks.sample.subset_files import reshard


def test_reshard_writes_stats_and_sizes_for_open_clip(tmp_path):
    store = Store(str(tmp_path / "store"))
    write_pool(store, n_shards=3, rows=40)  # 39 samples a shard
    shards = pool_shards(Catalog(store).snapshot("test"))
    chosen = [np.arange(0, 39, 2), np.arange(0, 0), np.arange(5, 30)]  # 20, 0, 25 samples
    records = reshard(store, shards, chosen, "subsets/test/x/shards", 20, lambda n: f"s{n}")
    assert [r["n_success"] for r in records] == [20, 25]
    for number, record in enumerate(records):
        assert record["stats"] == store.uri(f"subsets/test/x/shards/{number:05d}_stats.json")
        stats = store.read_json(store.relative(record["stats"]))
        assert stats["successes"] == stats["count"] == record["n_success"]  # DataComp's resharder reads successes
        assert stats["status_dict"] == {"success": record["n_success"]}
    sizes = store.read_json("subsets/test/x/shards/sizes.json")
    assert sizes == {"00000.tar": 20, "00001.tar": 25}
    # open_clip's own reader, as training calls it (shards joined with "::"), finds the sample count
    assert get_dataset_size("::".join(r["tar"] for r in records)) == (45, 2)
    # a shard killed between its tar and its stats: the rerun writes only the stats
    store.remove("subsets/test/x/shards/00001_stats.json")
    before = store.local_path("subsets/test/x/shards/00001.tar").stat().st_mtime_ns
    assert reshard(store, shards, chosen, "subsets/test/x/shards", 20, lambda n: f"s{n}") == records
    assert store.local_path("subsets/test/x/shards/00001.tar").stat().st_mtime_ns == before
    assert store.read_json("subsets/test/x/shards/00001_stats.json")["successes"] == 25


def test_subset_manifest_lists_the_stats(tmp_path):
    store = Store(str(tmp_path / "store"))
    write_pool(store)
    catalog = Catalog(store)
    config = SubsetConfig.from_dict({"recipe": [{"step": "random", "target": 30}], "shard_size": 16})
    manifest = make_subset(catalog, catalog.snapshot("test"), "random", config, {})
    shards = manifest["outputs"]["shards"]
    assert all(store.exists(store.relative(s["stats"])) for s in shards)
    folder = store.relative(manifest["outputs"]["folder"])
    sizes = json.loads(store.read_bytes(f"{folder}/shards/sizes.json"))
    assert sum(sizes.values()) == 30 == get_dataset_size("::".join(s["tar"] for s in shards))[0]
    assert Catalog(store).missing_outputs(manifest) == []
