"""The pipeline deployment, run by a real process worker, SIGKILLed inside every stage and retried.

One flow run of prefect.yaml's ``pipeline`` deployment on the small demo pool: inside each stage
(download, embed, filter, tree, subsets, resharding, training, evaluation) its process group is
SIGKILLed at a seeded random moment, the worker marks the run Crashed, and the test retries the
same flow run as the UI's Retry does; the worker runs it again and it goes on to the next stage.
Its store must then equal an uninterrupted run's (run at the same time in another store: the same
stage runs, samples, embeddings, filter decisions, samples seen in training, a finished evaluation;
the tree and the subsets, which depend on the download's row order, are checked for consistency),
a new flow run on it must find everything cached, and nothing may be lost, duplicated,
half-written or left Running.
"""

from __future__ import annotations

import json
import random
import re
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment

from chaos_support import (Worker, descendant_flow_run_ids, flow_run_pid, kill_process_group, prefect_cli,
                           read_flow_run, retry_like_the_ui, runs_in_state, shard_samples, stop_flow_run_processes,
                           wait_for_flow_run)
from tasks.demo_pool.eval_sets import generate_eval_sets
from tests_support import FAST_DOWNLOAD

SEED = 13
# The tree (and the subsets drawn from it) depends on the order of the pool's rows, which img2dataset sets
# by the order its downloads finish: two uninterrupted runs differ there too, so those are checked for
# consistency, not compared.
ORDER_DEPENDENT = ("clusters/", "subsets/")
KEY = re.compile(r"(?<![0-9a-f])[0-9a-f]{16}(?![0-9a-f])")  # a content key in a store path
POOL_NAME = "chaos"
SUBSET = {"recipe": [{"step": "filters"}, {"step": "hkmeans", "target": 240}], "shard_size": 16}
TRAINING = {"samples_seen": 512, "batch_size": 32, "checkpoint_steps": 4, "warmup": 1}

# stage -> how to tell it runs: the functions of its tasks (a task run's key starts with it; Running in the
# API), or "store" (resharding: a subset's first output shard is in the store, its manifest not yet); and
# the longest seeded wait between seeing it run and the kill (seconds)
STAGES = {
    "download": (("download_slice_task",), 1.5),
    "embed": (("embed_shard_task",), 1.0),
    "filter": (("rowwise_filters_task", "poolwide_filters_task"), 1.0),
    "tree": (("cluster_pool_task",), 1.0),
    "subsets": (("make_subset_task",), 0.3),
    "resharding": ("store", 0.1),
    "training": (("train_clip_task",), 4.0),
    "evaluation": (("evaluate_task",), 2.0),
}


@pytest.fixture(scope="module")
def tasklist(tmp_path_factory) -> str:
    return generate_eval_sets(tmp_path_factory.mktemp("sets"), seed=5, n_concepts=20, per_class=2,
                              per_concept_retrieval=1)


