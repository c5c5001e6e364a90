"""prefect.yaml for real: deploy to a Prefect API server, then a process worker runs a deployment."""

import os
import subprocess
import sys
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL

REPO = Path(__file__).resolve().parents[2]


def _prefect(*args, timeout=300):
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PWD=str(REPO))
    command = [str(Path(sys.executable).with_name("prefect")), *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_deploy_and_run_through_a_process_worker(prefect_harness, tmp_path):
    _prefect("work-pool", "create", "curation-process", "--type", "process", "--overwrite")
    _prefect("--no-prompt", "deploy", "--all")
    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
    assert {"pool-refresh", "embed-filter", "curate", "train-eval", "pipeline", "demo"} <= set(deployments)
    assert deployments["curate"].parameters["subsets"]["balanced"][1] == {"step": "hkmeans", "target": 10000000}
    assert deployments["curate"].parameters["clustering"]["levels"][1] == {"k": 10000, "resampling_steps": 10}
    assert set(deployments["train-eval"].parameters) == {"store", "data", "tasklist", "scale"}
    refresh = deployments["pool-refresh"]
    assert refresh.work_pool_name == "curation-process"
    assert [s.schedule.cron for s in refresh.schedules] == ["0 3 * * *"]
    assert set(refresh.parameters) == {"pool_index", "store", "pool_name", "embedder", "filters", "clustering", "subsets",
                                      "tree_update"}
    assert refresh.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)

    quick = {"samples_seen": 256, "batch_size": 64, "checkpoint_steps": 2, "warmup": 1}
    run = run_deployment("demo/demo", parameters={"workdir": str(tmp_path / "demo"), "n_samples": 300, "seed": 4,
                                                  "timeout": 5, "train_overrides": quick}, timeout=0)
    _prefect("worker", "start", "--pool", "curation-process", "--run-once", timeout=600)
    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(run.id)
    assert finished.state.is_completed(), finished.state
    assert (tmp_path / "demo/store/pools/demo/manifest.json").exists()
