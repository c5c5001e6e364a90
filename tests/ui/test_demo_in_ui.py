"""What users see in Prefect's UI, seen through a headless Chromium on a real ``prefect server start``.

The flow (``ui_flow.py``) has the demo's shapes: named subflow runs whose results feed tasks,
the real cluster report task (a table, and a plot as a markdown artifact), progress artifacts.
Checked through the API (task inputs of kinds the UI accepts, run names, artifact keys written
once) and in the browser (the Task Runs tab lists the tasks; the table, the plot and the progress
render). Needs Debian's Chromium (``make install`` installs it as root); skipped without it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from cdp import CHROMIUM, Chromium
from tasks.common.prefect_support import artifact_key

ROOT = Path(__file__).resolve().parents[2]
ACCEPTED_INPUTS = {"task_run", "parameter", "constant"}  # what Prefect 3.8's UI maps; "flow_run" makes it throw

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM}: apt-get install chromium "
                                                               "(make install does it as root)")]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    """``prefect server start`` (API and UI) on a free loopback port, with its own home and database."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=f"{url}/api", PREFECT_UI_API_URL=f"{url}/api",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_UI_ENABLED="true",
               **{f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false"  # services no flow run here needs
                  for name in ("SCHEDULER", "LATE_RUNS", "FOREMAN", "PAUSE_EXPIRATIONS", "CANCELLATION_CLEANUP",
                               "REPOSSESSOR")})
    env.pop("PREFECT_API_KEY", None)
    log = open(home / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # a fresh database's migrations: seconds alone, minutes under load
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "prefect server did not answer in 300 s"
            time.sleep(1)
        yield {"url": url, "env": env}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def finished_run(ui_server, tmp_path_factory) -> dict:
    """The UI flow run to its end against the server; its id and what the API says about it."""
    store = tmp_path_factory.mktemp("ui-store")
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("ui_flow.py")), str(store)], cwd=ROOT,
                          env=dict(ui_server["env"], PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    api = ui_server["url"] + "/api"

    def post(path: str, body: dict) -> list[dict]:
        response = httpx.post(f"{api}/{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    # the server is this test's alone: every run and artifact in it is the UI flow's
    return {"id": done.stdout.strip().splitlines()[-1], "store": str(store), "url": ui_server["url"],
            "flow_runs": post("flow_runs/filter", {}), "task_runs": post("task_runs/filter", {}),
            "artifacts": post("artifacts/filter", {})}


def test_the_api_holds_what_the_ui_can_show(finished_run):
    subflows = sorted(run["name"] for run in finished_run["flow_runs"] if run["parent_task_run_id"])
    assert subflows == ["tree-uipool-4", "tree-uipool-8"]
    tasks = {run["name"]: run for run in finished_run["task_runs"]}
    assert {"cluster_report tree uipool 4", "cluster_report tree uipool 8", "count samples tree 4",
            "count samples tree 8"} <= set(tasks)
    kinds = {name: {ref["input_type"] for refs in run["task_inputs"].values() for ref in refs}
             for name, run in tasks.items()}
    assert all(found <= ACCEPTED_INPUTS for found in kinds.values()), kinds
    keys = Counter(artifact["key"] for artifact in finished_run["artifacts"] if artifact["key"])
    assert [key for key, count in keys.items() if count > 1] == []  # each key written once in the run
    store = finished_run["store"]
    assert {artifact_key(store, "uipool", "tree", "4"), artifact_key(store, "uipool", "tree", "8", "sizes")} <= set(keys)
    progress = [artifact["data"] for artifact in finished_run["artifacts"] if artifact["type"] == "progress"]
    assert progress == [100.0, 100.0]


def _click_tab(browser: Chromium, name: str) -> None:
    browser.wait_for("document.querySelectorAll('li.p-tab').length > 3", what="the run's tabs")
    browser.evaluate(f"[...document.querySelectorAll('li.p-tab')].find(e => e.textContent.trim() == {name!r}).click()")


def test_the_run_page_shows_tasks_tables_plots_and_progress(finished_run, tmp_path):
    by_key = {artifact["key"]: artifact for artifact in finished_run["artifacts"] if artifact["key"]}
    store = finished_run["store"]
    plot = by_key[artifact_key(store, "uipool", "tree", "8")]
    table = by_key[artifact_key(store, "uipool", "tree", "8", "sizes")]
    progress = next(artifact for artifact in finished_run["artifacts"] if artifact["type"] == "progress")
    text = "document.body ? document.body.innerText : ''"
    with Chromium(tmp_path / "chromium") as browser:
        browser.open(f"{finished_run['url']}/runs/flow-run/{finished_run['id']}")
        _click_tab(browser, "Task Runs")
        shown = browser.wait_for(f"(t => t.includes('cluster_report tree uipool 8') && t)({text})",
                                 what="the task runs")
        assert "No task runs" not in shown
        assert all(name in shown for name in ("cluster_report tree uipool 4", "count samples tree 4",
                                              "count samples tree 8"))
        _click_tab(browser, "Artifacts")
        browser.wait_for(f"({text}).includes({plot['key']!r}) && ({text}).includes({table['key']!r})",
                         what="the artifacts' keys")

        browser.open(f"{finished_run['url']}/artifacts/artifact/{plot['id']}")
        width = browser.wait_for("(i => i && i.complete && i.naturalWidth)"
                                 "(document.querySelector('img[src^=\"data:image/png;base64,\"]'))",
                                 what="the plot, decoded")
        assert width > 100
        browser.open(f"{finished_run['url']}/artifacts/artifact/{table['id']}")
        cells = browser.wait_for("[...document.querySelectorAll('table td, table th')].map(c => c.innerText.trim())"
                                 ".filter(t => t).join('|')", what="the table")
        assert "samples_max" in cells and "40" in cells.split("|")
        browser.open(f"{finished_run['url']}/artifacts/artifact/{progress['id']}")
        browser.wait_for(f"({text}).includes('Progress: 100%')", what="the progress bar at 100%")
