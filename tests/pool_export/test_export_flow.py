"""The export_pool flow: tasks on Dask, a rerun is a cache hit, a deleted file is rewritten, the CLI."""

from __future__ import annotations

import json

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from export_support import write_embedded_pool
from flows.export_pool import export_pool, main
from tasks.common.errors import InputError
from tasks.common.store import Store


def task_states(state) -> dict[str, list[str]]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[state.state_details.flow_run_id])))
    found: dict[str, list[str]] = {}
    for run in runs:
        found.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name)
    return found


def test_flow_caches_and_repairs(prefect_harness, tmp_path):
    store = Store(str(tmp_path / "store"))
    write_embedded_pool(store)
    first = export_pool(store=store.root, pool_name="test", shards=True, return_state=True)
    manifest = first.result()
    assert manifest["rows"]["shards"] == 3 and manifest["config"] == {"embeddings_key": "l14", "shards": True}
    assert task_states(first)["export_shard"] == ["Completed"] * 3
    again = export_pool(store=store.root, pool_name="test", shards=True, return_state=True)
    assert again.result()["content_hash"] == manifest["content_hash"]
    states = task_states(again)
    assert states["export_shard"] == ["Cached"] * 3 and states["publish_export"] == ["Cached"]
    # a file lost from the store: that shard runs again, nothing else (the manifest stays valid: its
    # outputs are all back by the time its task's cache key is checked)
    folder = store.relative(manifest["outputs"]["folder"])
    store.remove(f"{folder}/metadata/00000002.npz")
    repaired = export_pool(store=store.root, pool_name="test", shards=True, return_state=True)
    states = task_states(repaired)
    assert sorted(states["export_shard"]) == ["Cached", "Cached", "Completed"]
    assert states["publish_export"] == ["Cached"]
    assert store.exists(f"{folder}/metadata/00000002.npz")
    assert repaired.result()["content_hash"] == manifest["content_hash"]


def test_flow_bad_input_and_cli(prefect_harness, tmp_path, capsys):
    store = Store(str(tmp_path / "store"))
    with pytest.raises(InputError, match="embeddings_key"):
        export_pool(store=store.root, pool_name="test", embeddings_key="vit")
    with pytest.raises(InputError, match="no pool 'test'"):
        export_pool(store=store.root, pool_name="test")
    write_embedded_pool(store, imported=True)
    with pytest.raises(InputError, match="pool 'test' has no webdataset shards"):
        export_pool(store=store.root, pool_name="test", shards=True)
    main(["--store", store.root, "--pool-name", "test", "--embeddings-key", "b32"])
    out = capsys.readouterr().out
    printed = json.loads(out[out.index('{\n  "folder"'):])
    assert printed["rows"]["exported"] == 30 and printed["not_exported"] == {"undecodable": 3}
    assert "/exports/test/" in printed["folder"]
