"""pool_refresh end to end under Prefect's test harness, on the loopback demo pool."""

import json

import pandas as pd
import pytest
from prefect.artifacts import Artifact

from flow_support import FAST_DOWNLOAD, shard_metadata, shard_samples, task_run_states
from flows.pool_refresh import pool_refresh
from tasks.common.catalog import Catalog
from tasks.common.prefect_support import artifact_key
from tasks.common.store import Store

PLANTED = {"failed_to_download": ("http_404", "timeout", "truncated"), "failed_to_resize": ("not_an_image",)}


@pytest.fixture(scope="module")
def first_run(small_pool):
    return small_pool


def _check_against_truth(manifest, truth):
    expected = truth.set_index("uid")
    assert manifest["rows"]["input"] == len(truth)
    assert manifest["rows"]["success"] == (truth["expected_status"] == "success").sum()
    for status, failures in PLANTED.items():
        assert manifest["rows"][status] == truth["url_failure"].isin(failures).sum()
        for failure in failures:
            assert manifest["stats"]["reason_counts"][status][failure] == (truth["url_failure"] == failure).sum()
    samples = shard_samples(manifest)
    assert samples["uid"].is_unique
    assert set(samples["uid"]) == set(truth.loc[truth["expected_status"] == "success", "uid"])
    meta = shard_metadata(manifest).set_index("uid")
    assert meta.index.is_unique and len(meta) == len(truth)
    assert (meta.loc[expected.index, "status"] == expected["expected_status"]).all()
    return samples


def test_counts_match_what_was_planted(first_run, small_truth, small_index):
    samples = _check_against_truth(first_run["manifest"], small_truth)
    index = pd.read_parquet(small_index).set_index("uid")
    # images are below image_size and not re-encoded: the stored bytes are the served bytes
    assert (samples.set_index("uid")["sha256"] == index.loc[samples["uid"], "sha256"]).all()
    assert first_run["requests"] == len(small_truth)


def test_manifest_report_and_artifact(first_run):
    manifest = first_run["manifest"]
    store = Store(str(first_run["store"]))
    # the same content (a later pool_refresh of this pool may have rewritten it with a new created_at)
    assert store.read_json("pools/e2e/manifest.json")["content_hash"] == manifest["content_hash"]
    assert store.exists(f"pools/e2e/manifests/{manifest['content_hash'][:16]}.json")
    report = store.read_json("pools/e2e/download_report.json")
    assert report["status_counts"] == {k: manifest["rows"][k] for k in report["status_counts"]}
    assert len(manifest["outputs"]["slices"]) == 2 and len(manifest["outputs"]["shards"]) == 6
    assert not store.exists("_staging") or not store.list("_staging/pools/e2e/slices")
    # every slice folder says how many samples each of its tars holds, as open_clip reads it
    for shard in manifest["outputs"]["shards"]:
        folder, name = store.relative(shard["tar"]).rsplit("/", 1)
        assert store.read_json(f"{folder}/sizes.json")[name] == shard["n_success"]
    artifact = Artifact.get(artifact_key(store, "e2e", "download"))
    assert artifact is not None and artifact.type == "table"
    rows = {(r["status"], r["reason"]): r["count"] for r in json.loads(artifact.data)}
    assert rows[("success", "(all)")] == manifest["rows"]["success"]
    assert rows[("failed_to_resize", "not_an_image")] == manifest["stats"]["reason_counts"]["failed_to_resize"]["not_an_image"]


def test_second_run_executes_no_download_task(first_run, small_index, web_server):
    before = sum(web_server.requests.values())
    state = pool_refresh(pool_index=str(small_index), store=str(first_run["store"]), pool_name="e2e",
                         return_state=True, **FAST_DOWNLOAD)
    states = task_run_states(state.state_details.flow_run_id)
    assert states["download_slice"] == ["Cached", "Cached"]
    assert sum(web_server.requests.values()) == before
    assert state.result()["content_hash"] == first_run["manifest"]["content_hash"]


def test_parallelism_does_not_change_the_cache_key(first_run, small_index, web_server):
    before = sum(web_server.requests.values())
    options = dict(FAST_DOWNLOAD, processes=2, processes_per_slice=2, threads=4)
    pool_refresh(pool_index=str(small_index), store=str(first_run["store"]), pool_name="e2e", **options)
    assert sum(web_server.requests.values()) == before


def test_index_and_store_on_s3(prefect_harness, s3_bucket, small_index, small_truth):
    index_uri = f"{s3_bucket}/index/pool.parquet"
    pd.read_parquet(small_index).to_parquet(index_uri)
    manifest = pool_refresh(pool_index=f"{s3_bucket}/index", store=f"{s3_bucket}/store", pool_name="ons3",
                            **FAST_DOWNLOAD)
    assert manifest["store"] == f"{s3_bucket}/store"
    assert all(shard["tar"].startswith(f"{s3_bucket}/store/pools/ons3/slices/") for shard in manifest["outputs"]["shards"])
    _check_against_truth(manifest, small_truth)
    store = Store(f"{s3_bucket}/store")
    assert store.read_json("pools/ons3/manifest.json")["content_hash"] == manifest["content_hash"]
    assert store.list("_prefect/results")  # the cache records live in the store too


def test_deleted_output_of_a_cached_slice_is_downloaded_again(first_run, small_index, web_server):
    """A slice whose tar was deleted by hand is not a cache hit: it is downloaded again, and the pool is whole."""
    store = Store(str(first_run["store"]))
    victim = first_run["manifest"]["outputs"]["shards"][0]
    store.remove(store.relative(victim["tar"]))
    before = sum(web_server.requests.values())
    state = pool_refresh(pool_index=str(small_index), store=str(first_run["store"]), pool_name="e2e",
                         return_state=True, **FAST_DOWNLOAD)
    states = task_run_states(state.state_details.flow_run_id)
    assert sorted(states["download_slice"]) == ["Cached", "Completed"]  # only the damaged slice ran
    assert sum(web_server.requests.values()) > before
    manifest = state.result()
    assert store.exists(store.relative(victim["tar"]))
    assert Catalog(store).missing_outputs(manifest) == []
    assert {s["shard_id"] for s in manifest["outputs"]["shards"]} == \
        {s["shard_id"] for s in first_run["manifest"]["outputs"]["shards"]}
