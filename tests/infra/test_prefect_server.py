"""infra/prefect-server.sh --postgres, end to end: a Prefect server on a PostgreSQL the script creates.

On free ports, in temporary folders (PGDATA, PREFECT_HOME), with basic auth on: the UI is pointed at
this server's port (not 4200), an unauthenticated API call gets 401, an authenticated client creates a
process work pool and deploys :func:`tiny`, a ``prefect worker start --type process`` subprocess runs
it, the run's state is read back from PostgreSQL with psql, and ``prefect-server.sh stop`` stops the
server and PostgreSQL. Skipped where PostgreSQL is not installed (``make install`` installs it as root).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prefect import flow

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "infra" / "prefect-server.sh"
PGBINS = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


@flow
def tiny(x: int) -> int:
    return 2 * x


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout} s" + (f"; log:\n{log.read_text()[-3000:]}" if log else ""))


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _deploy_and_run(api: str, auth: str) -> str:
    """As a client of the server at ``api``: a process work pool, :func:`tiny` deployed from this folder,
    one run of it scheduled; returns the run's id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: auth}):
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name="pg-process", type="process"))
        flow.from_source(source=str(Path(__file__).parent), entrypoint=f"{Path(__file__).name}:tiny").deploy(
            name="pg", work_pool_name="pg-process", parameters={"x": 21})
        return str(run_deployment("tiny/pg", timeout=0).id)


@pytest.mark.slow
@pytest.mark.skipif(not PGBINS, reason="PostgreSQL is not installed (apt-get install -y postgresql)")
def test_server_on_postgres_runs_a_deployment_through_a_process_worker():
    pgbin = Path(PGBINS[-1]).parent
    top = Path(tempfile.mkdtemp(prefix="prefect-server-"))
    top.chmod(0o711)  # as root the cluster runs as "postgres", which must enter this folder
    port, pgport = _free_port(), _free_port()
    auth = f"curator:{uuid.uuid4().hex}"
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PG"))}
    env.update(PGDATA=str(top / "pgdata"), PGPORT=str(pgport), PREFECT_HOME=str(top / "home"),
               PREFECT_SERVER_PORT=str(port), PREFECT_SERVER_API_AUTH_STRING=auth)
    client_env = {k: v for k, v in env.items() if k not in ("PREFECT_SERVER_API_AUTH_STRING", "PGDATA")}
    client_env.update(PREFECT_API_URL=api, PREFECT_API_AUTH_STRING=auth, PREFECT_HOME=str(top / "client"),
                      PREFECT_WORKER_QUERY_SECONDS="1")
    log, worker_log = top / "server.log", top / "worker.log"
    server = worker = None
    try:
        with open(log, "wb") as out:
            server = subprocess.Popen([str(SCRIPT), "--postgres"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        _wait(lambda: _healthy(api) or server.poll() is not None, 300, "the server answered /api/health", log)
        assert server.poll() is None, log.read_text()[-3000:]

        # the UI talks to this server, not to 4200
        assert httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=10).json()["api_url"] == api
        assert httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).status_code == 401
        user, password = auth.split(":")
        assert httpx.post(f"{api}/flow_runs/filter", json={}, auth=(user, password), timeout=10).status_code == 200

        run_id = _deploy_and_run(api, auth)

        with open(worker_log, "wb") as out:
            worker = subprocess.Popen([str(ROOT / ".venv/bin/prefect"), "worker", "start", "--pool", "pg-process",
                                       "--type", "process"], env=client_env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True, cwd=top)

        def state() -> str | None:
            response = httpx.get(f"{api}/flow_runs/{run_id}", auth=(user, password), timeout=10)
            kind = response.json()["state"]["type"]
            return kind if kind in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        assert _wait(state, 300, "the flow run finished", worker_log) == "COMPLETED", worker_log.read_text()[-3000:]

        def psql(sql: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(pgbin / "psql"), "-h", "127.0.0.1", "-p", str(pgport), "-U", "prefect", "-d",
                                   "prefect", "-tAc", sql], capture_output=True, text=True, timeout=30)

        row = psql(f"SELECT state_type, parameters->>'x' FROM flow_run WHERE id = '{run_id}'")
        assert row.returncode == 0, row.stderr
        assert row.stdout.strip() == "COMPLETED|21"

        stopped = subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        server.wait(timeout=30)
        assert not (top / "pgdata" / "postmaster.pid").exists()
        assert psql("SELECT 1").returncode != 0  # PostgreSQL no longer answers
        assert not _healthy(api)
    finally:
        for process in (worker, server):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(top, ignore_errors=True)
