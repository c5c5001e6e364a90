"""Prefect's result storage for an S3 store whose credentials are in a Secret block: the saved
block holds no secret, and a copy loaded from the API (as Prefect loads it to read a result by
its block id) reaches the store through the Secret."""

import json
import os

from prefect import flow, task
from prefect.client.orchestration import get_client

from tasks.common.prefect_support import StoreResults, cached_in_store, result_storage_for
from tasks.common.store import Store


def test_saved_result_storage_holds_no_secret_and_works_when_loaded(s3_secret_store):
    store = Store(f"{s3_secret_store['root']}/store", s3_secret_store["storage_options"])
    block = result_storage_for(store)
    block.write_path("some-key", b"a result")
    with get_client(sync_client=True) as client:
        saved = client.read_block_document(block._block_document_id, include_secrets=True)
    assert saved.data == {"basepath": store.uri("_prefect/results"), "settings": s3_secret_store["storage_options"]}
    assert not any(secret in json.dumps(saved.data) for secret in s3_secret_store["credentials"].values())
    loaded = StoreResults.load(saved.name)
    assert loaded.read_path("some-key") == b"a result"
    assert store.read_bytes("_prefect/results/some-key") == b"a result"


def test_local_store_results_are_a_folder(tmp_path):
    assert result_storage_for(Store(str(tmp_path))) == tmp_path / "_prefect" / "results"


@task(persist_result=True, cache_key_fn=lambda context, parameters: f"read-{parameters['rel']}")
def _read_on_a_worker(store: Store, rel: str) -> dict:
    return {"text": store.read_bytes(rel).decode(), "pid": os.getpid()}


def test_cached_task_on_a_dask_worker(s3_secret_store):
    """A task on a Dask worker (no AWS variables, no credentials but the pickled Store's) persists its
    result in the S3 store; a later flow run gets it back as a cache hit."""
    from prefect_dask import DaskTaskRunner

    store = Store(f"{s3_secret_store['root']}/store", s3_secret_store["storage_options"])
    store.write_bytes("input.txt", b"hello")
    runner = DaskTaskRunner(cluster_class="distributed.LocalCluster",
                            cluster_kwargs={"n_workers": 1, "threads_per_worker": 1, "processes": True,
                                            "dashboard_address": None})

    first = _run(store, runner)
    second = _run(store, runner)
    assert first[0]["text"] == "hello" and first[0]["pid"] != os.getpid()
    assert second[1] == "Cached" and second[0] == first[0]
    assert store.list("_prefect/results") == ["_prefect/results/read-input.txt"]


def _run(store: Store, runner) -> tuple[dict, str]:
    @flow(task_runner=runner)
    def read_it() -> tuple[dict, str]:
        future = cached_in_store(_read_on_a_worker, store).submit(store, "input.txt")
        future.wait()
        return future.result(), future.state.name

    return read_it()
