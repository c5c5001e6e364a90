"""Helpers for flow tests: read shards back, and ask Prefect what its task runs did."""

from __future__ import annotations

import json
import tarfile

import fsspec
import pandas as pd
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from tests_support import FAST_DOWNLOAD  # noqa: F401 - re-exported for the flow tests


def shard_samples(manifest: dict) -> pd.DataFrame:
    """uid, key and image sha256 of every sample inside the manifest's tar shards."""
    rows = []
    for shard in manifest["outputs"]["shards"]:
        with fsspec.open(shard["tar"], "rb") as handle, tarfile.open(fileobj=handle) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    meta = json.load(tar.extractfile(member))
                    rows.append({"uid": meta["uid"], "key": meta["key"], "sha256": meta["sha256"],
                                 "tar": shard["tar"]})
    return pd.DataFrame(rows)


def shard_metadata(manifest: dict) -> pd.DataFrame:
    frames = []
    for shard in manifest["outputs"]["shards"]:
        with fsspec.open(shard["parquet"], "rb") as handle:
            frames.append(pd.read_parquet(handle))
    return pd.concat(frames, ignore_index=True)


def task_runs(flow_run_id) -> list:
    """The task runs of one flow run (subflows not included)."""
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def task_run_states(flow_run_id) -> dict[str, list[str]]:
    """Task name -> state names of the task runs of one flow run."""
    states: dict[str, list[str]] = {}
    for run in task_runs(flow_run_id):
        states.setdefault(run.name.split(" ", 1)[0].rsplit("-", 1)[0], []).append(run.state.name)
    return states


def latest_task_states(name: str, count: int) -> list[str]:
    """State names of the ``count`` latest task runs named ``name`` (in any flow or subflow), newest first."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name)),
                                     sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=count)
    return [run.state.name for run in runs]
