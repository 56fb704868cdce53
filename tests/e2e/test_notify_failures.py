"""End to end: failed sends fail a deployed ``notify`` run, and a retry from the
deployment sends them, each exactly once, through the sender production uses.

On a real server, process work pool and worker (fixtures in conftest.py), with the local
SendGrid server (``rollout dev sendgrid``) as a process of its own. As in production,
the key is in the Prefect Secret block ``sendgrid-api-key`` (made through the API), not
in the worker's environment; the runs get the dev server's address as a job variable.
For the top-100 notice day, in order, on one worker:

1. SendGrid refuses (400) the first 20 sends: the run ends Failed ("20 emails failed:
   ..."), after publishing its artifact;
2. a plain rerun ends Completed and sends nothing again;
3. with no key anywhere (Secret block deleted), a ``retry_failed`` run refuses to hand
   those emails to the file outbox: Failed, saying so, and no .eml;
4. with the Secret block back and the faults cleared, a ``retry_failed`` run ends
   Completed: each refused email reached SendGrid exactly once more, and none went twice.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from rollout.demo.crowd import NOTICE_DAY  # nothing else is due that day
from rollout.phases.approvals import PrefectApi
from tests.e2e.stack import (
    FINAL_STATES,
    POOL,
    PREFECT,
    ROOT,
    WORKER_SECONDS,
    Deployed,
    Home,
    Processes,
    start_dev_sendgrid,
)

REFUSED = 20
KEY = "SG.e2e-notify.not-a-real-key"
SECRET_BLOCK = "sendgrid-api-key"
# The top-100 notices as the registry has them (read in a subprocess: see stack.py).
NOTICES = """
import json, sqlite3, sys
from contextlib import closing

with closing(sqlite3.connect(sys.argv[1])) as connection:
    rows = connection.execute(
        "select id, state, sender from notifications"
        " where email = 'phase_notice' and phase = 'top-100' order by id"
    ).fetchall()
print(json.dumps(rows))
"""


# --- the local SendGrid server --------------------------------------------------------


@dataclass
class SendGrid:
    url: str

    def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        response = httpx.request(method, self.url + path, json=body, timeout=10)
        assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
        return response

    def outbox_ids(self) -> list[int]:
        """The outbox id of every message it accepted, oldest first."""
        ids = []
        for message in self.call("GET", "/dev/messages").json():
            body = message["body"]
            custom = body.get("custom_args") or body["personalizations"][0]["custom_args"]
            ids.append(int(custom["outbox_id"]))
        return ids


@pytest.fixture(scope="module")
def sendgrid(processes: Processes, home: Home) -> SendGrid:
    return SendGrid(start_dev_sendgrid(processes, home, KEY))


def diagnostics(processes: Processes) -> str:
    return processes.diagnostics(processes.dir / "sendgrid.log")


# --- the Secret block, through the API -----------------------------------------------


def save_secret(processes: Processes, value: str) -> None:
    block_type = processes.api("GET", "/block_types/slug/secret")
    [schema, *_] = processes.api(
        "POST",
        "/block_schemas/filter",
        {"block_schemas": {"block_type_id": {"any_": [block_type["id"]]}}},
    )
    processes.api(
        "POST",
        "/block_documents/",
        {
            "name": SECRET_BLOCK,
            "block_type_id": block_type["id"],
            "block_schema_id": schema["id"],
            "data": {"value": value},
        },
    )


def delete_secret(processes: Processes) -> None:
    found = processes.api(
        "POST", "/block_documents/filter", {"block_documents": {"name": {"any_": [SECRET_BLOCK]}}}
    )
    # Through rollout's client, which asks again after a busy server's 503 (a bare
    # httpx.delete failed the run on one).
    with PrefectApi(processes.api_url) as api:
        for document in found:
            response = api.call("DELETE", f"/block_documents/{document['id']}")
            assert response.is_success, response.text
    assert not processes.api(
        "POST", "/block_documents/filter", {"block_documents": {"name": {"any_": [SECRET_BLOCK]}}}
    )


# --- runs -----------------------------------------------------------------------------


@dataclass
class Run:
    flow_run: dict[str, Any] = field(repr=False)
    # After the run: every outbox id the dev server accepted, and the registry's notices.
    delivered: list[int]
    notices: list[tuple[int, str, str | None]]

    @property
    def state(self) -> tuple[str, str, str]:
        state = self.flow_run.get("state") or {}
        return self.flow_run["state_type"], self.flow_run["state_name"], state.get("message") or ""

    def failed_ids(self) -> set[int]:
        return {id for id, state, _ in self.notices if state == "failed"}


@dataclass
class Stack:
    processes: Processes
    deployed: Deployed
    home: Home
    sendgrid: SendGrid

    def notices(self) -> list[tuple[int, str, str | None]]:
        out = self.processes.run(
            "notices",
            [sys.executable, "-c", NOTICES, str(self.home.path / "registry.db")],
            self.home.env,
        )
        return [tuple(row) for row in json.loads(out.strip().splitlines()[-1])]

    def notify(self, **parameters: Any) -> Run:
        """A run of the notify deployment for the notice day, to its final state."""
        deployment = self.deployed.deployments["notify"]
        created = self.processes.api(
            "POST",
            f"/deployments/{deployment['id']}/create_flow_run",
            {
                # Years after the notice day: queued however late (held back otherwise).
                "parameters": {"as_of": NOTICE_DAY.isoformat(), "late": True, **parameters},
                "job_variables": {"env": {"ROLLOUT_SENDGRID_URL": self.sendgrid.url}},
            },
        )
        deadline = time.monotonic() + WORKER_SECONDS
        while True:
            run = self.processes.api("GET", f"/flow_runs/{created['id']}")
            if run["state_type"] in FINAL_STATES:
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"flow run {run['name']} still {run['state_name']} after "
                    f"{WORKER_SECONDS} s\n{diagnostics(self.processes)}"
                )
            time.sleep(0.5)
        return Run(run, self.sendgrid.outbox_ids(), self.notices())


@pytest.fixture(scope="module")
def stack(processes: Processes, deployed: Deployed, home: Home, sendgrid: SendGrid) -> Stack:
    """One worker for every run, without SENDGRID_API_KEY: the key is the Secret block's."""
    env = {
        **home.env,
        "ROLLOUT_PROJECT_DIR": str(ROOT),
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # the test waits on each pick-up
        "NO_PROXY": "127.0.0.1,localhost",
    }
    assert "SENDGRID_API_KEY" not in env and "ROLLOUT_SENDGRID_URL" not in env
    processes.start("worker", [*PREFECT, "worker", "start", "--pool", POOL], env, processes.dir)
    return Stack(processes, deployed, home, sendgrid)