@pytest.fixture(scope="module")
def random_clip(tmp_path_factory) -> str:
    """A Tiny-ViT-48px CLIP with seeded random weights (the embedder: nothing can be downloaded here)."""
    import open_clip
    import torch

    from tasks.common.models import register_model_configs

    register_model_configs()
    torch.manual_seed(SEED)
    path = tmp_path_factory.mktemp("model") / "tiny-random.pt"
    torch.save({"state_dict": open_clip.create_model("Tiny-ViT-48px").state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def pipeline_deployment(prefect_harness) -> str:
    prefect_cli("work-pool", "create", "curation-process", "--type", "process", "--overwrite")
    prefect_cli("--no-prompt", "deploy", "--name", "pipeline")
    return "pipeline/pipeline"


def _parameters(store: Path, small_index, tasklist, checkpoint) -> dict:
    return dict(pool_index=str(small_index), store=str(store), tasklist=tasklist, pool_name=POOL_NAME,
                embedder={"model": "Tiny-ViT-48px", "checkpoint": checkpoint, "batch_size": 64},
                subsets={"balanced": SUBSET}, download=FAST_DOWNLOAD,
                filters={"min_image_side": 48, "clip_score_top_fraction": 0.9},
                clustering={"levels": [20, {"k": 5, "resampling_steps": 2}], "engine": "dask"},
                scale="tiny", train_overrides=TRAINING)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # about 5 min on an idle 2-core machine; much more on a loaded one
def test_pipeline_killed_in_every_stage_and_retried_equals_an_uninterrupted_run(
        pipeline_deployment, small_index, web_server, tasklist, random_clip, tmp_path):
    rng = random.Random(SEED)
    killed_store, reference_store = tmp_path / "killed", tmp_path / "reference"
    worker, started = Worker(tmp_path / "worker.log"), []
    try:
        reference = run_deployment(pipeline_deployment, timeout=0, flow_run_name="reference",
                                   parameters=_parameters(reference_store, small_index, tasklist, random_clip))
        run = run_deployment(pipeline_deployment, timeout=0, flow_run_name="chaos",
                             parameters=_parameters(killed_store, small_index, tasklist, random_clip))
        started += [reference, run]
        kills = []
        since, previous_pid = datetime.now(timezone.utc), None
        for stage, (signal_of_running, longest_wait) in STAGES.items():
            if not _wait_until_running(run.id, stage, signal_of_running, killed_store, since):
                kills.append({"stage": stage, "missed": "it finished before it could be seen running"})
                continue
            wait = rng.uniform(0, longest_wait)
            time.sleep(wait)
            pid = flow_run_pid(run.id, previous_pid)
            still_running = _stage_running(run.id, signal_of_running, killed_store, since)
            kill_process_group(pid)
            crashed = wait_for_flow_run(run.id, lambda r: r.state.is_final(), 120, f"the worker saw the kill in {stage}")
            assert crashed.state.is_crashed(), crashed.state
            worker.wait_for_exit_report(sum("missed" not in kill for kill in kills) + 1)
            kills.append({"stage": stage, "after_s": round(wait, 2), "inside": still_running,
                          "left_running": runs_in_state(run.id, StateType.RUNNING)})
            since, previous_pid = datetime.now(timezone.utc), pid
            retry_like_the_ui(run.id)
        assert len([kill for kill in kills if "missed" not in kill]) >= len(STAGES) - 1, kills
        finished = wait_for_flow_run(run.id, lambda r: r.state.is_final(), 400, "the retried run finished")
        assert finished.state.is_completed(), finished.state
        assert wait_for_flow_run(reference.id, lambda r: r.state.is_final(), 300,
                                 "the reference run finished").state.is_completed()
        print(json.dumps(kills, indent=1))
        # each kill landed inside its stage (where a stage could end between the last look and the kill,
        # the next one saw it); a killed process left subflow and task runs Running, which the retry crashed
        assert sum(kill.get("inside", False) for kill in kills) >= len(STAGES) - 2, kills
        assert any(kill.get("left_running", {}).get("task_runs") for kill in kills)
        assert runs_in_state(run.id, StateType.RUNNING) == {"flow_runs": [], "task_runs": []}
        assert_same_outputs(killed_store, reference_store)

        again = run_deployment(pipeline_deployment, timeout=0, flow_run_name="again",
                               parameters=_parameters(killed_store, small_index, tasklist, random_clip))
        started.append(again)
        assert wait_for_flow_run(again.id, lambda r: r.state.is_final(), 300,
                                 "the new run finished").state.is_completed()
    finally:
        worker.stop()
        stop_flow_run_processes(run.id for run in started)  # after a failure: nothing of them keeps running
    stage_states = _stage_task_states(again.id)
    assert stage_states and set(stage_states.values()) == {"Cached"}, stage_states
    assert_same_outputs(killed_store, reference_store)


def _wait_until_running(flow_run_id, stage: str, signal_of_running, store: Path, since, limit_s: float = 400) -> bool:
    """Whether the stage was seen running (False: resharding, done before its first shard was seen)."""
    deadline = time.monotonic() + limit_s
    while not _stage_running(flow_run_id, signal_of_running, store, since):
        if signal_of_running == "store" and any(store.glob(f"subsets/{POOL_NAME}/*/manifest.json")):
            return False
        run = read_flow_run(flow_run_id)
        assert not run.state.is_final(), f"the run ended ({run.state.name}) before {stage} could be killed"
        assert time.monotonic() < deadline, f"{stage} never ran"
        time.sleep(0.1)
    return True


def _stage_running(flow_run_id, signal_of_running, store: Path, since) -> bool:
    if signal_of_running == "store":  # a shard written by this attempt (not left by the killed one)
        return any(tar.stat().st_mtime >= since.timestamp() and not (tar.parent.parent / "manifest.json").exists()
                   for tar in store.glob(f"subsets/{POOL_NAME}/*/shards/*.tar"))
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=descendant_flow_run_ids(flow_run_id))))
    return any(task.state_type == StateType.RUNNING and task.start_time and task.start_time >= since
               and task.task_key.rsplit("-", 1)[0] in signal_of_running for task in tasks)


def _stage_task_states(flow_run_id) -> dict[str, str]:
    """State of the new run's stage tasks (download slices, embedded shards, filters, tree, subset, training,
    evaluation) by task-run name."""
    functions = {f for signal, _ in STAGES.values() if signal != "store" for f in signal} - {"rowwise_filters_task"}
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=descendant_flow_run_ids(flow_run_id))))
    return {task.name: task.state.name for task in tasks  # (row-wise filters: not cached, their files are the record)
            if task.task_key.rsplit("-", 1)[0] in functions}


