"""Concurrent runs on one pool: cache records written under a lock in the store, and tag limits.

- Two pool_refresh runs started at once on the same store (two threads, Prefect's test harness):
  each slice is downloaded once (the web server counts every request), one run gets ``Cached``
  for what the other did, both return the same manifest, and no temporary file or lock is left.
- The store lock manager: a second holder waits for the first, a lease of a dead process is
  broken at once, and on S3 the lease is one conditional PUT.
- Tag concurrency limits: two tagged tasks under a limit of 1 run one after the other.
"""

from __future__ import annotations

import contextvars
import os
import subprocess
import sys
import threading
import time
import uuid

import pandas as pd
import pytest
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from faults_support import task_run_states
from tasks.common.prefect_support import LOCKS_FOLDER, StoreLockManager
from tasks.common.store import Store
from tests_support import FAST_DOWNLOAD


def _in_threads(*calls):
    """Run each call in its own thread with this thread's context (Prefect's settings); return results."""
    results, errors = [None] * len(calls), []

    def run(i, call):
        try:
            results[i] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(run, i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not any(thread.is_alive() for thread in threads), "a run did not finish in 10 minutes"
    if errors:
        raise errors[0]
    return results


@pytest.mark.slow
def test_two_runs_at_once_download_every_slice_once(prefect_harness, small_index, web_server, tmp_path):
    from flows.pool_refresh import pool_refresh

    store, index = tmp_path / "store", tmp_path / "pool.parquet"
    pd.read_parquet(small_index).head(200).to_parquet(index)  # 2 slices of 100
    before = sum(web_server.requests.values())

    def refresh():
        return pool_refresh(pool_index=str(index), store=str(store), pool_name="twice", return_state=True,
                            **dict(FAST_DOWNLOAD, slice_size=100, processes=1))

    first, second = _in_threads(refresh, refresh)
    assert first.result()["content_hash"] == second.result()["content_hash"]
    assert first.result()["rows"]["input"] == 200
    # every URL was requested once in all: no slice was downloaded by both runs
    assert sum(web_server.requests.values()) - before == 200
    states = [task_run_states(state.state_details.flow_run_id, "download") for state in (first, second)]
    assert sorted(states[0] + states[1]) == ["Cached", "Cached", "Completed", "Completed"], states
    leftovers = [p for p in store.rglob("*") if p.name.startswith(".tmp-") or p.suffix == ".lock"]
    assert leftovers == []


def _hold(manager: StoreLockManager, key: str, holder: str, seconds: float, log: list):
    assert manager.acquire_lock(key, holder)
    log.append(("got", holder, time.monotonic()))
    time.sleep(seconds)
    log.append(("release", holder, time.monotonic()))
    manager.release_lock(key, holder)


def test_the_second_holder_waits_for_the_first(tmp_path):
    manager = StoreLockManager(Store(str(tmp_path / "store")))
    log: list = []
    first = threading.Thread(target=_hold, args=(manager, "k", "first", 1.0, log))
    first.start()
    deadline = time.monotonic() + 30
    while not manager.is_locked("k") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not manager.acquire_lock("k", "second", acquire_timeout=0.2)  # held: a bounded wait gives up
    _hold(manager, "k", "second", 0.0, log)
    first.join()
    assert [(event, holder) for event, holder, _ in log] == [("got", "first"), ("release", "first"),
                                                            ("got", "second"), ("release", "second")]
    assert not manager.is_locked("k") and not list((tmp_path / "store").rglob("*.lock"))


def test_a_lease_of_a_killed_process_is_broken_at_once(tmp_path):
    store = Store(str(tmp_path / "store"))
    code = ("import sys, os, signal; from tasks.common.store import Store; "
            "from tasks.common.prefect_support import StoreLockManager; "
            "StoreLockManager(Store(sys.argv[1])).acquire_lock('k', 'dead'); os.kill(os.getpid(), signal.SIGKILL)")
    subprocess.run([sys.executable, "-c", code, store.root], cwd=os.getcwd(), timeout=120)
    assert store.exists(f"{LOCKS_FOLDER}/k.lock")  # left by the killed process
    started = time.monotonic()
    assert StoreLockManager(store).acquire_lock("k", "alive", acquire_timeout=30)
    assert time.monotonic() - started < 10  # not the lease's length


def test_an_expired_lease_is_broken_and_a_live_one_is_renewed(tmp_path):
    store = Store(str(tmp_path / "store"))
    holder = StoreLockManager(store, lease_seconds=0.8)  # renewed every 0.2 s
    assert holder.acquire_lock("k", "first")
    time.sleep(1.5)
    assert not StoreLockManager(store).acquire_lock("k", "second", acquire_timeout=0.5)  # renewed: still held
    holder.release_lock("k", "first")
    store.write_bytes(f"{LOCKS_FOLDER}/k.lock", b'{"holder": "gone", "host": "elsewhere", "pid": 1, "expires": 0}')
    assert StoreLockManager(store).acquire_lock("k", "third", acquire_timeout=5)


def test_s3_leases_are_conditional_puts(s3_bucket):
    store = Store(f"{s3_bucket}/store")
    first, second = StoreLockManager(store), StoreLockManager(store)
    assert first.acquire_lock("k", "a")
    assert not second.acquire_lock("k", "b", acquire_timeout=1)
    assert second.is_locked("k") and not second.is_lock_holder("k", "b") and second.is_lock_holder("k", "a")
    first.release_lock("k", "a")
    assert second.acquire_lock("k", "b", acquire_timeout=5)
    second.release_lock("k", "b")


def test_heavy_tasks_carry_their_concurrency_tags():
    from tasks.cluster.task import cluster_pool_task
    from tasks.embed.task import embed_shard_task
    from tasks.train.task import train_clip_task

    assert "embedding" in embed_shard_task.tags
    assert "clustering" in cluster_pool_task.tags
    assert "training" in train_clip_task.tags


def test_tagged_tasks_queue_under_a_limit_of_one(prefect_harness):
    from prefect.client.orchestration import get_client

    from deployments.concurrency import DEFAULT_LIMITS, apply_limits, parse_limits

    tag = f"chaos-{uuid.uuid4().hex[:8]}"

    @task
    def heavy(seconds: float) -> tuple[float, float]:
        start = time.monotonic()
        time.sleep(seconds)
        return start, time.monotonic()

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def two_at_once(tags: list[str]) -> list[tuple[float, float]]:
        tagged = heavy.with_options(tags=tags)
        futures = [tagged.submit(1.0), tagged.submit(1.0)]
        return [future.result() for future in futures]

    # another tag: Prefect remembers for 5 s that a set of tags has no limit
    free = sorted(two_at_once([f"{tag}-free"]))
    assert free[1][0] < free[0][1]  # without a limit the two overlap: the check below can fail
    assert parse_limits([f"{tag}=1"]) == {**DEFAULT_LIMITS, tag: 1}
    apply_limits({tag: 1})
    apply_limits({tag: 1})  # idempotent
    try:
        queued = sorted(two_at_once([tag]))
    finally:
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag(tag)
    assert queued[1][0] >= queued[0][1]  # the second started after the first ended