@pytest.fixture(scope="module")
def refused(stack: Stack) -> Run:
    save_secret(stack.processes, KEY)
    stack.sendgrid.call("POST", "/dev/faults", [{"status": 400}] * REFUSED)
    return stack.notify()


@pytest.fixture(scope="module")
def rerun(stack: Stack, refused: Run) -> Run:
    return stack.notify()


@pytest.fixture(scope="module")
def keyless(stack: Stack, rerun: Run) -> Run:
    delete_secret(stack.processes)
    try:
        return stack.notify(retry_failed=True)
    finally:
        save_secret(stack.processes, KEY)


@pytest.fixture(scope="module")
def retried(stack: Stack, keyless: Run) -> Run:
    stack.sendgrid.call("DELETE", "/dev/faults")
    return stack.notify(retry_failed=True)


# --- the tests ------------------------------------------------------------------------


def test_refused_sends_fail_the_run_naming_how_many(stack: Stack, refused: Run) -> None:
    state_type, state_name, message = refused.state
    assert (state_type, state_name) == ("FAILED", "Failed"), message + diagnostics(stack.processes)
    assert message.startswith(f"{REFUSED} emails failed: SendGrid answered 400"), message
    assert "\n" not in message and "Traceback" not in message
    assert stack.sendgrid.call("GET", "/dev/faults").json() == []  # all 20 used up
    # The rest went, through SendGrid, each once.
    sent = {id for id, state, _ in refused.notices if state == "sent"}
    assert len(refused.failed_ids()) == REFUSED and sent
    assert Counter(refused.delivered) == Counter(sent)
    assert {sender for _, state, sender in refused.notices if state != "skipped"} == {"sendgrid"}


def test_its_artifact_is_published_with_the_failures(stack: Stack, refused: Run) -> None:
    key = f"notify-{NOTICE_DAY}"
    found = stack.processes.api(
        "POST",
        "/artifacts/filter",
        {"artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [refused.flow_run["id"]]}}},
    )
    assert len(found) == 1, found
    [artifact] = found
    assert artifact["type"] == "markdown"
    sent = len(refused.delivered)
    assert (
        f"| failed | {REFUSED} |" in artifact["data"] and f"| sent | {sent} |" in artifact["data"]
    )
    assert "## Failures" in artifact["data"]
    assert all(f"#{id}" in artifact["data"] for id in refused.failed_ids())
    assert KEY not in artifact["data"]


def test_a_plain_rerun_completes_and_does_not_retry_them(refused: Run, rerun: Run) -> None:
    assert rerun.state[:2] == ("COMPLETED", "Completed"), rerun.state
    assert rerun.delivered == refused.delivered
    assert rerun.notices == refused.notices


def test_without_a_key_the_file_outbox_refuses_them(stack: Stack, rerun: Run, keyless: Run) -> None:
    state_type, _, message = keyless.state
    assert state_type == "FAILED", message
    assert message.startswith(
        f"{REFUSED} emails waiting to be sent were last attempted through SendGrid"
    ), message
    assert "file outbox" in message and "SENDGRID_API_KEY" in message
    assert "Traceback" not in message
    assert not list(stack.home.path.rglob("*.eml"))
    assert keyless.notices == rerun.notices and keyless.delivered == rerun.delivered


def test_a_retry_from_the_deployment_sends_each_refused_email_exactly_once(
    stack: Stack, refused: Run, keyless: Run, retried: Run
) -> None:
    state_type, state_name, message = retried.state
    assert (state_type, state_name) == ("COMPLETED", "Completed"), message + diagnostics(
        stack.processes
    )
    assert retried.flow_run["parameters"]["retry_failed"] is True
    again = Counter(retried.delivered) - Counter(keyless.delivered)
    assert again == Counter(refused.failed_ids())  # each of the 20, once more
    assert max(Counter(retried.delivered).values()) == 1  # no email went twice
    assert {state for _, state, _ in retried.notices} <= {"sent", "skipped"}
    assert not list(stack.home.path.rglob("*.eml"))


def test_the_key_shows_in_no_run_log_nor_the_worker_s(
    stack: Stack, refused: Run, rerun: Run, keyless: Run, retried: Run
) -> None:
    ids = [run.flow_run["id"] for run in (refused, rerun, keyless, retried)]
    logs = stack.processes.api(
        "POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": ids}}, "limit": 200}
    )
    text = "\n".join(log["message"] for log in logs)
    assert "sending the outbox through sendgrid" in text  # the runs' logs did arrive
    assert KEY not in text
    assert KEY not in (stack.processes.dir / "worker.log").read_text(errors="replace")
