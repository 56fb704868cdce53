"""End to end: prefect.yaml deployed to a real Prefect server, one run on a real worker.

Unlike tests/flows (flows called in-process against the test harness), this goes the way
production does: ``prefect server start``, ``prefect work-pool create``, ``prefect deploy
--all`` from the repo root, ``prefect deployment run``, then ``prefect worker start
--run-once``, whose flow-run subprocess gets to this checkout through the pull step
(``set_working_directory`` to ``$ROLLOUT_PROJECT_DIR``).

How the processes are run, isolated and cleaned up: tests/e2e/stack.py; the server,
home and deployments are fixtures of tests/e2e/conftest.py.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.e2e.stack import (
    FINAL_STATES,
    LEDGER,
    PHASE,
    POOL,
    PREFECT,
    ROOT,
    SHARD_QUEUE,
    WORKER_SECONDS,
    Deployed,
    Home,
    Processes,
    kill_group,
)

pytestmark = pytest.mark.slow

CONFIG = yaml.safe_load((ROOT / "prefect.yaml").read_text())


@dataclass
class PreviewRun:
    flow_run: dict[str, Any] = field(repr=False)
    worker_exit: int


@pytest.fixture(scope="module")
def preview_run(processes: Processes, deployed: Deployed, home: Home) -> PreviewRun:
    """`prefect deployment run phase-preview/phase-preview`, then one worker pass."""
    processes.run(
        "deployment-run",
        [*PREFECT, "deployment", "run", "phase-preview/phase-preview", "--param", f"phase={PHASE}"],
        processes.env(),
    )
    deployment_id = deployed.deployments["phase-preview"]["id"]
    runs = processes.api(
        "POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}}
    )
    assert len(runs) == 1, runs
    worker = processes.start(
        "worker",
        [*PREFECT, "worker", "start", "--pool", POOL, "--run-once"],
        {**home.env, "ROLLOUT_PROJECT_DIR": str(ROOT)},
        processes.dir,  # not the checkout: the pull step must take the run there
    )
    try:
        code = worker.wait(timeout=WORKER_SECONDS)
    except subprocess.TimeoutExpired:
        kill_group(worker)
        pytest.fail(f"the worker still ran after {WORKER_SECONDS} s\n" + processes.diagnostics())
    # The worker waits for the runs it submitted; allow a last state write to land.
    deadline = time.monotonic() + 10
    flow_run = processes.api("GET", f"/flow_runs/{runs[0]['id']}")
    while flow_run["state_type"] not in FINAL_STATES and time.monotonic() < deadline:
        time.sleep(0.5)
        flow_run = processes.api("GET", f"/flow_runs/{runs[0]['id']}")
    return PreviewRun(flow_run, code)


# --- prefect deploy --all ------------------------------------------------------------


def schedules(listed: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Comparable schedules, from prefect.yaml or the API: (cron, rrule, parameters)."""
    found = []
    for item in listed:
        spec = item.get("schedule", item)  # the API nests it; prefect.yaml does not
        found.append(
            (
                spec.get("cron") or "",
                spec.get("rrule") or "",
                json.dumps(item.get("parameters") or {}, sort_keys=True),
            )
        )
    return sorted(found)


def test_deploy_creates_every_deployment_of_prefect_yaml(
    processes: Processes, deployed: Deployed
) -> None:
    assert set(deployed.deployments) == {d["name"] for d in CONFIG["deployments"]}
    for expected in CONFIG["deployments"]:
        created = deployed.deployments[expected["name"]]
        where = f"deployment {expected['name']}"
        assert created["entrypoint"] == expected["entrypoint"], where
        assert created["work_pool_name"] == expected["work_pool"]["name"] == POOL, where
        queue = SHARD_QUEUE if expected["name"] == "notify-shard" else "default"
        assert created["work_queue_name"] == queue, where
        assert created["pull_steps"] == CONFIG["pull"], where
        assert set(created["tags"]) == set(expected["tags"]), where
        assert created["parameters"] == (expected.get("parameters") or {}), where
        assert created["job_variables"] == expected["work_pool"]["job_variables"], where
        assert schedules(created["schedules"]) == schedules(expected.get("schedules") or []), where
    # Each answers to the flow/deployment name operators type.
    for name, created in deployed.deployments.items():
        found = processes.api("GET", f"/deployments/name/{created['flow_name']}/{name}")
        assert found["id"] == created["id"]


def test_deploy_writes_nothing_in_the_checkout(deployed: Deployed) -> None:
    entries_before, yaml_before = deployed.before
    entries_after, yaml_after = deployed.after
    assert set(entries_after) - set(entries_before) == set(), "prefect deploy created files"
    assert yaml_after == yaml_before, "prefect deploy rewrote prefect.yaml"


# --- a run on a worker ---------------------------------------------------------------


