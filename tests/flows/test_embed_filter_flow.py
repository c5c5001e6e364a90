"""embed_filter (and pool_refresh with an embedder) end to end on the small demo pool, against its truth."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from prefect.settings import PREFECT_API_URL

from flow_support import FAST_DOWNLOAD, task_run_states
from flows.curate import curate
from flows.embed_filter import run_embed_filter
from tasks.cluster.tree import load_tree
from flows.pool_refresh import pool_refresh
from tasks.common.catalog import Catalog
from tasks.common.errors import InputError
from tasks.common.store import Store
from tasks.demo_pool.eval_sets import generate_eval_sets
from tasks.demo_pool.filter_truth import filter_precision_recall
from tests_support import SMALL_POOL

# The barely trained test model puts all images in a narrow cone: only copies reach this cosine.
FILTERS = {"min_image_side": 48, "clip_score_top_fraction": 0.9, "semdedup_threshold": 0.99999}


@pytest.fixture(scope="module")
def tasklist(tmp_path_factory):
    # the small pool leaks classification images 0-2 of its 20 concepts
    return generate_eval_sets(tmp_path_factory.mktemp("sets"), seed=SMALL_POOL.seed, n_concepts=20, per_class=3,
                              per_concept_retrieval=1)


@pytest.fixture(scope="module")
def filtered(small_pool, small_index, web_server, tiny_checkpoint, tasklist):
    filters = {**FILTERS, "eval_tasklist": tasklist}
    state = pool_refresh(pool_index=str(small_index), store=str(small_pool["store"]), pool_name="e2e",
                         embedder={"model": "Tiny-ViT-48px", "checkpoint": tiny_checkpoint, "batch_size": 64},
                         filters=filters, return_state=True, **FAST_DOWNLOAD)
    return state, state.result()


def _decisions(manifest):
    return pd.concat([pd.read_parquet(uri) for uri in manifest["outputs"]["decisions"].values()], ignore_index=True)


def test_filters_find_what_was_planted(filtered, small_truth, small_pool):
    _, out = filtered
    assert out["rows"] == small_pool["manifest"]["rows"]  # the download part is the same pool
    decisions = _decisions(out["filters"])
    assert len(decisions) == out["rows"]["success"] == out["filters"]["rows"]["samples"]
    checks = {row["check"]: row for row in filter_precision_recall(decisions, small_truth)}
    for check in ("too small images", "extreme aspect ratios", "unsafe caption terms", "exact duplicates"):
        assert checks[check]["precision"] == 1.0 and checks[check]["recall"] == 1.0, checks[check]
    assert checks["non-English captions"]["recall"] >= 0.8
    assert checks["near duplicates without crops"]["recall"] >= 0.9
    assert checks["leaked evaluation images"]["recall"] == 1.0
    # SemDeDup with a barely trained model: its near-copy precision varies from run to run, but an
    # exact copy has the same embedding as its original, so one of every such pair must go
    frame = decisions.merge(small_truth[["uid", "dup_kind", "dup_of"]], on="uid")
    removed = set(frame.loc[~frame["keep_semdedup"], "uid"])
    exact = frame[(frame["dup_kind"] == "exact") & frame["dup_of"].isin(set(frame["uid"]))]
    assert len(exact) > 0
    assert all(copy in removed or original in removed for copy, original in zip(exact["uid"], exact["dup_of"]))
    assert decisions["keep"].sum() == out["filters"]["rows"]["kept"]
    assert (decisions["keep"] == decisions[[c for c in decisions if c.startswith("keep_")]].all(axis=1)).all()


def test_report_manifests_and_alignment(filtered, small_pool):
    _, out = filtered
    store = Store(str(small_pool["store"]))
    report = store.read_json(out["filters"]["outputs"]["report"][len(store.root) + 1:])
    assert report["skipped"] == {"nsfw_image": "no nsfw_image_head configured: image NSFW was NOT checked"}
    assert set(report["removed_by"]) == {"basic", "nsfw_text", "eval_dedup", "exact_dedup", "phash_dedup",
                                         "semdedup", "clip_score", "embed"}
    assert report["overlap"]["basic"]["basic"] == report["removed_by"]["basic"]
    assert store.read_bytes(out["filters"]["outputs"]["plot"][len(store.root) + 1:]).startswith(b"\x89PNG")
    decisions = out["filters"]["outputs"]["decisions"]
    pool_shards = [s["shard_id"] for s in small_pool["manifest"]["outputs"]["shards"] if s["n_success"] > 0]
    assert [shard["shard_id"] for shard in out["embeddings"]["outputs"]["shards"]] == pool_shards == list(decisions)
    for shard in out["embeddings"]["outputs"]["shards"]:  # joined on shard ids, row-aligned
        assert pd.read_parquet(shard["parquet"])["uid"].tolist() == \
            pd.read_parquet(decisions[shard["shard_id"]])["uid"].tolist()
    snapshot = Catalog(store).snapshot("e2e")
    assert snapshot.filters.manifest == out["filters"] and snapshot.embeddings.manifest == out["embeddings"]
    for stage in ("embeddings", "filters"):  # every stage's manifest is written in its folder, last
        folder = store.relative(out[stage]["outputs"]["folder"])
        assert store.read_json(f"{folder}/manifest.json") == out[stage]
        assert Catalog(store).missing_outputs(out[stage]) == []


def test_second_run_embeds_nothing(filtered, small_pool, tiny_checkpoint, tasklist):
    state, out = filtered
    again = run_embed_filter(str(small_pool["store"]), "e2e",
                             {"model": "Tiny-ViT-48px", "checkpoint": tiny_checkpoint, "batch_size": 64},
                             {**FILTERS, "eval_tasklist": tasklist})
    assert again["filters"]["content_hash"] == out["filters"]["content_hash"]


def test_curate_clusters_the_filtered_pool(filtered, small_pool, tiny_checkpoint):
    # with this weak model the eval-set dedup at its default threshold removes nearly everything:
    # cluster what the other filters keep
    out = run_embed_filter(str(small_pool["store"]), "e2e",
                           {"model": "Tiny-ViT-48px", "checkpoint": tiny_checkpoint, "batch_size": 64}, FILTERS)
    assert out["filters"]["rows"]["kept"] > 100
    state = curate(store=str(small_pool["store"]), pool_name="e2e", return_state=True,
                   clustering={"levels": [20, {"k": 5, "resampling_steps": 2}], "engine": "dask"})
    tree = state.result()["tree"]
    assert [level["k"] for level in tree["stats"]["levels"]] == [20, 5]
    assert tree["rows"]["samples"] == out["filters"]["rows"]["kept"]
    assert tree["inputs"]["filters"] == out["filters"]["content_hash"]
    assert tree["stats"]["levels"][1]["samples_per_cluster"]["mean"] * 5 == pytest.approx(tree["rows"]["samples"])
    store = Store(str(small_pool["store"]))
    levels = load_tree(store, store.relative(tree["outputs"]["folder"]))
    assert len(levels[0].labels) == tree["rows"]["samples"]
    assert task_run_states(state.state_details.flow_run_id)["cluster_pool"] == ["Completed"]
    again = curate(store=str(small_pool["store"]), pool_name="e2e", return_state=True,
                   clustering={"levels": [20, {"k": 5, "resampling_steps": 2}], "engine": "dask"})
    assert task_run_states(again.state_details.flow_run_id)["cluster_pool"] == ["Cached"]


def test_killed_embedding_resumes_per_shard(small_pool, tiny_checkpoint, tmp_path):
    store = Store(str(small_pool["store"]))
    args = [sys.executable, "-m", "flows.embed_filter", "--store", store.root, "--pool-name", "e2e", "--model",
            "Tiny-ViT-48px", "--checkpoint", tiny_checkpoint, "--caption-model", "minilm"]
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
    process = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    folder = None
    while True:
        done = [p for p in store.list("embeddings/e2e", "*/*.parquet")] if store.exists("embeddings/e2e") else []
        done = [p for p in done if not p.endswith("manifest.json")]
        captioned = [p for p in done if store.exists(p.replace(".parquet", ".cap.npy"))]
        if captioned:
            folder = captioned[0].rsplit("/", 1)[0]
            break
        assert process.poll() is None and time.monotonic() < deadline, "embedding never started"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    time.sleep(2)
    finished = {p: store.local_path(p).stat().st_mtime_ns for p in store.list(folder, "*.parquet")}
    assert 0 < len(finished) < len(small_pool["manifest"]["outputs"]["shards"])
    out = run_embed_filter(store.root, "e2e", {"model": "Tiny-ViT-48px", "checkpoint": tiny_checkpoint,
                                               "caption_model": "minilm"})
    assert {p: store.local_path(p).stat().st_mtime_ns for p in finished} == finished  # not redone
    assert len(out["embeddings"]["outputs"]["shards"]) == len(small_pool["manifest"]["outputs"]["shards"])
    assert out["embeddings"]["rows"]["embedded"] == small_pool["manifest"]["rows"]["success"]


def test_bad_inputs(small_pool, tiny_checkpoint):
    store = str(small_pool["store"])
    with pytest.raises(InputError, match="pool_name: no pool 'nopool'"):
        run_embed_filter(store, "nopool", {"model": "Tiny-ViT-48px", "checkpoint": tiny_checkpoint})
    with pytest.raises(InputError, match="unknown setting"):
        run_embed_filter(store, "e2e", {"model": "Tiny-ViT-48px", "checkpoint": tiny_checkpoint}, {"minimum": 3})
    with pytest.raises(InputError, match="embedder checkpoint /nowhere.pt: no such file"):
        run_embed_filter(store, "e2e", {"model": "Tiny-ViT-48px", "checkpoint": "/nowhere.pt"})
    with pytest.raises(InputError, match="embedder model 'No-Model'"):
        run_embed_filter(store, "e2e", {"model": "No-Model", "checkpoint": tiny_checkpoint})
    with pytest.raises(InputError, match="eval_tasklist /nowhere.yml: no such file"):
        run_embed_filter(store, "e2e", {"model": "Tiny-ViT-48px", "checkpoint": tiny_checkpoint},
                         {"eval_tasklist": "/nowhere.yml"})
