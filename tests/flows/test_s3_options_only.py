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
from flows.pool_refresh import pool_refresh
from tasks.common.store import Store


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
