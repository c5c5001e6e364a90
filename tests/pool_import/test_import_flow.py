"""import_pool end to end: both formats, the snapshot, filters with pHash skipped, caching, resume, S3, curate."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flows"))

from flow_support import task_run_states  # noqa: E402
from synthetic_sources import CONCEPT_WORDS, make_clip_retrieval_pool, make_datacomp_pool  # noqa: E402

from flows.curate import curate  # noqa: E402
from flows.import_pool import import_pool  # noqa: E402
from tasks.common.catalog import Catalog  # noqa: E402
from tasks.common.store import Store  # noqa: E402

FILTERS = {"min_image_side": 48, "clip_score_top_fraction": 0.9, "semdedup_threshold": 0.999}
PHASH_WHY = "needs image bytes; the pool was imported from {} metadata"


def _decisions(manifest: dict) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(uri) for uri in manifest["outputs"]["decisions"].values()], ignore_index=True)


@pytest.fixture(scope="module")
def datacomp(prefect_harness, tmp_path_factory):
    root = tmp_path_factory.mktemp("datacomp")
    make_datacomp_pool(str(root / "source"), shards=3, rows_per_shard=80, seed=3, dim_l14=16, dim_b32=8,
                       exact_duplicates=0.05)
    rng = np.random.default_rng(0)
    head = root / "nsfw_head.npz"
    np.savez(head, weights=rng.normal(size=16).astype(np.float32), bias=np.float32(-3.0))
    filters = {**FILTERS, "nsfw_image_head": str(head)}
    state = import_pool(store=str(root / "store"), pool_name="dc", source=str(root / "source"), filters=filters,
                        return_state=True)
    return {"root": root, "store": Store(str(root / "store")), "state": state, "out": state.result(),
            "filters": filters}


def test_datacomp_import_is_a_filtered_pool(datacomp):
    out, store = datacomp["out"], datacomp["store"]
    snapshot = Catalog(store).snapshot("dc")
    assert snapshot.embeddings is not None and snapshot.filters is not None and not snapshot.stale
    assert snapshot.embeddings.content_hash == out["embeddings"]["content_hash"]
    assert snapshot.filters.content_hash == out["filters"]["content_hash"]
    assert not snapshot.embeddings.has_image_bytes and snapshot.pool.manifest["stage"] == "import"
    report = store.read_json(store.relative(out["filters"]["outputs"]["report"]))
    assert report["skipped"]["phash_dedup"] == PHASH_WHY.format("datacomp")
    assert "exact_dedup" in report["removed_by"] and report["removed_by"]["exact_dedup"] > 0  # sha256 copies planted
    assert {"basic", "nsfw_text", "nsfw_image", "semdedup", "clip_score"} <= set(report["removed_by"])
    assert "basic_size_rules" not in report["skipped"] and "phash_dedup" not in report["removed_by"]
    decisions = _decisions(out["filters"])
    source = pd.concat([pd.read_parquet(datacomp["root"] / f"source/{n:08d}.parquet") for n in range(3)],
                       ignore_index=True)
    assert decisions["uid"].tolist() == source["uid"].tolist()
    np.testing.assert_array_equal(decisions["clip_l14_score"], source["clip_l14_similarity_score"].astype(np.float32))
    np.testing.assert_array_equal(decisions["clip_b32_score"], source["clip_b32_similarity_score"].astype(np.float32))
    assert decisions["keep"].sum() == out["filters"]["rows"]["kept"] > 0


def test_rerun_is_cached_and_a_lost_shard_is_redone(datacomp):
    store, root = datacomp["store"], datacomp["root"]
    first = datacomp["out"]

    def run():
        state = import_pool(store=store.root, pool_name="dc", source=str(root / "source"), filters=datacomp["filters"],
                            return_state=True)
        return state, task_run_states(state.state_details.flow_run_id)

    state, states = run()
    for name in ("check_uids", "import_shard", "publish_import", "poolwide_filters"):
        assert set(states[name]) == {"Cached"}, (name, states[name])
    assert state.result()["filters"]["content_hash"] == first["filters"]["content_hash"]
    # a shard lost (as after a kill before its table was written): only it is imported again
    shards = first["embeddings"]["outputs"]["shards"]
    store.remove(store.relative(shards[1]["parquet"]))
    kept = store.local_path(store.relative(shards[0]["image_embeddings"])).stat().st_mtime_ns
    state, states = run()
    assert sorted(states["import_shard"]) == ["Cached", "Cached", "Completed"]
    assert store.local_path(store.relative(shards[0]["image_embeddings"])).stat().st_mtime_ns == kept
    assert state.result()["embeddings"]["content_hash"] == first["embeddings"]["content_hash"]


def test_curate_on_the_imported_pool(datacomp, tmp_path):
    store = datacomp["store"]
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps(list(CONCEPT_WORDS)))
    out = curate(store=store.root, pool_name="dc",
                 clustering={"levels": [12, {"k": 4, "resampling_steps": 2}], "engine": "dask"},
                 subsets={"meta": {"recipe": [{"step": "filters"}, {"step": "metaclip", "t": 5}],
                                   "metadata": str(metadata), "reshard": False},
                          "balanced": {"recipe": [{"step": "filters"}, {"step": "hkmeans", "target": 40}]}})
    assert out["tree"] is not None
    kept = set(_decisions(datacomp["out"]["filters"]).query("keep")["uid"])
    for name, expected in (("meta", None), ("balanced", 40)):
        table = pd.read_parquet(out["subsets"][name]["outputs"]["parquet"])
        assert len(table) > 0 and set(table["uid"]) <= kept, name
        if expected:
            assert len(table) == expected
    steps = out["subsets"]["meta"]["stats"]["steps"]
    assert steps[-1]["step"] == "metaclip"
    # no images to reshard: the subset file is the output, and the manifest says why there are no shards
    balanced = out["subsets"]["balanced"]
    assert "shards" not in balanced["outputs"] and "imported without images" in balanced["stats"]["reshard"]


def test_a_grown_source_imports_only_its_new_shards(prefect_harness, tmp_path):
    source, store = tmp_path / "source", Store(str(tmp_path / "store"))
    make_datacomp_pool(str(source), shards=2, rows_per_shard=30, seed=5, dim_l14=8, dim_b32=4)
    first = import_pool(store=store.root, pool_name="grow", source=str(source), filters={"min_image_side": 48})
    files = [store.local_path(store.relative(s["image_embeddings"])) for s in first["embeddings"]["outputs"]["shards"]]
    written = [f.stat().st_mtime_ns for f in files]
    extra = tmp_path / "extra"
    make_datacomp_pool(str(extra), shards=3, rows_per_shard=30, seed=6, dim_l14=8, dim_b32=4)
    for suffix in (".parquet", ".npz"):  # the new release's third shard (its uids differ from the first two's)
        (source / f"00000002{suffix}").write_bytes((extra / f"00000002{suffix}").read_bytes())
    state = import_pool(store=store.root, pool_name="grow", source=str(source), filters={"min_image_side": 48},
                        return_state=True)
    states = task_run_states(state.state_details.flow_run_id)
    assert sorted(states["import_shard"]) == ["Cached", "Cached", "Completed"]
    second = state.result()
    assert second["pool"]["rows"]["success"] == 90
    assert [f.stat().st_mtime_ns for f in files] == written  # the old shards' files were not written again
    assert second["embeddings"]["outputs"]["folder"] == first["embeddings"]["outputs"]["folder"]
    assert Catalog(store).snapshot("grow").filters.content_hash == second["filters"]["content_hash"]


def test_clip_retrieval_import_skips_what_its_metadata_lacks(prefect_harness, tmp_path):
    made = make_clip_retrieval_pool(str(tmp_path / "cr"), shards=2, rows_per_shard=60, seed=4, dim=12)
    out = import_pool(store=str(tmp_path / "store"), pool_name="cr", source=str(tmp_path / "cr"),
                      format="clip_retrieval", filters=FILTERS)
    store = Store(str(tmp_path / "store"))
    report = store.read_json(store.relative(out["filters"]["outputs"]["report"]))
    assert report["skipped"]["phash_dedup"] == PHASH_WHY.format("clip_retrieval")
    assert report["skipped"]["exact_dedup"].startswith("no sha256")
    assert report["skipped"]["basic_size_rules"].startswith(f"too_small and aspect_ratio not checked for "
                                                            f"{made['rows']} of {made['rows']}")
    decisions = _decisions(out["filters"])
    meta = pd.read_parquet(tmp_path / "cr/metadata/metadata_0.parquet")
    assert decisions["uid"].tolist()[:60] == [hashlib.md5(f"{u}\t{c}".encode()).hexdigest()
                                              for u, c in zip(meta["url"], meta["caption"])]
    assert not decisions["reason_basic"].str.contains("too_small|aspect_ratio").any()
    assert Catalog(store).snapshot("cr").filters is not None


def test_import_from_s3(prefect_harness, s3_bucket, tmp_path):
    make_datacomp_pool(f"{s3_bucket}/metadata", shards=2, rows_per_shard=30, seed=7, dim_l14=16, dim_b32=8)
    out = import_pool(store=str(tmp_path / "store"), pool_name="s3pool", source=f"{s3_bucket}/metadata",
                      embeddings="b32", filters={"min_image_side": 48})
    assert out["embeddings"]["config"]["source"] == f"{s3_bucket}/metadata"
    assert out["embeddings"]["config"]["embeddings"] == "b32" and out["pool"]["rows"]["success"] == 60
    assert np.load(out["embeddings"]["outputs"]["shards"][0]["image_embeddings"]).shape == (30, 8)


def test_importing_a_then_b_then_a_again_makes_a_the_pool(prefect_harness, tmp_path):
    """The embedding folder is shared by every source: publishing must follow the source, not the folder."""
    store = Store(str(tmp_path / "store"))
    for name, seed, rows in (("a", 11, 20), ("b", 12, 14)):
        make_datacomp_pool(str(tmp_path / name), shards=1, rows_per_shard=rows, seed=seed, dim_l14=8, dim_b32=4)
    outs = [import_pool(store=store.root, pool_name="ab", source=str(tmp_path / name), filters={"min_image_side": 48})
            for name in ("a", "b", "a")]
    assert [out["pool"]["rows"]["success"] for out in outs] == [20, 14, 20]
    snapshot = Catalog(store).snapshot("ab")
    assert not snapshot.stale and snapshot.pool.manifest["config"]["source"] == str(tmp_path / "a")
    assert snapshot.filters.content_hash == outs[2]["filters"]["content_hash"]
