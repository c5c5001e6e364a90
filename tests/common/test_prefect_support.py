"""Bounded submission of tasks, and the retry condition."""

import threading
import time

from prefect import flow, task
from prefect.states import Completed, Failed

from tasks.common.errors import InputError
from tasks.common.prefect_support import retry_unless_input_error, run_bounded

_lock = threading.Lock()
_running = {"now": 0, "peak": 0}


@task
def _sleepy(seconds: float, fail: bool = False) -> float:
    with _lock:
        _running["now"] += 1
        _running["peak"] = max(_running["peak"], _running["now"])
    time.sleep(seconds)
    with _lock:
        _running["now"] -= 1
    if fail:
        raise RuntimeError("planned failure")
    return seconds


@flow
def _bounded(limit: int):
    calls = [(0.6,), (0.1,), (0.1, True), (0.1,), (0.3,)]
    return run_bounded(_sleepy, calls, limit)


def test_run_bounded_respects_the_limit_and_keeps_order(prefect_harness):
    _running["peak"] = 0
    states = _bounded(2)
    assert _running["peak"] == 2
    assert [s.is_completed() for s in states] == [True, True, False, True, True]
    assert [s.result() for i, s in enumerate(states) if i != 2] == [0.6, 0.1, 0.1, 0.3]


def test_retry_condition():
    assert retry_unless_input_error(None, None, Failed(data=InputError("bad column"))) is False
    assert retry_unless_input_error(None, None, Failed(data=OSError("network"))) is True
    assert retry_unless_input_error(None, None, Completed(data=1)) is True