def test_the_preview_run_completes_on_a_worker(
    processes: Processes, preview_run: PreviewRun
) -> None:
    flow_run = preview_run.flow_run
    assert flow_run["state_type"] == "COMPLETED", (
        f"flow run {flow_run['name']} is {flow_run['state_type']}: "
        f"{(flow_run.get('state') or {}).get('message')}\n{processes.diagnostics()}"
    )
    assert flow_run["parameters"] == {"phase": PHASE}
    assert preview_run.worker_exit == 0, processes.diagnostics()


def test_the_run_sends_heartbeats_that_the_stopped_run_automation_matches(
    processes: Processes, preview_run: PreviewRun
) -> None:
    """A run killed with its worker says nothing more; its heartbeats stopping is what
    the automation `rollout: flow run stopped reporting` marks Crashed. The run on the
    worker sends them (prefect.yaml's PREFECT_FLOWS_HEARTBEAT_FREQUENCY reached its
    process), each carrying the tag the automation matches."""
    run_id = preview_run.flow_run["id"]
    query = {
        "filter": {
            "any_resource": {"id": [f"prefect.flow-run.{run_id}"]},
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "occurred": {"since": preview_run.flow_run["created"]},
        },
        "limit": 10,
    }
    deadline = time.monotonic() + 20  # the server stores events in batches
    beats = processes.api("POST", "/events/filter", query)["events"]
    while not beats and time.monotonic() < deadline:
        time.sleep(1)
        beats = processes.api("POST", "/events/filter", query)["events"]
    assert beats, f"no heartbeat from run {run_id}\n{processes.diagnostics()}"
    related = {(r["prefect.resource.role"], r["prefect.resource.id"]) for r in beats[0]["related"]}
    assert ("tag", "prefect.tag.rollout") in related


def test_its_artifact_names_the_account_count(
    processes: Processes, preview_run: PreviewRun, home: Home
) -> None:
    key = f"phase-preview-{PHASE}"
    # This run's: the server is the package's, and other modules' runs preview too.
    run_id = preview_run.flow_run["id"]
    artifacts = processes.api(
        "POST",
        "/artifacts/filter",
        {"artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [run_id]}}},
    )
    assert len(artifacts) == 1, f"artifacts {key}: {artifacts}\n{processes.diagnostics()}"
    [artifact] = artifacts
    assert artifact["type"] == "markdown"
    assert artifact["flow_run_id"] == run_id
    count = home.expected_count
    assert f"| accounts without 2FA to require it of | {count} |" in artifact["data"]
    assert f"expected count **{count}**" in artifact["data"]
    assert "--apply" not in artifact["data"]  # the approval is the way, not a CLI bypass


def test_it_writes_the_csv_and_its_record_but_nothing_to_the_registry(
    processes: Processes, preview_run: PreviewRun, home: Home
) -> None:
    previews = home.path / "reports" / "previews"
    csvs = sorted(previews.glob(f"{PHASE}-*.csv")) if previews.exists() else []
    assert len(csvs) == 1, f"{previews}: {csvs}\n{processes.diagnostics()}"
    with csvs[0].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == home.expected_count
    # The record beside the list names the Prefect run as its actor; the registry's
    # ledger has nothing: a preview writes nothing to the registry.
    record = json.loads(csvs[0].with_suffix(".json").read_text())
    assert record["actor"] == f"prefect/{preview_run.flow_run['name']}"
    assert record["accounts"] == home.expected_count and record["run_id"][:8] in csvs[0].name
    out = processes.run(
        "ledger",
        [sys.executable, "-c", LEDGER, str(home.path / "registry.db"), f"phase {PHASE}"],
        home.env,
    )
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_a_worker_of_another_machine_takes_no_run_but_the_notify_shards(
    processes: Processes, deployed: Deployed, home: Home, preview_run: PreviewRun
) -> None:
    """A worker started as the runbook says for the machines that only send (polling
    the notify-shards queue) leaves a report run alone: it would write the report, and
    a warehouse of its own, under that machine's ROLLOUT_HOME."""
    other_home = processes.dir / "other-machine-home"
    created = processes.api(
        "POST",
        f"/deployments/{deployed.deployments['report']['id']}/create_flow_run",
        {"parameters": {"as_of": "2022-02-01"}},
    )
    worker = processes.start(
        "worker-other-machine",
        [*PREFECT, "worker", "start", "--pool", POOL, "--work-queue", SHARD_QUEUE, "--run-once"],
        {**home.env, "ROLLOUT_HOME": str(other_home), "ROLLOUT_PROJECT_DIR": str(ROOT)},
        processes.dir,
    )
    try:
        assert worker.wait(timeout=WORKER_SECONDS) == 0, processes.diagnostics()
    except subprocess.TimeoutExpired:
        kill_group(worker)
        pytest.fail(f"the worker still ran after {WORKER_SECONDS} s\n" + processes.diagnostics())
    run = processes.api("GET", f"/flow_runs/{created['id']}")
    assert run["state_type"] == "SCHEDULED", run["state"]
    assert not other_home.exists()
