"""The export stage on a small pool written into a store: DataComp's format, the shards' layout, bad input, reruns."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from open_clip_train.data import get_dataset_size

from export_support import write_embedded_pool
from tasks.common.catalog import Catalog
from tasks.common.errors import InputError
from tasks.common.store import Store
from tasks.pool_export.datacomp import METADATA_SCHEMA
from tasks.pool_export.run import ExportConfig, _copy_in_store, export_shard, plan_export, publish_export
from tasks.train.run import training_data


def export(store: Store, pool: str = "test", **config) -> dict:
    """The stage without Prefect: plan, every shard, the manifest."""
    catalog = Catalog(store)
    plan = plan_export(catalog, catalog.snapshot(pool), ExportConfig(**config))
    summaries = [export_shard(store, job, plan["folder"], ExportConfig(**plan["config"])) for job in plan["jobs"]]
    return publish_export(catalog, plan, summaries)


def npz(uri: str) -> dict:
    with open(uri, "rb") as handle:
        data = np.load(io.BytesIO(handle.read()))
        return {key: data[key] for key in data.files}


@pytest.fixture
def pool(tmp_path):
    store = Store(str(tmp_path / "store"))
    return store, write_embedded_pool(store)


def test_metadata_in_datacomp_format(pool):
    store, written = pool
    manifest = export(store)
    expected = written["expected"]
    folder = store.relative(manifest["outputs"]["folder"])
    assert folder.startswith("exports/test/")
    # one number per shard with samples, in pool order across both slices (each numbered from 00000)
    assert sorted(store.list(f"{folder}/metadata")) == [f"{folder}/metadata/{n:08d}.{ext}" for n in range(3)
                                                        for ext in ("npz", "parquet")]
    assert [m["source_shard_id"] for m in manifest["outputs"]["metadata"]] == [e["shard_id"] for e in expected]
    assert [e["shard_id"][:5] for e in expected] == ["00000", "00001", "00001"]  # slice 0's 2nd shard has no sample
    for number, (entry, want) in enumerate(zip(manifest["outputs"]["metadata"], expected)):
        assert entry["parquet"].endswith(f"/metadata/{number:08d}.parquet")
        table = pq.read_table(entry["parquet"])
        assert table.schema == METADATA_SCHEMA  # DataComp's columns and types
        frame = table.to_pandas()
        ok, source = want["ok"], want["table"]
        assert 0 < ok.sum() < len(ok) == want["n_success"]
        assert frame["uid"].tolist() == source["uid"][ok].tolist()  # only embedded samples, in tar order
        assert frame["url"].tolist() == want["url"][ok].tolist()  # joined on uid from the shuffled shard table
        assert frame["text"].tolist() == source["text"][ok].tolist()
        assert frame["sha256"].tolist() == source["sha256"][ok].tolist()
        assert frame["original_width"].tolist() == source["original_width"][ok].tolist()
        np.testing.assert_array_equal(frame["clip_l14_similarity_score"].to_numpy(), source["clip_score"][ok])
        assert frame["clip_b32_similarity_score"].isna().all() and frame["face_bboxes"].isna().all()
        arrays = npz(entry["npz"])
        assert set(arrays) == {"l14_img", "l14_txt"}
        assert all(a.dtype == np.float16 and a.shape == (ok.sum(), 8) for a in arrays.values())
        np.testing.assert_array_equal(arrays["l14_img"], want["image"][ok])
        np.testing.assert_array_equal(arrays["l14_txt"], want["text"][ok])
        assert entry["rows"] == ok.sum()
    assert manifest["rows"]["exported"] == sum(e["ok"].sum() for e in expected)
    assert manifest["stats"]["not_exported"] == {"undecodable": 3} == {"undecodable": manifest["rows"]["not_exported"]}
    assert manifest["stats"]["null_columns"] == ["clip_b32_similarity_score", "face_bboxes"]
    assert "shards" not in manifest["outputs"] and not store.exists(f"{folder}/shards")
    assert store.read_json(f"{folder}/manifest.json") == manifest
    assert Catalog(store).missing_outputs(manifest) == []


def test_b32_key_fills_the_b32_columns(pool):
    store, written = pool
    manifest = export(store, embeddings_key="b32")
    first = manifest["outputs"]["metadata"][0]
    frame = pd.read_parquet(first["parquet"])
    assert frame["clip_l14_similarity_score"].isna().all() and frame["clip_b32_similarity_score"].notna().all()
    assert set(npz(first["npz"])) == {"b32_img", "b32_txt"}
    assert manifest["outputs"]["folder"] != export(store)["outputs"]["folder"]  # another config, another export
    with pytest.raises(InputError, match="embeddings_key: 'h14'"):
        ExportConfig(embeddings_key="h14")


def test_shards_in_datacomp_layout(pool):
    store, written = pool
    manifest = export(store, shards=True)
    folder = store.relative(manifest["outputs"]["folder"])
    expected = written["expected"]
    shards = manifest["outputs"]["shards"]
    assert [s["tar"] for s in shards] == [store.uri(f"{folder}/shards/{n:08d}.tar") for n in range(3)]
    for number, (shard, want) in enumerate(zip(shards, expected)):
        source, copy = os.stat(want["tar"]), os.stat(shard["tar"])
        assert (copy.st_ino, copy.st_dev) == (source.st_ino, source.st_dev)  # a hard link, no bytes copied
        stats = json.loads(open(shard["stats"]).read())
        assert shard["stats"].endswith(f"/shards/{number:08d}_stats.json")
        assert stats["successes"] == want["n_success"] == shard["n_success"]  # what DataComp's resharder reads
        assert stats["count"] == 12 and stats["failed_to_download"] == 1
        assert stats["status_dict"] == {"success": want["n_success"], "http 404": 1}
        table = pd.read_parquet(shard["parquet"])  # img2dataset's table of the shard, every row
        assert len(table) == 12 and set(table["uid"]) >= set(want["table"]["uid"])
    sizes = json.loads(open(manifest["outputs"]["sizes"]).read())
    assert sizes == {f"{n:08d}.tar": e["n_success"] for n, e in enumerate(expected)}
    # open_clip reads the sample count from sizes.json next to the shards
    tars = [s["tar"] for s in shards]
    assert get_dataset_size("::".join(tars)) == (sum(e["n_success"] for e in expected), 3)
    assert get_dataset_size(store.path(f"{folder}/shards/{{00000000..00000002}}.tar"))[0] == sum(sizes.values())
    assert training_data(manifest)[0] == tars and training_data(manifest)[2] == sum(sizes.values())
    assert Catalog(store).missing_outputs(manifest) == []


def test_imported_pool(tmp_path):
    store = Store(str(tmp_path / "store"))
    write_embedded_pool(store, pool="imported", imported=True)
    with pytest.raises(InputError, match="pool 'imported' has no webdataset shards.*shards=False"):
        export(store, pool="imported", shards=True)
    manifest = export(store, pool="imported")  # its metadata exports
    assert manifest["rows"]["shards"] == 3 and manifest["rows"]["exported"] == 30


def test_pool_without_embeddings(tmp_path):
    store = Store(str(tmp_path / "store"))
    write_embedded_pool(store)
    store.remove(Catalog.latest_runs_pointer("test"))
    with pytest.raises(InputError, match="pool 'test' has no embeddings"):
        export(store)


def test_killed_export_redoes_only_unfinished_shards(pool):
    store, _ = pool
    first = export(store, shards=True)
    folder = store.relative(first["outputs"]["folder"])
    store.remove(f"{folder}/manifest.json")
    store.remove(f"{folder}/metadata/00000001.parquet")  # a shard killed before its marker
    before = {p: store.local_path(p).stat().st_mtime_ns for p in store.list(f"{folder}/metadata", "*")}
    again = export(store, shards=True)
    after = {p: store.local_path(p).stat().st_mtime_ns for p in store.list(f"{folder}/metadata", "*")}
    assert {p: t for p, t in after.items() if "00000001" not in p} == \
        {p: t for p, t in before.items() if "00000001" not in p}
    assert store.exists(f"{folder}/metadata/00000001.parquet")
    assert {k: v for k, v in again.items() if k not in ("created_at",)} == \
        {k: v for k, v in first.items() if k not in ("created_at",)}


def test_copy_on_s3_is_server_side(s3_bucket):
    store = Store(s3_bucket + "/store")
    store.write_bytes("a/x.tar", b"tar bytes")
    _copy_in_store(store, "a/x.tar", "b/00000000.tar")
    assert store.read_bytes("b/00000000.tar") == b"tar bytes"
