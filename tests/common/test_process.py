"""The child-process runner with real processes: a child that starts a grandchild, real kills."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tasks.common.process import log_tail, run_child, stop_stale_group

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups checked in /proc")

# argv: <ids file> <exit status or "sleep">; starts a grandchild that sleeps, writes "child grandchild" pids
PARENT_OF_SLEEPER = textwrap.dedent("""
    import os, subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(f"{os.getpid()} {grandchild.pid}")
    os.replace(tmp, sys.argv[1])
    print("child started its grandchild", flush=True)
    if sys.argv[2] == "sleep":
        time.sleep(120)
    sys.exit(int(sys.argv[2]))
""")


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


def _group(pgid: int) -> list[int]:
    members = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            members.append(int(entry))
    return members


def _wait_for(path: Path, process=None, seconds: float = 60) -> list[int]:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process is None or process.poll() is None, "the caller ended early"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return [int(p) for p in path.read_text().split()]


def _until(condition, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _caller(tmp_path: Path, ids: Path) -> subprocess.Popen:
    """Another process that runs the sleeping child through run_child (the caller to kill or interrupt)."""
    # SIGINT raises KeyboardInterrupt even when the test runner was started in the background
    # (a shell's background job inherits SIGINT ignored, and Python then keeps it ignored)
    script = textwrap.dedent(f"""
        import signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from tasks.common.process import run_child
        run_child([sys.executable, "-c", {PARENT_OF_SLEEPER!r}, {str(ids)!r}, "sleep"],
                  {str(tmp_path / "child.log")!r}, {str(tmp_path / "child.pgid")!r})
    """)
    return subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[2])


def test_returns_the_status_and_leaves_no_member_of_the_group(tmp_path):
    log, pid_file, ids = tmp_path / "child.log", tmp_path / "child.pgid", tmp_path / "ids"
    log.write_text("an earlier run\n")
    status = run_child([sys.executable, "-c", PARENT_OF_SLEEPER, str(ids), "3"], log, pid_file)
    child, grandchild = _wait_for(ids)
    assert status == 3
    assert not _alive(grandchild) and _group(child) == []
    assert not pid_file.exists()
    assert log.read_text() == "an earlier run\nchild started its grandchild\n"  # appended
    assert log_tail(log, 10) == "randchild\n"


def test_a_stale_group_from_a_killed_caller_is_killed_by_the_next_run(tmp_path):
    ids, pid_file = tmp_path / "ids", tmp_path / "child.pgid"
    caller = _caller(tmp_path, ids)
    child, grandchild = _wait_for(ids, caller)
    assert int(pid_file.read_text()) == child
    caller.kill()  # the caller dies; its child dies with it, the grandchild is left over
    caller.wait(timeout=30)
    assert _until(lambda: not _alive(child)) and _alive(grandchild)

    messages = []
    assert run_child([sys.executable, "-c", "pass"], tmp_path / "child.log", pid_file, log=messages.append) == 0
    assert not _alive(grandchild) and _group(child) == []
    assert messages and f"process group {child}" in messages[0]


def test_an_interrupted_caller_kills_the_group(tmp_path):
    ids = tmp_path / "ids"
    caller = _caller(tmp_path, ids)
    child, grandchild = _wait_for(ids, caller)
    caller.send_signal(signal.SIGINT)  # KeyboardInterrupt inside run_child
    assert caller.wait(timeout=30) != 0
    assert _until(lambda: not _alive(child) and not _alive(grandchild))
    assert not (tmp_path / "child.pgid").exists()


def test_a_pid_file_naming_someone_elses_group_kills_nothing(tmp_path):
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        pid_file = tmp_path / "old.pgid"
        pid_file.write_text(str(other.pid))  # the group id was reused by a process we did not start
        stop_stale_group(pid_file)
        assert _alive(other.pid) and not pid_file.exists()
    finally:
        other.kill()
        other.wait()


def test_a_child_started_after_a_local_dask_cluster_gets_all_threads(tmp_path):
    """Dask's nanny leaves OMP_NUM_THREADS=1 and MALLOC_TRIM_THRESHOLD_ in the environment of the process
    that starts a local cluster; a trainer started from that process afterwards must not inherit them."""
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from tasks.common.dask_cluster import dask_client
        from tasks.common.process import run_child

        if __name__ == "__main__":
            with dask_client(n_workers=1, gpu=False) as client:
                assert set(client.run(lambda: os.environ.get("OMP_NUM_THREADS")).values()) == {{"1"}}
                print("parent", os.environ.get("OMP_NUM_THREADS"), os.environ.get("MALLOC_TRIM_THRESHOLD_"))
            os.environ.update(OMP_NUM_THREADS="1", MALLOC_TRIM_THRESHOLD_="65536")  # what a restarted worker's nanny leaves
            child = [sys.executable, "-c",
                     "import os; print('child', os.environ.get('OMP_NUM_THREADS'), os.environ.get('MALLOC_TRIM_THRESHOLD_'))"]
            run_child(child, Path({str(tmp_path / 'child.log')!r}), Path({str(tmp_path / 'child.pid')!r}))
    """)
    (tmp_path / "scenario.py").write_text(script)
    env = {name: value for name, value in os.environ.items()
           if name not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, str(tmp_path / "scenario.py")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "parent None None" in done.stdout
    assert (tmp_path / "child.log").read_text().strip() == "child None None"
