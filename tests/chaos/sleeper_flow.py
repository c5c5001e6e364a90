"""A flow for the heartbeat test, deployed from this file: a subflow whose task waits for a file."""

import time
from pathlib import Path

from prefect import flow, task

from tasks.common.leftover_runs import crash_leftover_runs


@task
def nap(release: str, limit_s: float = 600) -> bool:
    """Until ``release`` exists (at most ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return Path(release).exists()


@flow(name="chaos-child")
def child(release: str) -> bool:
    return nap(release)


@flow(name="chaos-sleeper")
def sleeper(release: str) -> bool:
    crash_leftover_runs()  # on a retry: what the killed attempt left Running ends Crashed
    return child(release)