def assert_same_outputs(killed: Path, reference: Path) -> None:
    """The two stores hold the same stage runs with the same data; nothing duplicated, lost or half-written.

    Manifests name the store they are in, so their content hashes, the archived copies named by them
    and the folder keys made from them differ between stores: paths are compared with their 16-hex
    keys masked (a stage run twice, under two keys, counts twice), manifests by their rows. Tables
    are compared as sets of rows by uid (img2dataset writes a shard's rows in the order downloads
    finish), embeddings row by row through the uids of their shard table.
    """
    staged = [p for p in (killed / "_staging").rglob("*") if p.is_file()]
    assert not staged, staged  # nothing half-written left over
    files, reference_files = _store_files(killed), _store_files(reference)
    assert {k: len(v) for k, v in files.items()} == {k: len(v) for k, v in reference_files.items()}
    pairs = {masked: (killed / files[masked][0], reference / reference_files[masked][0]) for masked in files}
    for masked, (a, b) in pairs.items():
        if masked.endswith("/manifest.json"):
            assert json.loads(a.read_text())["rows"] == json.loads(b.read_text())["rows"], masked
        elif masked.startswith(ORDER_DEPENDENT):
            continue  # checked for consistency below
        elif masked.endswith(".parquet") and not masked.startswith(("train/", "eval/")):
            pd.testing.assert_frame_equal(_by_uid(pd.read_parquet(a)), _by_uid(pd.read_parquet(b)), check_exact=False,
                                          rtol=1e-5, obj=masked)
        elif masked.endswith(".npy"):
            x, y = _rows_by_uid(a), _rows_by_uid(b)
            if x.dtype.fields:  # DataComp's subset file: sorted uid halves
                assert np.array_equal(x, y), masked
            else:
                np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=masked)
    for store in (killed, reference):
        _assert_subsets_consistent(store)
    samples, reference_samples = (shard_samples(json.loads((store / f"pools/{POOL_NAME}/manifest.json").read_text()))
                                  for store in (killed, reference))
    assert len({uid for uid, _ in samples}) == len(samples)  # nobody twice
    assert sorted(samples) == sorted(reference_samples)


def _assert_subsets_consistent(store: Path) -> None:
    """Every subset: its uids unique, from the pool, as many as its manifest says, and its shards hold
    exactly them (resharding neither lost nor repeated a sample); its tree labels every input once."""
    pool = {uid for uid, _ in shard_samples(json.loads((store / f"pools/{POOL_NAME}/manifest.json").read_text()))}
    for manifest_path in store.glob(f"subsets/{POOL_NAME}/*/manifest.json"):
        manifest = json.loads(manifest_path.read_text())
        uids = pd.read_parquet(manifest_path.parent / "subset.parquet")["uid"]
        assert uids.is_unique and set(uids) <= pool and len(uids) == manifest["rows"]["subset"]
        members = [name.split(".")[0] for shard in sorted((manifest_path.parent / "shards").glob("*.tar"))
                   for name in tarfile.open(shard).getnames() if name.endswith(".json")]
        assert sorted(members) == sorted(uids)
    for tree in store.glob(f"clusters/{POOL_NAME}/*/"):
        inputs = pd.read_parquet(tree / "inputs.parquet")
        assert len(np.load(tree / "level-1" / "labels.npy")) == len(inputs) and inputs["uid"].is_unique


def _store_files(store: Path) -> dict[str, list[str]]:
    """Every file of the store but Prefect's records, by its path with 16-hex content keys masked."""
    files: dict[str, list[str]] = {}
    for path in sorted(store.rglob("*")):
        rel = path.relative_to(store).as_posix()
        if path.is_file() and not rel.startswith(("_prefect/", "_probe/")):
            files.setdefault(KEY.sub("<key>", rel), []).append(rel)
    return files


def _by_uid(table: pd.DataFrame) -> pd.DataFrame:
    key = "uid" if "uid" in table.columns else list(table.columns)
    return table.sort_values(key, kind="stable").reset_index(drop=True)


def _rows_by_uid(npy: Path) -> np.ndarray:
    """An array file's rows in uid order when its shard table (``<stem>.parquet`` beside it) has the uids."""
    array = np.load(npy)
    table = npy.with_name(npy.name.split(".", 1)[0] + ".parquet")
    if table.exists():
        uids = pd.read_parquet(table)
        if "uid" in uids.columns and len(uids) == len(array):
            return array[np.argsort(uids["uid"].to_numpy(), kind="stable")]
    return array
