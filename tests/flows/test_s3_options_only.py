"""Flows on an S3 store reached only through options: the endpoint as a storage option, the
credentials in a Prefect Secret block, nothing in the environment (fixture ``s3_secret_store``).

Each flow must succeed, and neither secret value may appear in what Prefect keeps: the flow run's
parameters, any saved block document (but the Secret itself) or the run's logs.
"""

import json

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from flow_support import FAST_DOWNLOAD, task_run_states
from flows.curate import curate
from flows.pool_refresh import pool_refresh
from flows.train_eval import train_eval
from tasks.common.catalog import Catalog
from tasks.common.store import Store
from tasks.demo_pool.eval_sets import generate_eval_sets


def assert_no_secret_kept(flow_run_id, s3_secret_store):
    """Neither secret value in the flow run's parameters, in a saved block (but the Secret) or in the logs."""
    secrets = list(s3_secret_store["credentials"].values())
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        blocks = [b for b in client.read_block_documents(include_secrets=True) if b.name != s3_secret_store["block"]]
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    assert run.parameters["storage_options"] == s3_secret_store["storage_options"]
    kept = {"parameters": json.dumps(run.parameters, default=str),
            "blocks": json.dumps([b.model_dump(mode="json") for b in blocks]),
            "logs": "\n".join(log.message for log in logs)}
    for where, text in kept.items():
        assert not any(secret in text for secret in secrets), f"a secret value is in the {where}"


@pytest.mark.slow
def test_pool_refresh(s3_secret_store, small_index):
    root, options = s3_secret_store["root"], s3_secret_store["storage_options"]
    kwargs = dict(pool_index=str(small_index), store=f"{root}/store", pool_name="secret", storage_options=options,
                  **FAST_DOWNLOAD)
    state = pool_refresh(**kwargs, return_state=True)
    manifest = state.result()
    assert manifest["rows"]["success"] > 0
    store = Store(f"{root}/store", options)
    assert store.read_json("pools/secret/manifest.json")["content_hash"] == manifest["content_hash"]
    assert store.list("_prefect/results")  # results and cache records in the store, through the Secret's credentials
    assert_no_secret_kept(state.state_details.flow_run_id, s3_secret_store)

    again = pool_refresh(**kwargs, return_state=True)  # a new flow run finds the cache records
    assert set(task_run_states(again.state_details.flow_run_id)["download_slice"]) == {"Cached"}
    assert again.result()["content_hash"] == manifest["content_hash"]
    assert_no_secret_kept(again.state_details.flow_run_id, s3_secret_store)


@pytest.mark.slow
def test_every_flow_after_the_download(s3_secret_store, small_index, tiny_checkpoint, tmp_path):
    """embed_filter (through pool_refresh), curate (tree, MetaCLIP and balanced subsets resharded) and
    train_eval, all on the S3 store configured by options only; every stage's outputs in the store."""
    root, options = s3_secret_store["root"], s3_secret_store["storage_options"]
    store = f"{root}/store"
    refreshed = pool_refresh(pool_index=str(small_index), store=store, pool_name="all", storage_options=options,
                             embedder={"model": "Tiny-ViT-48px", "checkpoint": tiny_checkpoint, "batch_size": 64},
                             filters={"min_image_side": 48, "clip_score_top_fraction": 0.9}, return_state=True,
                             **FAST_DOWNLOAD)
    out = refreshed.result()
    assert out["filters"]["rows"]["kept"] > 50
    curated = curate(store=store, pool_name="all", storage_options=options, return_state=True,
                     clustering={"levels": [10, {"k": 3, "resampling_steps": 1}], "engine": "dask"},
                     subsets={"balanced": [{"step": "filters"}, {"step": "hkmeans", "target": 40}],
                              "metaclip": {"recipe": [{"step": "metaclip", "target": 40}],
                                           "ngrams": {"min_unigram_count": 10}, "reshard": False}})
    subsets = curated.result()["subsets"]
    tasklist = generate_eval_sets(tmp_path / "sets", seed=3, n_concepts=20, per_class=1, per_concept_retrieval=1)
    trained = train_eval(store=store, data=subsets["balanced"]["outputs"]["folder"], tasklist=tasklist,
                         overrides={"samples_seen": 128, "batch_size": 64, "checkpoint_steps": 1, "warmup": 1},
                         run_name="secret", storage_options=options, return_state=True)
    result = trained.result()
    assert result["train"]["rows"]["train_samples"] == 40 and len(result["eval"]["tasks"]) == 2
    catalog = Catalog(Store(store, options))
    for manifest in (out["embeddings"], out["filters"], curated.result()["tree"], *subsets.values(),
                     result["train"], result["evaluation"]):
        assert catalog.missing_outputs(manifest) == [], manifest["stage"]
    for state in (refreshed, curated, trained):
        assert_no_secret_kept(state.state_details.flow_run_id, s3_secret_store)
