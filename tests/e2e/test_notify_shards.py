"""End to end: a ``notify`` run fans its sending out over four ``notify-shard`` runs,
picked up by two workers (two processes standing for two machines) of one process work
pool, with the registry on PostgreSQL, against the local SendGrid server: every one of
2,000 queued emails is delivered once and both workers did work. Then the same with one
worker, and the shard runs it started, killed mid-run (a machine that dies): the run
still completes, the other worker's shards take over the dead ones' rows when their
leases run out, and at most what was in flight on the dead machine went twice. Then a
cancel of the run stops every shard.

The emails are the phase notices of a crowd of 2,000 maintainers in the top-100 cohort
(rollout.demo.crowd), queued once with `rollout notify queue`; each test sends them from
a fresh outbox state.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from flows.common import cell
from flows.notify import OVERTAKEN_ROW, SHARD_COUNTS_KEY
from rollout.demo.crowd import NOTICE_DAY, add_crowd
from rollout.registry.engine import make_engine
from rollout.registry.models import Notification
from tests.conftest import fresh_postgres_schema
from tests.e2e.stack import (
    FINAL_STATES,
    POOL,
    PREFECT,
    ROLLOUT,
    ROOT,
    SHARD_QUEUE,
    WORKER_SECONDS,
    Deployed,
    Home,
    Processes,
    start_dev_sendgrid,
)

pytestmark = pytest.mark.postgres

KEY = "SG.e2e-shards.not-a-real-key"
EMAILS = 2000
SHARDS = 4
CONCURRENCY = 4
# Lengthened by the drain to what one SendGrid attempt and its margin take (lease_for):
# 30 s with the workers' client waits below, against 73 s with the defaults. The killed
# worker's rows wait that long to be taken over.
LEASE_SECONDS = 5
SENDGRID_WAITS = {
    "ROLLOUT_SENDGRID_TIMEOUT_SECONDS": "5",
    "ROLLOUT_SENDGRID_RETRY_WAIT_SECONDS": "2",
}
GRACE_SECONDS = 5
WORKER_VARIABLE = "ROLLOUT_TEST_WORKER"


class Stack:
    def __init__(
        self, processes: Processes, deployed: Deployed, env: dict[str, str], sendgrid: str
    ):
        self.processes, self.deployed, self.env, self.sendgrid = (
            processes,
            deployed,
            env,
            sendgrid,
        )

    def outbox(self, requeue: bool = False) -> dict[int, str]:
        """Each notification's state; with ``requeue``, the sent ones queued again first."""
        engine = make_engine(self.env["ROLLOUT_REGISTRY_URL"])
        try:
            with engine.begin() as connection:
                if requeue:
                    connection.execute(
                        update(Notification)
                        .where(Notification.state == "sent")
                        .values(state="queued", sent_at=None, message_id=None,
                                lease_expires_at=None)
                    )  # fmt: skip
                return dict(connection.execute(select(Notification.id, Notification.state)).all())
        finally:
            engine.dispose()

    def delivered(self) -> Counter[int]:
        messages = httpx.get(f"{self.sendgrid}/dev/messages", timeout=30).json()
        return Counter(int(m["body"]["custom_args"]["outbox_id"]) for m in messages)

    def worker(self, name: str, *, shards_only: bool = False) -> Any:
        """A worker of the pool; ``shards_only``: as on a machine other than the
        ROLLOUT_HOME host, which polls the notify-shards queue alone (runbook 6)."""
        env = {
            **self.env,
            "ROLLOUT_PROJECT_DIR": str(ROOT),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "SENDGRID_API_KEY": KEY,
            "ROLLOUT_SENDGRID_URL": self.sendgrid,
            **SENDGRID_WAITS,
            WORKER_VARIABLE: name,
        }
        # Room for the notify run and two shards each (or three shards on the shards-only
        # worker, when it polls first): the shards spread over both.
        queues = ["--work-queue", SHARD_QUEUE] if shards_only else []
        return self.processes.start(
            f"worker-{name}",
            [*PREFECT, "worker", "start", "--pool", POOL, "--limit", "3", *queues],
            env,
            self.processes.dir,
        )

    def start_notify(self, **overrides: Any) -> str:
        deployment = self.deployed.deployments["notify"]
        parameters = {
            "as_of": NOTICE_DAY.isoformat(),
            "shards": SHARDS,
            "concurrency": CONCURRENCY,
            "lease_seconds": LEASE_SECONDS,
            **overrides,
        }
        created = self.processes.api(
            "POST",
            f"/deployments/{deployment['id']}/create_flow_run",
            {"parameters": parameters},
        )
        return created["id"]

    def wait(self, run_id: str, types: set[str]) -> dict[str, Any]:
        deadline = time.monotonic() + WORKER_SECONDS
        while True:
            run = self.processes.api("GET", f"/flow_runs/{run_id}")
            if run["state_type"] in types or run["state_type"] in FINAL_STATES:
                return run
            if time.monotonic() > deadline:
                pytest.fail(
                    f"flow run {run['name']} still {run['state_name']}\n"
                    + self.processes.diagnostics()
                )
            time.sleep(0.5)

    def shard_runs(self, parent_id: str) -> list[dict[str, Any]]:
        deployment = self.deployed.deployments["notify-shard"]
        runs = self.processes.api(
            "POST",
            "/flow_runs/filter",
            {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}},
        )
        parent_tasks = {
            t["id"]
            for t in self.processes.api(
                "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [parent_id]}}}
            )
        }
        return [r for r in runs if r.get("parent_task_run_id") in parent_tasks]

    def artifacts(self, run_ids: list[str], key: str) -> list[dict[str, Any]]:
        """The artifacts ``key`` of the flow runs ``run_ids``."""
        return self.processes.api(
            "POST",
            "/artifacts/filter",
            {"artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": run_ids}}},
        )

    def overtaken_row(self, run_id: str) -> str:
        """The notify run's artifact's row of the emails taken over."""
        [artifact] = self.artifacts([run_id], f"notify-{NOTICE_DAY.isoformat()}")
        row = f"| {cell(OVERTAKEN_ROW)} | "
        [line] = [line for line in artifact["data"].splitlines() if line.startswith(row)]
        return line.removeprefix(row).removesuffix(" |")


