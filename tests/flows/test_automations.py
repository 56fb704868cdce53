"""deploy/automations/: the alert definitions are what `prefect automation create` accepts.

No server: each automation is validated with the model the CLI validates it with
(AutomationCore). That model ignores unknown keys and keeps unknown action types as
UnknownAction, so a typo would be dropped silently: these tests refuse both.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
FILE = ROOT / "deploy" / "automations" / "rollout-alerts.yaml"
# The notification block's id, filled in by the runbook's `sed` before creating them.
PLACEHOLDER = "00000000-0000-0000-0000-000000000000"


def automations() -> list[dict[str, Any]]:
    return yaml.safe_load(FILE.read_text())["automations"]


def names() -> list[str]:
    return [a["name"] for a in automations()]


def as_installed(raw: dict[str, Any]) -> Any:
    """The automation as the runbook creates it: the block id filled in, then the CLI's
    own validation."""
    from prefect.events.schemas.automations import AutomationCore

    text = yaml.safe_dump(raw).replace(PLACEHOLDER, str(uuid.uuid4()))
    return AutomationCore.model_validate(yaml.safe_load(text))


@pytest.mark.parametrize("name", names())
def test_each_automation_is_valid_and_nothing_in_it_is_ignored(name: str) -> None:
    from prefect.events.actions import UnknownAction

    [raw] = [a for a in automations() if a["name"] == name]
    automation = as_installed(raw)
    assert automation.enabled and automation.description.strip()
    assert set(raw) <= set(type(automation).model_fields)
    assert set(raw["trigger"]) <= set(type(automation.trigger).model_fields)
    for action, raw_action in zip(automation.actions, raw["actions"], strict=True):
        assert not isinstance(action, UnknownAction), raw_action["type"]
        assert set(raw_action) <= set(type(action).model_fields)


def test_every_action_notifies_through_the_block_the_runbook_fills_in() -> None:
    for raw in automations():
        for action in raw["actions"]:
            if action["type"] == "change-flow-run-state":  # the stopped runs' (below)
                continue
            assert action["type"] == "send-notification"
            assert action["block_document_id"] == PLACEHOLDER
    runbook = (ROOT / "docs" / "runbook-operator.md").read_text()
    assert PLACEHOLDER in runbook and "deploy/automations/rollout-alerts.yaml" in runbook


def test_flow_run_alerts_match_the_tag_every_deployment_carries() -> None:
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert all("rollout" in d["tags"] for d in deployments)
    for raw in automations():
        trigger = raw["trigger"]
        if trigger["match"]["prefect.resource.id"] == "prefect.flow-run.*":
            assert trigger["match_related"] == {
                "prefect.resource.role": "tag",
                "prefect.resource.id": "prefect.tag.rollout",
            }


def test_failed_runs_alert_at_once_and_paused_runs_after_four_hours() -> None:
    from prefect.events.schemas.automations import Posture

    failed, _, paused, no_worker = (as_installed(raw).trigger for raw in automations())
    assert failed.posture is Posture.Reactive
    assert {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"} <= failed.expect

    assert paused.posture is Posture.Proactive
    # A deployed phase-enforce run waits Suspended; one run outside a deployment, Paused.
    assert paused.after == {"prefect.flow-run.Paused", "prefect.flow-run.Suspended"}
    # Waiting itself must not count as the awaited change, or the alert would never fire.
    assert not paused.after & paused.expect
    assert {"prefect.flow-run.Running", "prefect.flow-run.Resuming"} <= paused.expect
    assert paused.within.total_seconds() == 4 * 3600
    # One alert per paused run, not one for all runs together.
    assert paused.for_each == {"prefect.resource.id"}

    assert no_worker.posture is Posture.Proactive
    # The default queue, which only the ROLLOUT_HOME host's worker polls: the pool stays
    # ready while a shard-only worker of another machine polls it, starting none of
    # the scheduled runs.
    assert no_worker.after == {"prefect.work-queue.not-ready"}
    assert no_worker.expect == {"prefect.work-queue.ready"}
    assert no_worker.match.model_dump()["prefect.resource.name"] == "default"
    [pool] = (
        no_worker.match_related
        if isinstance(no_worker.match_related, list)
        else [no_worker.match_related]
    )
    assert pool.model_dump() == {
        "prefect.resource.role": "work-pool",
        "prefect.resource.name": "rollout-process",
    }


def test_a_run_that_stops_sending_heartbeats_is_marked_crashed_so_the_failed_alert_fires() -> None:
    """A run killed with its worker (systemd's final SIGKILL) reports nothing and stayed
    Running for ever: Prefect's server does not look for such runs by itself. Every run
    sends a heartbeat (the frequency prefect.yaml pins for every deployment); a run
    whose heartbeats stop, with none of the states that end it or its process, is set
    Crashed, a state the failed-run alert fires on."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import Posture

    [raw] = [a for a in automations() if a["name"] == "rollout: flow run stopped reporting"]
    automation = as_installed(raw)
    trigger = automation.trigger
    assert trigger.posture is Posture.Proactive
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    final = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Crashed", "Cancelled")}
    # A deployed phase-enforce run waiting for approval is Suspended, its process gone:
    # no heartbeat comes, and it must not be crashed for that.
    waiting = {"prefect.flow-run.Paused", "prefect.flow-run.Suspended"}
    assert {"prefect.flow-run.heartbeat"} | final | waiting <= trigger.expect
    assert not {"prefect.flow-run.Running", "prefect.flow-run.Pending"} & trigger.expect
    assert trigger.for_each == {"prefect.resource.id"}
    [action] = automation.actions
    assert isinstance(action, ChangeFlowRunState) and action.state is StateType.CRASHED
    assert not action.force  # a run that ended meanwhile keeps its state
    failed = as_installed(automations()[0]).trigger
    assert "prefect.flow-run.Crashed" in failed.expect

    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    for deployment in deployments:
        env = deployment["work_pool"]["job_variables"]["env"]
        frequency = int(env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"])
        # Several heartbeats missed, not one late: a blip must not crash a live run.
        assert trigger.within.total_seconds() >= 5 * frequency, deployment["name"]
    runbook = (ROOT / "docs" / "runbook-operator.md").read_text()
    assert "rollout: flow run stopped reporting" in runbook
