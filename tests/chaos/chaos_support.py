"""Helpers for the chaos tests: a process worker, deployments, kills, the UI's Retry, run states.

Everything talks to the Prefect API that ``prefect_harness`` started (a real uvicorn server on
127.0.0.1, with the services that record task runs and evaluate automations), so a worker in
another process reaches it through ``PREFECT_API_URL``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId,
                                            TaskRunFilter, TaskRunFilterFlowRunId)
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL
from prefect.states import State

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "curation-process"  # prefect.yaml's work pool


def api_env(**extra: str) -> dict[str, str]:
    """This process's environment pointed at the test API (a worker and its flow runs inherit it)."""
    return dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PWD=str(REPO), **extra)


def prefect_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([PREFECT, *args], cwd=REPO, env=api_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


class Worker:
    """``prefect worker start --pool <pool> --type process`` in its own process group, polling every second."""

    def __init__(self, log: Path, pool: str = POOL, **env: str):
        self.log_path, self.log = log, open(log, "ab")
        env = api_env(PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5", **env)
        self.process = subprocess.Popen([PREFECT, "worker", "start", "--pool", pool, "--type", "process"], cwd=REPO,
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def reported_exits(self) -> int:
        """How many times the worker finished reporting a SIGKILLed flow run process (any run's).

        Prefect 3.8.8's worker logs the exit's resolution hint after its own Crashed proposal; the line
        does not name the run, so count it only where one run is killed at a time.
        """
        self.log.flush()
        return self.log_path.read_text(errors="replace").count(
            "prefect.flow_runs.worker - Check whether the flow run exceeded its memory allocation")

    def wait_for_exit_report(self, count: int, limit_s: float = 120) -> None:
        """Until the worker has reported ``count`` exits of the flow run's process.

        The worker reports an exit twice: at once (runner) and again when its submission ends, which
        under load can come after a retry started the next attempt, whose Running state the late
        report then turns Crashed (Prefect 3.8.8's worker does not check which attempt exited). A Retry
        must come after it.
        """
        deadline = time.monotonic() + limit_s
        while self.reported_exits() < count:
            assert time.monotonic() < deadline, f"the worker reported {self.reported_exits()} exits, not {count}"
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the worker alone (its flow runs are in their own sessions: they live on)."""
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()


def read_flow_run(flow_run_id):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def wait_for_flow_run(flow_run_id, done, limit_s: float, what: str, poll_s: float = 0.2):
    """Poll the flow run until ``done(run)``; fail naming ``what`` after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while True:
        run = read_flow_run(flow_run_id)
        if done(run):
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {limit_s:.0f} s; the flow run is {run.state.name}: "
                                 f"{run.state.message}")
        time.sleep(poll_s)


def flow_run_pid(flow_run_id, previous: int | None = None, limit_s: float = 120) -> int:
    """The pid of the flow run's process (the worker's ``infrastructure_pid``, ``<host>:<pid>``), once it
    names a process other than ``previous`` (the one of an earlier attempt)."""
    def pid_of(run) -> int | None:
        return int(str(run.infrastructure_pid).rsplit(":", 1)[-1]) if run.infrastructure_pid else None

    run = wait_for_flow_run(flow_run_id, lambda r: pid_of(r) not in (None, previous), limit_s,
                            "the worker started the flow run")
    return pid_of(run)


def shard_samples(manifest: dict) -> list[tuple[str, str]]:
    """(uid, image sha256) of every sample in a pool manifest's tar shards, in shard order."""
    rows = []
    for shard in manifest["outputs"]["shards"]:
        with tarfile.open(shard["tar"]) as tar:
            rows += [(meta["uid"], meta["sha256"]) for meta in
                     (json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json"))]
    return rows


def kill_process_group(pid: int) -> None:
    """Preemption: SIGKILL the flow run's process and everything in its process group (a session of its own)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and _state(pid) not in "ZX":
        time.sleep(0.05)


def stop_flow_run_processes(flow_run_ids) -> None:
    """SIGKILL what is left of the flow runs' process groups (each run's process leads a session of its
    own, with its Dask workers in it): after a failed test, nothing of it keeps running."""
    for flow_run_id in flow_run_ids:
        pid = read_flow_run(flow_run_id).infrastructure_pid
        pgid = int(str(pid).rsplit(":", 1)[-1]) if pid else None
        marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.getpgid(int(entry)) == pgid and marker in Path(f"/proc/{entry}/environ").read_bytes():
                    os.kill(int(entry), signal.SIGKILL)
            except (OSError, ValueError):
                continue


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def retry_like_the_ui(flow_run_id) -> None:
    """What the UI's Retry button sends: ``POST /flow_runs/<id>/set_state`` with an ``AwaitingRetry``
    Scheduled state (prefect/server/ui: ``retryFlowRun``); the worker then runs the same flow run again."""
    with get_client(sync_client=True) as client:
        result = client.set_flow_run_state(flow_run_id, State(type=StateType.SCHEDULED, name="AwaitingRetry",
                                                              message="Retry from the UI"), force=False)
    assert result.status.value == "ACCEPT", result


def descendant_flow_run_ids(flow_run_id) -> list:
    """The flow run and its subflow runs, recursively."""
    found, frontier = [flow_run_id], [flow_run_id]
    with get_client(sync_client=True) as client:
        while frontier:
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)))
            frontier = [run.id for run in children if run.id not in found]
            found += frontier
    return found


def runs_in_state(flow_run_id, state_type: StateType) -> dict[str, list[str]]:
    """Names of the flow runs (the run and its subflows) and task runs of the tree in ``state_type``."""
    ids = descendant_flow_run_ids(flow_run_id)
    with get_client(sync_client=True) as client:
        flows = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=ids)))
    return {"flow_runs": [r.name for r in flows if r.state_type == state_type],
            "task_runs": [r.name for r in tasks if r.state_type == state_type]}
