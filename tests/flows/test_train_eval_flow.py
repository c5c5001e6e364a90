"""train_eval under Prefect's harness: local store, S3 store, cache hits, and a missing manifest."""

import pandas as pd
import pytest
from prefect.artifacts import Artifact

from flow_support import FAST_DOWNLOAD, task_run_states
from flows.pool_refresh import pool_refresh
from flows.train_eval import train_eval
from tasks.common.catalog import Catalog
from tasks.common.errors import InputError
from tasks.common.prefect_support import artifact_key
from tasks.common.store import Store
from tasks.demo_pool.eval_sets import generate_eval_sets

QUICK = {"samples_seen": 256, "batch_size": 64, "checkpoint_steps": 2, "warmup": 1}


@pytest.fixture(scope="module")
def tasklist(tmp_path_factory):
    return generate_eval_sets(tmp_path_factory.mktemp("sets"), seed=3, n_concepts=20, per_class=2,
                              per_concept_retrieval=1)


def test_train_then_evaluate_then_cache_hits(small_pool, tasklist):
    store = str(small_pool["store"])
    state = train_eval(store=store, data="pools/e2e/manifest.json", tasklist=tasklist, overrides=QUICK,
                       run_name="flow", return_state=True)
    out = state.result()
    assert out["train"]["rows"]["epochs"] == 2 and out["train"]["rows"]["samples_seen"] == 256
    assert [t["key"] for t in out["eval"]["tasks"]] == ["demo/concepts", "demo/retrieval"]
    evaluation = out["evaluation"]
    assert evaluation["inputs"]["training"] == out["train"]["content_hash"]
    the_store = Store(store)
    for manifest in (out["train"], evaluation):  # each stage's manifest is in its folder, its outputs present
        folder = the_store.relative(manifest["outputs"]["folder"])
        assert the_store.read_json(f"{folder}/manifest.json") == manifest
        assert Catalog(the_store).missing_outputs(manifest) == []
    assert the_store.exists(the_store.relative(evaluation["outputs"]["summary"]))
    artifact = Artifact.get(artifact_key(the_store, "flow", "evaluation"))
    assert artifact is not None and artifact.type == "table"

    again = train_eval(store=store, data="pools/e2e/manifest.json", tasklist=tasklist, overrides=QUICK,
                       run_name="flow", return_state=True)
    states = task_run_states(again.state_details.flow_run_id)
    assert states["train_clip"] == ["Cached"] and states["evaluate_checkpoint"] == ["Cached"]
    assert again.result()["eval"] == out["eval"]


def test_missing_manifest_is_a_clear_error(small_pool, tasklist):
    with pytest.raises(InputError, match="data: no manifest at 'pools/none/manifest.json'"):
        train_eval(store=str(small_pool["store"]), data="pools/none/manifest.json", tasklist=tasklist,
                   overrides=QUICK)


def test_on_s3_shards_and_checkpoints(prefect_harness, s3_bucket, small_index, tasklist):
    index = f"{s3_bucket}/index/pool.parquet"
    pd.read_parquet(small_index).to_parquet(index)
    store = f"{s3_bucket}/store"
    pool_refresh(pool_index=index, store=store, pool_name="ons3", **FAST_DOWNLOAD)
    out = train_eval(store=store, data="pools/ons3/manifest.json", tasklist=tasklist, overrides=QUICK,
                     run_name="s3")
    checkpoint = out["train"]["outputs"]["checkpoint"]
    assert checkpoint.startswith(f"{store}/train/s3-") and checkpoint.endswith("/checkpoints/epoch_2.pt")
    s3 = Store(store)
    folder = s3.relative(out["train"]["outputs"]["folder"])
    assert s3.list(f"{folder}/checkpoints") == [f"{folder}/checkpoints/epoch_1.pt", f"{folder}/checkpoints/epoch_2.pt"]
    assert s3.exists(f"{folder}/manifest.json") and len(out["eval"]["tasks"]) == 2


def test_bad_run_name_and_injected_shards_are_refused(small_pool, tasklist, tmp_path):
    store = str(small_pool["store"])
    with pytest.raises(InputError, match="run_name: '../../escaped'"):
        train_eval(store=store, data="pools/e2e", tasklist=tasklist, overrides=QUICK, run_name="../../escaped")
    assert not (small_pool["store"].parent / "escaped").exists()