def _environs() -> dict[int, list[bytes]]:
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        with suppress(OSError, ValueError):
            found[int(entry.name)] = (entry / "environ").read_bytes().split(b"\0")
    return found


def pids_of_worker(name: str) -> list[int]:
    """The worker's processes and the flow runs it started (each in a session of its own)."""
    needle = f"{WORKER_VARIABLE}={name}".encode()
    return [pid for pid, environ in _environs().items() if needle in environ]


def worker_running(run_id: str) -> str | None:
    """Which worker started the flow run (its process carries the run's id)."""
    needle = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    for environ in _environs().values():
        if needle in environ:
            for item in environ:
                if item.startswith(f"{WORKER_VARIABLE}=".encode()):
                    return item.split(b"=", 1)[1].decode()
    return None


@pytest.fixture(scope="module")
def registry_url() -> Iterator[str]:
    """The module's PostgreSQL registry (a schema of its own): the workers' machines
    share it, as they would in production."""
    with fresh_postgres_schema() as url:
        yield url


@pytest.fixture(scope="module")
def stack(registry_url: str, processes: Processes, deployed: Deployed, home: Home) -> Stack:
    env = {**home.env, "ROLLOUT_REGISTRY_URL": registry_url}
    processes.run("db-upgrade", [*ROLLOUT, "db", "upgrade"], env)
    add_crowd(registry_url, EMAILS)
    processes.run(
        "queue",
        # Years after the notice day: queued however late (held back otherwise).
        [*ROLLOUT, "notify", "queue", "--as-of", NOTICE_DAY.isoformat(), "--late", "--apply"],
        env,
    )
    url = start_dev_sendgrid(processes, home, KEY)
    return Stack(processes, deployed, env, url)


@pytest.fixture(scope="module")
def first(stack: Stack) -> tuple[dict[str, Any], dict[int, str], list[dict[str, Any]]]:
    """The run on two workers, nothing killed."""
    stack.worker("a")
    run_id = stack.start_notify()
    stack.wait(run_id, {"RUNNING"})  # on worker a: b joins for the shards
    stack.worker("b", shards_only=True)
    run = stack.wait(run_id, FINAL_STATES)
    return run, stack.outbox(), stack.shard_runs(run_id)


def test_shards_on_two_workers_deliver_each_email_once(
    stack: Stack, first: tuple[dict[str, Any], dict[int, str], list[dict[str, Any]]]
) -> None:
    run, outbox, shards = first
    assert run["state_type"] == "COMPLETED", run["state"]["message"] + stack.processes.diagnostics()
    sent = {i for i, state in outbox.items() if state == "sent"}
    assert len(sent) == EMAILS and set(outbox.values()) == {"sent"}
    delivered = stack.delivered()
    assert set(delivered) == sent and set(delivered.values()) == {1}
    assert len(shards) == SHARDS and {s["state_type"] for s in shards} == {"COMPLETED"}
    # Both machines did work: each worker started some of the shards.
    logs = {name: (stack.processes.dir / f"worker-{name}.log").read_text() for name in "ab"}
    for name, log in logs.items():
        assert any(s["id"] in log for s in shards), f"worker {name} ran no shard"
    # Each shard run told its counts where the notify run reads them; it sums them.
    told = [
        json.loads(a["data"])[0]
        for a in stack.artifacts([s["id"] for s in shards], SHARD_COUNTS_KEY)
    ]
    assert len(told) == SHARDS and sum(t["sent"] for t in told) == EMAILS
    assert stack.overtaken_row(run["id"]) == str(sum(t["overtaken"] for t in told))


