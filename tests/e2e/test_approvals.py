"""End to end: approving ``phase-enforce`` runs from the command line, across a worker
restart.

On a real server, process work pool and worker (fixtures in conftest.py): a deployed
``phase-enforce`` run previews and suspends; the worker (and every flow-run process) is
killed and a new worker started, as the operator runbook's upgrade does; ``rollout
approvals`` lists the run by its full id with the preview's counts, and ``rollout
approve`` resumes it: it runs again in a new process and enforces exactly once. A second
run refuses an approval without a name (the server checks the input schema, the run
keeps waiting), then ends Failed, named Refused, with the guard's one line when the
count is wrong, changing nothing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import (
    COMMAND_SECONDS,
    FINAL_STATES,
    LEDGER,
    PHASE,
    POOL,
    PREFECT,
    ROLLOUT,
    ROOT,
    Deployed,
    Home,
    Processes,
    kill_group,
    marked_pids,
)

pytestmark = pytest.mark.slow

WAIT_SECONDS = 180
# How many accounts the registry requires 2FA of (read in a subprocess: see stack.py).
REQUIRED = """
import sqlite3, sys
from contextlib import closing

with closing(sqlite3.connect(sys.argv[1])) as connection:
    print(connection.execute(
        "select count(*) from accounts where tfa_required_at is not null"
    ).fetchone()[0])
"""


@dataclass
class Cli:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def rollout(processes: Processes, home: Home, *args: str) -> Cli:
    """The ``rollout`` CLI as a release manager runs it, pointed at this module's server."""
    done = subprocess.run(
        [*ROLLOUT, *args],
        env=home.env,
        cwd=processes.dir,
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS + WAIT_SECONDS,
        start_new_session=True,
    )
    return Cli(done.returncode, done.stdout, done.stderr)


def start_worker(processes: Processes, home: Home, name: str) -> subprocess.Popen[bytes]:
    return processes.start(
        name,
        [*PREFECT, "worker", "start", "--pool", POOL],
        # Polls every second, not every 10: the test waits on each pick-up.
        {**home.env, "ROLLOUT_PROJECT_DIR": str(ROOT), "PREFECT_WORKER_QUERY_SECONDS": "1"},
        processes.dir,
    )


