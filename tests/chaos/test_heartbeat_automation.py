"""A flow run whose worker and process are both SIGKILLed ends Crashed (heartbeats + the automation of
deployments/automations.py), and a Retry from the UI crashes what the dead process left Running."""

import time
import uuid

import pytest
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.workers.process import ProcessWorker

from chaos_support import (REPO, Worker, flow_run_pid, kill_process_group, retry_like_the_ui, runs_in_state,
                           wait_for_flow_run)
from deployments.automations import CRASH_AUTOMATION, ensure_crash_automation

HEARTBEAT_TIMEOUT_S = 45  # the flow runs beat every 30 s (Prefect's minimum)


@pytest.fixture
def crash_automation(prefect_harness):
    ensure_crash_automation(HEARTBEAT_TIMEOUT_S)
    automation = ensure_crash_automation(HEARTBEAT_TIMEOUT_S)  # again: updated, not duplicated
    yield automation
    automation.delete()  # other tests' flows in this session must not be crashed by a short timeout


@pytest.mark.slow
def test_a_run_whose_worker_and_process_died_ends_crashed(crash_automation, tmp_path):
    with get_client(sync_client=True) as client:
        assert [a.id for a in client.read_automations_by_name(CRASH_AUTOMATION)] == [crash_automation.id]
    assert Automation.read(name=CRASH_AUTOMATION).trigger.within.total_seconds() == HEARTBEAT_TIMEOUT_S

    pool = "chaos-heartbeat-" + uuid.uuid4().hex[:6]
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process",
                                               base_job_template=ProcessWorker.get_default_base_job_template()))
    from sleeper_flow import sleeper

    deployment_id = sleeper.from_source(source=str(REPO), entrypoint="tests/chaos/sleeper_flow.py:sleeper").deploy(
        name="heartbeat", work_pool_name=pool, print_next_steps=False,
        job_variables={"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}})
    release = tmp_path / "release"
    run = run_deployment(deployment_id, parameters={"release": str(release)}, timeout=0)

    worker = Worker(tmp_path / "worker.log", pool=pool)
    try:
        pid = flow_run_pid(run.id)
        wait_for_task_run_running(run.id, "nap", limit_s=120)
        worker.kill()  # the worker first: nobody is left to report the flow process's death
        kill_process_group(pid)
        killed_at = time.monotonic()
        crashed = wait_for_flow_run(run.id, lambda r: r.state.is_crashed(), HEARTBEAT_TIMEOUT_S + 60,
                                    "the automation marked the run Crashed")
    finally:
        worker.stop()
    assert "no heartbeat" in crashed.state.message
    assert time.monotonic() - killed_at >= HEARTBEAT_TIMEOUT_S - 30  # the last beat came at most 30 s before the kill
    deadline = time.monotonic() + 60  # the subflow beat too (it started a little later): crashed as well
    while (left := runs_in_state(run.id, StateType.RUNNING))["flow_runs"]:
        assert time.monotonic() < deadline, f"subflow runs left Running: {left['flow_runs']}"
        time.sleep(1)
    assert len(left["task_runs"]) == 1  # the sleeping task: no automation acts on task runs...

    release.touch()
    retry_like_the_ui(run.id)
    worker = Worker(tmp_path / "worker-2.log", pool=pool)
    try:
        done = wait_for_flow_run(run.id, lambda r: r.state.is_final(), 180, "the retried run finished")
    finally:
        worker.stop()
    assert done.state.is_completed(), done.state
    assert done.run_count == 2
    assert runs_in_state(run.id, StateType.RUNNING) == {"flow_runs": [], "task_runs": []}  # ...the retry did
    assert len(runs_in_state(run.id, StateType.CRASHED)["task_runs"]) >= 1


def wait_for_task_run_running(flow_run_id, name: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not any(n.startswith(name) for n in runs_in_state(flow_run_id, StateType.RUNNING)["task_runs"]):
        assert time.monotonic() < deadline, f"task {name} never ran"
        time.sleep(0.5)
