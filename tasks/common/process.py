"""Child processes that leave nothing behind: one runner for img2dataset, open_clip and the like.

In:  a command (argv), a log file, a pid file, and optionally the child's environment.
Out: :func:`run_child` returns the command's exit status once it ended and every process it
     started is gone; its stdout and stderr are appended to the log file (:func:`log_tail`
     reads the end of it for an error message).

How nothing is left: the child starts in its own session, so it and every process it starts
(img2dataset's pool workers, torchrun's trainers) form one process group, and it is SIGKILLed
when its parent dies (Linux). The group is killed when the command ends or the caller is
interrupted. If the caller itself is killed, the grandchildren may survive it: the pid file
(the group's id) lets the next run with the same pid file kill them before it starts anew.

Dask's worker settings: Dask's nanny writes its ``pre-spawn-environ`` (``OMP_NUM_THREADS=1`` and
MKL's and OpenBLAS's for single-threaded workers, ``MALLOC_TRIM_THRESHOLD_=65536``, and
``PYTHONHASHSEED``) into the environment of the process that starts a local cluster, and never
takes them back. A child started afterwards from that process (the trainer after the download's
cluster) inherited them: glibc then returned memory to the system after every step and the
``tiny`` training ran at half speed (101 against 179 samples/s, measured). :func:`child_environment`
gives children the values this process started with.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GROUP_TAG = "CURATION_CHILD_GROUP"  # environment variable naming the pid file of a child's group
_STARTED_WITH = dict(os.environ)  # this process's environment before any local Dask cluster of it started


def dask_worker_settings() -> set[str]:
    """The variables Dask's nanny writes into the environment of the process that starts a local cluster."""
    import dask

    return set(dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}) | {
        "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_", "PYTHONHASHSEED"}


def _put_started_values(environment) -> None:
    """Set Dask's worker settings in ``environment`` (a dict or ``os.environ``) to this process's own
    values, removing those it started without."""
    for name in dask_worker_settings():
        if name in _STARTED_WITH:
            environment[name] = _STARTED_WITH[name]
        else:
            environment.pop(name, None)


def restore_environment() -> None:
    """Put this process's own values of Dask's worker settings back into ``os.environ`` (after a local
    Dask cluster started)."""
    _put_started_values(os.environ)


def child_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) with Dask's worker settings as this process started
    with them (absent where it had none)."""
    result = dict(os.environ if env is None else env)
    _put_started_values(result)
    return result


def die_with_parent() -> None:
    """``preexec_fn`` for a child: SIGKILL it when the parent dies (Linux), so no orphan keeps working."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_child(argv: list[str], log_path: Path, pid_file: Path, env: dict[str, str] | None = None,
              log=print) -> int:
    """Run ``argv`` to its end in its own process group; return its exit status.

    ``env`` is the child's whole environment (default: this process's, with the thread limits it
    started with: :func:`child_environment`, which callers that pass ``env`` build it from). A group left by an
    earlier run with the same ``pid_file`` is killed first. When this returns or raises
    (``KeyboardInterrupt``, a cancelled task), no process of the group is alive.
    """
    log_path, pid_file = Path(log_path), Path(pid_file)
    stop_stale_group(pid_file, log)
    tag = str(pid_file.resolve())
    env = dict(child_environment() if env is None else env, **{GROUP_TAG: tag})
    linux = sys.platform.startswith("linux")
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True, preexec_fn=die_with_parent if linux else None)
        try:
            pid_file.write_text(str(process.pid))
            if linux:
                # Wait without reaping: the ended leader keeps its pid, so the group id cannot be
                # reused by an unrelated process before the group is killed below.
                os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
            else:
                process.wait()
        finally:
            _kill_group(process.pid)
            if linux:  # SIGKILL is delivered asynchronously: return once the members are gone
                _wait_gone(_members(process.pid), 10.0)
            returncode = process.wait()
            pid_file.unlink(missing_ok=True)
    return returncode


def log_tail(log_path: Path, chars: int = 3000) -> str:
    """The last ``chars`` characters (about) of a log file, for an error message."""
    with open(log_path, "rb") as handle:
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - chars))
        return handle.read().decode("utf-8", errors="replace")


def stop_stale_group(pid_file: Path, log=print) -> None:
    """Kill what is left of an earlier, interrupted run that wrote ``pid_file``, then remove the file.

    Only processes of that group started by :func:`run_child` with this same pid file are killed
    (they carry its path in their environment), so a group id reused since then is left alone.
    """
    pid_file = Path(pid_file)
    if not pid_file.exists():
        return
    try:
        pgid = int(pid_file.read_text().strip())
    except ValueError:
        pgid = None
    if pgid is not None and not os.path.isdir("/proc"):
        _kill_group(pgid)  # no /proc to check who is in the group (not Linux)
    elif pgid is not None:
        members = _members(pgid, tag=str(pid_file.resolve()))
        if members:
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            _wait_gone(members, 5.0)
            log(f"stopped {len(members)} leftover processes of an interrupted run (process group {pgid}, "
                f"pid file {pid_file})")
    pid_file.unlink(missing_ok=True)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _members(pgid: int, tag: str | None = None) -> list[int]:
    """Live processes in group ``pgid`` (Linux /proc); with ``tag``, only those whose environment
    has ``GROUP_TAG=tag``."""
    marker = f"{GROUP_TAG}={tag}".encode()
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            # fields after "(comm)": state ppid pgrp ...; comm may hold spaces and parentheses
            state, _, pgrp = stat.rsplit(")", 1)[1].split()[:3]
            if int(pgrp) != pgid or state in "ZX":
                continue
            if tag is None or marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                members.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return members


def _wait_gone(pids: list[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False
