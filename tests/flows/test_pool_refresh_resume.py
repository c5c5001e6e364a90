"""Kill pool_refresh for real in the middle of a download, run it again, and compare."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from prefect.settings import PREFECT_API_URL

from flow_support import shard_samples, task_run_states
from flows.pool_refresh import pool_refresh
from tasks.demo_pool.generate import pool_index_for
from tasks.demo_pool.server import DemoWebServer

OPTIONS = dict(slice_size=300, shard_size=100, processes=1, threads=4, image_size=256, timeout=5)


def _cli_args(index, store):
    flags = []
    for name, value in OPTIONS.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return [sys.executable, "-m", "flows.pool_refresh", "--pool-index", str(index), "--store", str(store),
            "--pool-name", "killed", *flags]


def _staged_stats(store: Path) -> list[Path]:
    return sorted((store / "_staging").glob("pools/killed/slices/*/shards/*_stats.json"))


def _wait_for_partial_state(store: Path, process, limit_s=240) -> None:
    """Until slice 0 is published and slice 1 has finished at least one shard (bounded)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        done = list((store / "pools/killed/slices").glob("00000-*/manifest.json"))
        if done and any("/00001-" in str(p) for p in _staged_stats(store)):
            return
        if process.poll() is not None:
            pytest.fail(f"the flow ended (status {process.returncode}) before it could be killed")
        time.sleep(0.05)
    pytest.fail("the download never reached the point to kill it")


def _kill_everything(process, store: Path) -> None:
    """Preemption: the flow's process group and the img2dataset processes it started all die at once."""
    os.killpg(process.pid, signal.SIGKILL)
    for pid_file in (store / "_staging").glob("pools/killed/slices/*/img2dataset.pgid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    process.wait(timeout=30)
    time.sleep(1)


def test_killed_download_resumes_without_redoing_or_repeating(prefect_harness, small_web, small_truth, tmp_path):
    store = tmp_path / "store"
    with DemoWebServer(small_web, hang_seconds=30, latency_seconds=0.05) as server:
        index = tmp_path / "pool.parquet"
        pool_index_for(small_web, server.base_url).to_parquet(index, index=False)
        env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
        process = subprocess.Popen(_cli_args(index, store), env=env, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_partial_state(store, process)
        _kill_everything(process, store)

        published = list((store / "pools/killed/slices").glob("*/manifest.json"))
        assert len(published) == 1, "the kill came too late to test a resume"
        done_rows = 300 * len(published) + sum(len(pd.read_parquet(p.with_name(p.name.replace("_stats.json", ".parquet"))))
                                               for p in _staged_stats(store))
        requests_before = sum(server.requests.values())

        state = pool_refresh(pool_index=str(index), store=str(store), pool_name="killed", return_state=True, **OPTIONS)
        manifest = state.result()
        rerun_requests = sum(server.requests.values()) - requests_before

    assert rerun_requests == len(small_truth) - done_rows  # only unfinished work was downloaded again
    states = task_run_states(state.state_details.flow_run_id)["download_slice"]
    n_slices = -(-len(small_truth) // OPTIONS["slice_size"])
    assert sorted(states) == sorted(["Cached"] * len(published) + ["Completed"] * (n_slices - len(published)))
    samples = shard_samples(manifest)
    assert samples["uid"].is_unique  # nobody twice
    assert set(samples["uid"]) == set(small_truth.loc[small_truth["expected_status"] == "success", "uid"])
    served = pd.read_parquet(index).set_index("uid")
    assert (samples.set_index("uid")["sha256"] == served.loc[samples["uid"], "sha256"]).all()
    assert manifest["rows"]["success"] == (small_truth["expected_status"] == "success").sum()
    assert not list((store / "_staging").glob("pools/killed/slices/*"))  # staging cleaned up once published
