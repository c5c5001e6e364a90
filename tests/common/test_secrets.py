"""Credentials never stay where options are recorded.

- :mod:`tasks.common.secrets` on its own: every secret-looking option is named (never its value),
  nested ones included; :func:`redact` hides secret values and URL passwords.
- A flow given secrets in ``storage_options`` fails with one InputError naming them, and the values
  it was given are gone from its recorded parameters and never in its logs.
- A pool_refresh run on S3 with credentials from a Prefect Secret block (the path with the most
  places to leak: the resolved credentials travel in memory with the Store and the result-storage
  block): no secret value in any file under the bucket, in the flow run's parameters or logs read
  back from the API, or in its artifacts. (Credentials from the environment are never read into
  options at all.)
"""

from __future__ import annotations

import json
import uuid

import pytest

from tasks.common.errors import InputError
from tasks.common.secrets import REDACTED, redact, refuse_secret_options, secret_option_names
from tasks.common.store import Store
from tests_support import FAST_DOWNLOAD


def test_every_secret_looking_option_is_named_never_its_value():
    options = {"endpoint_url": "http://127.0.0.1:9000", "credentials_block": "s3-creds", "key": "AKIA-1",
               "client_kwargs": {"region_name": "us-east-1", "aws_secret_access_key": "S-2",
                                 "aws_session_token": "T-3"},
               "config_kwargs": {"s3": {"sas_token": "T-4"}}, "anon": False, "token": None}
    assert secret_option_names(options) == ["key", "client_kwargs.aws_secret_access_key",
                                            "client_kwargs.aws_session_token", "config_kwargs.s3.sas_token"]
    with pytest.raises(InputError) as refused:
        refuse_secret_options(options)
    message = str(refused.value)
    assert message.startswith("storage_options 'key', 'client_kwargs.aws_secret_access_key', "
                              "'client_kwargs.aws_session_token', 'config_kwargs.s3.sas_token': credentials")
    assert "AWS_SECRET_ACCESS_KEY" in message and "credentials_block" in message and "Refused option names" in message
    assert not any(value in message for value in ("AKIA-1", "S-2", "T-3", "T-4"))
    refuse_secret_options({"endpoint_url": "http://x", "credentials_block": "c", "client_kwargs": {"verify": False}})


def test_redact_hides_secret_values_and_url_passwords():
    value = {"storage_options": {"key": "AKIA-1", "endpoint_url": "http://u:p4ss@minio:9000/x",
                                 "client_kwargs": {"aws_secret_access_key": "S-2", "region_name": "r"}},
             "pool_index": "https://user:tok3n@host/index.parquet", "list": [{"password": "pw"}, "s3://b/a@b"],
             "n": 3, "credentials_block": "c"}
    assert redact(value) == {
        "storage_options": {"key": REDACTED, "endpoint_url": f"http://u:{REDACTED}@minio:9000/x",
                            "client_kwargs": {"aws_secret_access_key": REDACTED, "region_name": "r"}},
        "pool_index": f"https://user:{REDACTED}@host/index.parquet", "list": [{"password": REDACTED}, "s3://b/a@b"],
        "n": 3, "credentials_block": "c"}
    assert value["storage_options"]["key"] == "AKIA-1"  # a copy


def _kept_by_prefect(flow_run_id) -> dict[str, str]:
    """The flow run's parameters, logs and artifacts, as Prefect's API gives them back, as text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, LogFilter,
                                                LogFilterFlowRunId)

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {"parameters": json.dumps(run.parameters, default=str),
            "state": str(run.state.message if run.state else ""),
            "logs": "\n".join(log.message for log in logs),
            "artifacts": json.dumps([a.model_dump(mode="json") for a in artifacts])}


def test_a_flow_given_secrets_fails_naming_them_and_keeps_none(prefect_harness, tmp_path):
    from flows.pool_refresh import pool_refresh

    key, secret = f"AKIA{uuid.uuid4().hex[:16]}", f"s-{uuid.uuid4().hex}"
    state = pool_refresh(pool_index=str(tmp_path / "index.parquet"), store="s3://bucket/x", return_state=True,
                         storage_options={"endpoint_url": "http://127.0.0.1:9",
                                          "key": key, "client_kwargs": {"aws_secret_access_key": secret}})
    assert state.is_failed()
    with pytest.raises(InputError, match="storage_options 'key', 'client_kwargs.aws_secret_access_key': credentials"):
        state.result()
    kept = _kept_by_prefect(state.state_details.flow_run_id)
    for where, text in kept.items():
        assert key not in text and secret not in text, f"a secret value is in the flow run's {where}"
    recorded = json.loads(kept["parameters"])["storage_options"]
    assert recorded == {"endpoint_url": "http://127.0.0.1:9", "key": REDACTED,
                        "client_kwargs": {"aws_secret_access_key": REDACTED}}


def _tiny_index(small_web, web_server, path) -> str:
    from tasks.demo_pool.generate import pool_index_for

    pool_index_for(small_web, web_server.base_url).head(30).to_parquet(path, index=False)
    return str(path)


def _assert_nowhere(secrets: list[str], store: Store, flow_run_id) -> None:
    files = [path for path in store.fs.find(store.path()) if not path.endswith("/")]
    assert files, "the run wrote nothing to the store"
    for path in files:
        data = store.fs.cat_file(path)
        assert not any(secret.encode() in data for secret in secrets), f"a secret value is in {path}"
    for where, text in _kept_by_prefect(flow_run_id).items():
        assert not any(secret in text for secret in secrets), f"a secret value is in the flow run's {where}"


@pytest.mark.slow
def test_credentials_from_a_secret_block_stay_out_of_files_parameters_logs_and_artifacts(
        s3_secret_store, small_web, web_server, tmp_path):
    from flows.pool_refresh import pool_refresh

    root, options = f"{s3_secret_store['root']}/store", s3_secret_store["storage_options"]
    state = pool_refresh(pool_index=_tiny_index(small_web, web_server, tmp_path / "index.parquet"), store=root,
                         pool_name="sec", storage_options=options, return_state=True, **FAST_DOWNLOAD)
    assert state.result()["rows"]["success"] > 0
    _assert_nowhere(list(s3_secret_store["credentials"].values()), Store(s3_secret_store["root"], options),
                    state.state_details.flow_run_id)