def test_a_worker_killed_mid_run_leaves_the_run_to_complete(
    stack: Stack, first: tuple[dict[str, Any], dict[int, str], list[dict[str, Any]]]
) -> None:
    httpx.delete(f"{stack.sendgrid}/dev/messages", timeout=30)
    queued = len(stack.outbox(requeue=True))
    # The dead machine's shard runs are called off this long after the outbox drained.
    run_id = stack.start_notify(straggler_grace_seconds=GRACE_SECONDS)
    deadline = time.monotonic() + WORKER_SECONDS
    while sum(stack.delivered().values()) < 300:
        assert time.monotonic() < deadline, stack.processes.diagnostics()
        time.sleep(0.1)
    # The machine without the notify run dies: its worker and the shard runs it started.
    holder = worker_running(run_id)
    assert holder in ("a", "b"), "the notify run's process was not found"
    doomed = "b" if holder == "a" else "a"
    assert pids_of_worker(doomed)
    for pid in pids_of_worker(doomed):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    run = stack.wait(run_id, FINAL_STATES)
    assert run["state_type"] == "COMPLETED", run["state"]["message"] + stack.processes.diagnostics()
    # The dead machine's shard runs never reported: called off after the grace, none
    # left Running.
    shards = stack.shard_runs(run_id)
    assert {s["state_type"] for s in shards} <= {"COMPLETED", "CANCELLED"}
    # What the dead shards had taken over from them is not known, and the artifact says so.
    completed = [s["id"] for s in shards if s["state_type"] == "COMPLETED"]
    told = [json.loads(a["data"])[0] for a in stack.artifacts(completed, SHARD_COUNTS_KEY)]
    assert len(told) == len(completed) < SHARDS
    assert stack.overtaken_row(run_id) == cell(
        f"{sum(t['overtaken'] for t in told)} (told by {len(completed)} of the {SHARDS} "
        "shard runs: one that did not complete tells none)"
    )
    outbox = stack.outbox()
    assert set(outbox.values()) <= {"sent", "skipped"}
    delivered = stack.delivered()
    # A send stalled when its shard was stopped may have reached SendGrid unrecorded
    # (put back, it goes again next run): the recorded ones all did.
    assert {i for i, s in outbox.items() if s == "sent"} <= set(delivered)
    httpx.delete(f"{stack.sendgrid}/dev/faults", timeout=30)
    twice = [i for i, n in delivered.items() if n > 1]
    # At most what the dead machine's shards had in flight: CONCURRENCY each. How many
    # shards it ran is the pool's choice (up to its worker's limit of 3), not always two:
    # the shard runs that did not complete are the ones that died with it.
    dead_shards = SHARDS - len(completed)
    assert len(twice) <= dead_shards * CONCURRENCY and max(delivered.values()) <= 2
    assert queued == len(outbox)


def test_cancelling_the_run_stops_every_shard_and_puts_back_what_they_held(
    stack: Stack, first: tuple[dict[str, Any], dict[int, str], list[dict[str, Any]]]
) -> None:
    # Both workers again (the last test killed one).
    if not pids_of_worker("a"):
        stack.worker("a")
    if not pids_of_worker("b"):
        stack.worker("b", shards_only=True)
    httpx.delete(f"{stack.sendgrid}/dev/messages", timeout=30)
    stack.outbox(requeue=True)
    # A slow SendGrid (1 s a message), so the cancel lands while much is left to send.
    stalls = [{"stall": 1.0}] * EMAILS
    httpx.post(f"{stack.sendgrid}/dev/faults", json=stalls, timeout=30).raise_for_status()
    run_id = stack.start_notify()
    deadline = time.monotonic() + WORKER_SECONDS
    while sum(stack.delivered().values()) < 100:
        assert time.monotonic() < deadline, stack.processes.diagnostics()
        time.sleep(0.1)
    stack.processes.api(
        "POST",
        f"/flow_runs/{run_id}/set_state",
        {"state": {"type": "CANCELLING", "name": "Cancelling"}},
    )
    run = stack.wait(run_id, {"CANCELLED"})
    assert run["state_type"] == "CANCELLED", stack.processes.diagnostics()
    shards = stack.shard_runs(run_id)
    deadline = time.monotonic() + WORKER_SECONDS
    while {s["state_type"] for s in shards} - {"CANCELLED", "COMPLETED"}:
        assert time.monotonic() < deadline, (
            f"shards still {[s['state_type'] for s in shards]}\n" + stack.processes.diagnostics()
        )
        time.sleep(1)
        shards = stack.shard_runs(run_id)
    # No shard process is left, none holds a row, and what was not sent is queued.
    deadline = time.monotonic() + 60
    while any(worker_running(s["id"]) for s in shards):
        assert time.monotonic() < deadline, "a shard's process outlived the cancel"
        time.sleep(0.5)
    outbox = stack.outbox()
    assert "sending" not in outbox.values()
    left = sum(1 for state in outbox.values() if state == "queued")
    assert 0 < left < len(outbox)
    delivered = stack.delivered()
    # A send stalled when its shard was stopped may have reached SendGrid unrecorded
    # (put back, it goes again next run): the recorded ones all did.
    assert {i for i, s in outbox.items() if s == "sent"} <= set(delivered)
    httpx.delete(f"{stack.sendgrid}/dev/faults", timeout=30)
