"""The project's Prefect automations, created (or brought up to date) on the server: ``make deploy`` runs it.

    python -m deployments.automations                      # against $PREFECT_API_URL
    python -m deployments.automations --heartbeat-timeout 300

In:  a Prefect API (``PREFECT_API_URL``) whose server runs its triggers service (``prefect server
     start`` does).
Out: the automation ``crash-flow-runs-without-heartbeat`` (one, whatever how often this runs: an
     existing one of that name is updated): a flow run that sent a ``prefect.flow-run.heartbeat``
     event and then neither another heartbeat nor a final state within ``--heartbeat-timeout``
     seconds is set Crashed.

Why: when the machine running a flow dies (preemption, OOM killer, a SIGKILLed worker and flow
process), no process is left to report it, and the run would stay Running for ever. Flow runs send
a heartbeat every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (30 for this project's deployments:
prefect.yaml and prefect.toml); the timeout should be several heartbeats long. The automation
matches every flow run on the server, so its default (600 s) is more than three heartbeats of
Prefect's default interval (180 s), which other projects' flows on a shared server keep. Subflow runs send
heartbeats too, so they end Crashed with their parent; their task runs are marked Crashed when the
run is retried (tasks/common/leftover_runs.py).
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

CRASH_AUTOMATION = "crash-flow-runs-without-heartbeat"
HEARTBEAT_TIMEOUT_S = 600  # > 3 of Prefect's default 180 s heartbeats: a shared server's other flows are not crashed
FINAL_EVENTS = {f"prefect.flow-run.{state}" for state in ("Completed", "Failed", "Cancelled", "Crashed")}


def crash_automation(heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S, name: str = CRASH_AUTOMATION) -> Automation:
    """The automation (not saved): proactive, one per flow run, after its first heartbeat."""
    return Automation(
        name=name,
        description=f"A flow run with no heartbeat and no final state for {heartbeat_timeout_s:g} s after a "
                    "heartbeat is marked Crashed: its process (or machine) died. Made by deployments/automations.py.",
        trigger=EventTrigger(
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *FINAL_EVENTS},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=heartbeat_timeout_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=(
            f"no heartbeat for {heartbeat_timeout_s:g} s: the flow run's process died (automation {name})"))],
    )


def ensure_crash_automation(heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S, name: str = CRASH_AUTOMATION) -> Automation:
    """Create the automation, or update the one of the same name; return it (with its id)."""
    wanted = crash_automation(heartbeat_timeout_s, name)
    try:
        existing = Automation.read(name=name)
    except ValueError:  # none of that name
        return wanted.create()
    wanted.id = existing.id
    wanted.update()
    return wanted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Create or update the project's Prefect automations.")
    parser.add_argument("--heartbeat-timeout", type=float, default=HEARTBEAT_TIMEOUT_S,
                        help="seconds without a heartbeat after which a Running flow run is marked Crashed")
    args = parser.parse_args(argv)
    if args.heartbeat_timeout <= 30:
        parser.error("--heartbeat-timeout must exceed the heartbeat interval (at least 30 s)")
    automation = ensure_crash_automation(args.heartbeat_timeout)
    print(f"automation {automation.name} ({automation.id}): flow runs silent for {args.heartbeat_timeout:g} s "
          "after a heartbeat become Crashed")


if __name__ == "__main__":
    main()
