"""Runs that a dead process left "Running": marked Crashed when their flow run runs again.

In:  the current flow run (Prefect's run context); call :func:`crash_leftover_runs` first thing in
     a flow's body.
Out: on a rerun of the flow run (a Retry from the UI, or a subflow run reattached by a retried
     parent), every subflow run below it and every task run of it and of those subflows that is
     still in a non-final state is set Crashed, with a message naming this rerun; returns how
     many. On a first run it asks nothing of the API and returns 0.

Why: a SIGKILLed flow process reports nothing. Its worker marks the top flow run Crashed (or,
when the worker died too, the heartbeat automation of deployments/automations.py does), but the
subflow runs and task runs that were running in that process would stay Running for ever. When
the flow run starts again none of them can still be running: the body has not started any yet.
"""

from __future__ import annotations

LEFTOVER_STATES = ("RUNNING", "PENDING", "SCHEDULED", "PAUSED", "CANCELLING")
PAGE = 200  # Prefect's server caps a page at PREFECT_SERVER_API_DEFAULT_LIMIT (200)
MAX_PAGES = 1_000


def crash_leftover_runs() -> int:
    """Set Crashed what an earlier attempt of this flow run left unfinished; return the number of runs."""
    from prefect import get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterParentFlowRunId, TaskRunFilter,
                                                TaskRunFilterFlowRunId, TaskRunFilterState, TaskRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.context import FlowRunContext
    from prefect.states import Crashed

    context = FlowRunContext.get()
    run = context.flow_run if context else None
    if run is None or run.run_count <= 1:
        return 0
    states = [StateType(name) for name in LEFTOVER_STATES]
    crashed = Crashed(message=f"left unfinished by an earlier attempt of flow run {run.name!r} ({run.id}), whose "
                              f"process died; marked when attempt {run.run_count} started")
    count = 0
    with get_client(sync_client=True) as client:
        tree, frontier = [run.id], [run.id]
        while frontier:  # subflow runs, any depth, read a page at a time (the API caps a page)
            children = []
            while page := client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)), offset=len(children),
                    limit=PAGE):
                children += page
            frontier = [child.id for child in children if child.id not in tree]
            tree += frontier
            for child in children:
                if child.state_type in states:
                    client.set_flow_run_state(child.id, crashed.model_copy(), force=True)
                    count += 1
        leftover = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=tree),
                                 state=TaskRunFilterState(type=TaskRunFilterStateType(any_=states)))
        marked: set = set()
        for _ in range(MAX_PAGES):  # a marked run leaves the filter, so each page holds new ones
            tasks = [task_run for task_run in client.read_task_runs(task_run_filter=leftover, limit=PAGE)
                     if task_run.id not in marked]
            if not tasks:
                break
            for task_run in tasks:
                client.set_task_run_state(task_run.id, crashed.model_copy(), force=True)
                marked.add(task_run.id)
        count += len(marked)
    if count:
        get_run_logger().warning("marked Crashed %d subflow and task runs that an earlier attempt of this flow run "
                                 "left unfinished", count)
    return count
