"""Prefect's embedded API server starts on a loaded machine with a fresh PREFECT_HOME, because the
project raises its start-up timeout (prefect.toml, and tasks/common/prefect_settings.py elsewhere)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.common.prefect_settings import PROJECT_SETTINGS_FILE, project_settings

REPO = PROJECT_SETTINGS_FILE.parent
TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
SEEN = "from prefect.settings import get_current_settings\n" \
       "seen = get_current_settings().server.ephemeral.startup_timeout_seconds\n"
FLOW = "import time\nstart = time.time()\n" + SEEN + """
import json
from prefect import flow

@flow
def trivial(x: int) -> int:
    return x + 1

imported = time.time()
result = trivial(41)
print(json.dumps({"seen": seen, "result": result, "import_s": imported - start, "flow_s": time.time() - imported}))
"""
BUSY = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def _python(code: str, cwd: Path, home: Path, timeout: float) -> dict:
    """Run ``code`` in a new Python with an empty PREFECT_HOME and no Prefect settings inherited; its last JSON line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_project_sets_a_long_startup_timeout():
    assert int(project_settings()[TIMEOUT]) >= 120


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_flow_starts_the_embedded_server_on_a_loaded_machine(tmp_path):
    busy = [subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=420)]) for _ in range(2)]
    try:
        out = _python(FLOW, REPO, tmp_path / "prefect-home", timeout=420)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    print(f"import {out['import_s']:.1f} s, server start and flow {out['flow_s']:.1f} s")
    assert (out["seen"], out["result"]) == (int(project_settings()[TIMEOUT]), 42)
    assert (tmp_path / "prefect-home").is_dir()  # the fresh home, migrated by this run


def test_the_setting_applies_from_another_folder(tmp_path):
    elsewhere = SEEN + "import json\nprint(json.dumps(seen))\n"
    assert _python(elsewhere, tmp_path, tmp_path / "home", timeout=120) == 20  # Prefect's own default
    applied = "from tasks.common.prefect_settings import use_project_settings\nuse_project_settings()\n" + elsewhere
    assert _python(applied, tmp_path, tmp_path / "home", timeout=120) == int(project_settings()[TIMEOUT])