def wait_for(processes: Processes, run_id: str, types: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        run = processes.api("GET", f"/flow_runs/{run_id}")
        if run["state_type"] in types:
            return run
        if run["state_type"] in FINAL_STATES or time.monotonic() > deadline:
            pytest.fail(
                f"flow run {run['name']} is {run['state_name']}, not {sorted(types)}: "
                f"{(run.get('state') or {}).get('message')}\n{processes.diagnostics()}"
            )
        time.sleep(0.5)


def start_enforce_run(processes: Processes, deployed: Deployed) -> str:
    deployment = deployed.deployments["phase-enforce"]
    run = processes.api(
        "POST", f"/deployments/{deployment['id']}/create_flow_run", {"parameters": {"phase": PHASE}}
    )
    return run["id"]


def required(processes: Processes, home: Home) -> int:
    out = processes.run(
        "required", [sys.executable, "-c", REQUIRED, str(home.path / "registry.db")], home.env
    )
    return int(out.strip().splitlines()[-1])


def applied_runs(processes: Processes, home: Home) -> list[list[Any]]:
    out = processes.run(
        "ledger",
        [sys.executable, "-c", LEDGER, str(home.path / "registry.db"), f"phase {PHASE}"],
        home.env,
    )
    return [row for row in json.loads(out.strip().splitlines()[-1]) if row[1] == "apply"]


def kill_all_but(processes: Processes, server: subprocess.Popen[bytes]) -> None:
    """What a host restart leaves: nothing of ours but the server (flow-run processes
    run in sessions of their own, so the worker's session is not enough)."""
    for pid in marked_pids(processes.marker):
        with suppress(ProcessLookupError):
            if os.getsid(pid) != server.pid:
                os.kill(pid, signal.SIGKILL)


@dataclass
class Waiting:
    run_id: str
    run_name: str


@pytest.fixture(scope="module")
def first_run(
    processes: Processes, deployed: Deployed, home: Home, server: subprocess.Popen[bytes]
) -> Waiting:
    """A phase-enforce run suspended for its approval, then the worker restarted."""
    worker = start_worker(processes, home, "worker-before-restart")
    run_id = start_enforce_run(processes, deployed)
    run = wait_for(processes, run_id, {"PAUSED"})
    kill_group(worker)
    kill_all_but(processes, server)
    start_worker(processes, home, "worker")
    return Waiting(run_id, run["name"])


def test_a_deployed_run_waits_suspended_with_its_input_schema(
    processes: Processes, first_run: Waiting
) -> None:
    run = processes.api("GET", f"/flow_runs/{first_run.run_id}")
    assert (run["state_type"], run["state_name"]) == ("PAUSED", "Suspended")
    details = run["state"]["state_details"]
    assert details["pause_reschedule"] is True  # resumed, it runs in a new process
    schema = processes.api(
        "GET", f"/flow_runs/{first_run.run_id}/input/{details['run_input_keyset']['schema']}"
    )
    # The fields required, with their constraints: the server refuses what misses them.
    # The count of accounts never warned is asked only over the plan's share: optional.
    assert set(schema["required"]) == {"expect", "expect_list", "approved_by"}
    assert schema["properties"]["expect_list"]["pattern"]
    assert schema["properties"]["accept_unreached"]["anyOf"][0]["minimum"] == 0
    assert schema["properties"]["approved_by"]["minLength"] == 1
    assert schema["properties"]["expect"]["minimum"] == 0


def test_approvals_lists_it_with_its_full_id_and_the_preview(
    processes: Processes, home: Home, first_run: Waiting
) -> None:
    listed = rollout(processes, home, "approvals", "--format", "json")
    assert listed.code == 0, listed.err
    [row] = [r for r in listed.json() if r["run_id"] == first_run.run_id]
    assert row["run_name"] == first_run.run_name
    assert row["phase"] == PHASE and row["state"] == "Suspended"
    assert row["accounts"] == home.expected_count and row["sessions"] >= 0
    assert row["artifact"] == f"phase-preview-{PHASE}"
    assert Path(row["preview_csv"]).is_file()
    assert row["expires"]  # the approval deadline
    assert re.fullmatch(r"[0-9a-f]{12}", row["list"])  # typed back with the count


def listed_list(processes: Processes, home: Home, run_id: str) -> str:
    """The fingerprint of a waiting run's preview list, as `rollout approvals` shows it."""
    listed = rollout(processes, home, "approvals", "--format", "json")
    [row] = [r for r in listed.json() if r["run_id"] == run_id]
    return row["list"]


def test_approve_resumes_it_after_the_restart_and_it_enforces_exactly_once(
    processes: Processes, home: Home, first_run: Waiting
) -> None:
    count = home.expected_count
    fingerprint = listed_list(processes, home, first_run.run_id)
    approved = rollout(
        processes, home, "approve", first_run.run_id, "--expect", str(count),
        "--expect-list", fingerprint, "--as", "ana", "--format", "json",
    )  # fmt: skip
    assert approved.code == 0, approved.err + processes.diagnostics()
    assert approved.json()["state"] == "Completed"
    run = processes.api("GET", f"/flow_runs/{first_run.run_id}")
    assert run["state_type"] == "COMPLETED", processes.diagnostics()
    # Enforced once, as ana through this run; the resumed pass took no second preview.
    [(_, _, state, actor)] = applied_runs(processes, home)
    assert actor == f"ana via prefect/{first_run.run_name}" and state == "succeeded"
    assert required(processes, home) == count
    assert len(list((home.path / "reports" / "previews").glob(f"{PHASE}-*.csv"))) == 1
    listed = rollout(processes, home, "approvals", "--format", "json")
    assert first_run.run_id not in {r["run_id"] for r in listed.json()}


@pytest.fixture(scope="module")
def second_run(processes: Processes, deployed: Deployed, home: Home, first_run: Waiting) -> Waiting:
    """Another phase-enforce run, waiting (on the restarted worker)."""
    run_id = start_enforce_run(processes, deployed)
    run = wait_for(processes, run_id, {"PAUSED"})
    return Waiting(run_id, run["name"])


def test_an_approval_without_a_name_is_refused_and_the_run_keeps_waiting(
    processes: Processes, home: Home, second_run: Waiting
) -> None:
    refused = rollout(
        processes, home, "approve", second_run.run_id, "--expect", "1",
        "--expect-list", "0123456789ab", "--as", "", "--no-wait",
    )  # fmt: skip
    assert refused.code == 2, refused.err
    assert "was refused" in refused.err and "approved_by" in refused.err
    # The same through the API, without the name or the list, a negative count, and a
    # list that is no fingerprint.
    for run_input in (
        {"expect": 1, "expect_list": "0123456789ab"},
        {"expect": 1, "approved_by": "ana"},
        {"expect": -1, "expect_list": "0123456789ab", "approved_by": "ana"},
        {"expect": 1, "expect_list": "87", "approved_by": "ana"},
    ):
        result = processes.api(
            "POST", f"/flow_runs/{second_run.run_id}/resume", {"run_input": run_input}
        )
        assert result["status"] == "REJECT", (run_input, result)
    run = processes.api("GET", f"/flow_runs/{second_run.run_id}")
    assert (run["state_type"], run["state_name"]) == ("PAUSED", "Suspended")


def test_a_wrong_count_fails_the_run_with_the_guard_s_line_and_changes_nothing(
    processes: Processes, home: Home, second_run: Waiting
) -> None:
    before = (required(processes, home), applied_runs(processes, home))
    wrong = home.expected_count + 1
    fingerprint = listed_list(processes, home, second_run.run_id)
    refused = rollout(
        processes, home, "approve", second_run.run_id, "--expect", str(wrong),
        "--expect-list", fingerprint, "--as", "ana",
    )  # fmt: skip
    line = (
        f"phase {PHASE} would change {home.expected_count} accounts, not the {wrong} "
        f"expected: run `rollout phase preview {PHASE}` and check"
    )
    assert refused.code == 3, refused.err + processes.diagnostics()
    assert line in refused.err
    run = processes.api("GET", f"/flow_runs/{second_run.run_id}")
    assert (run["state_type"], run["state_name"]) == ("FAILED", "Refused")
    assert run["state"]["message"] == line
    assert (required(processes, home), applied_runs(processes, home)) == before


def test_approve_refuses_a_run_that_is_not_waiting(
    processes: Processes, home: Home, second_run: Waiting
) -> None:
    again = rollout(
        processes, home, "approve", second_run.run_id, "--expect", "1",
        "--expect-list", "0123456789ab", "--as", "a",
    )  # fmt: skip
    assert again.code == 2 and "not waiting for an approval" in again.err
