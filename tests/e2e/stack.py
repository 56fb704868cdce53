"""The real parts the end-to-end tests drive: a Prefect server, a process work pool,
`prefect deploy --all`, workers, and the ``rollout`` CLI, each in a subprocess.

Everything runs in subprocesses with explicit environments: Prefect gets its own
PREFECT_HOME (and server database) in a temp dir, and no inherited PREFECT_* or
ROLLOUT_* variable reaches any of them. So nothing touches ~/.prefect, the repo's var/,
or the in-process harness other tests share. The home is prepared with the ``rollout``
CLI, one process per command as an operator would, and read back in subprocesses too:
this process never opens its SQLite registry (in-process, a pooled connection left
open by one command next to ADBC's own SQLite copy can corrupt it: see
rollout/registry/bulk.py).

Each process starts in a session of its own and carries a marker variable its
descendants inherit; teardown kills every such session, then any process still
carrying the marker (the process worker starts each flow run in a session of its own),
pass or fail. Output goes to log files whose tails the failure messages quote.

The fixtures over these are in conftest.py: one server and one `prefect deploy --all`
for the session, and per test module a :class:`Processes` of its own (its marker, its
logs, its workers), whose teardown leaves the server and cancels the runs it left.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rollout.phases.approvals import PrefectApi
from tests.support.processes import (
    kill_carrying,
    kill_group,
    kill_groups,
    pids_carrying,
    start_logged,
)
from tests.support.serving import free_port, wait_until_answering

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "plans" / "npm-2022.yaml"
POOL = "rollout-process"
# The queue of the pool that workers on other machines than the ROLLOUT_HOME host poll.
SHARD_QUEUE = "notify-shards"
DAY = "2022-02-01"
PHASE = "top-100"
PREFECT = [sys.executable, "-m", "prefect"]
ROLLOUT = [sys.executable, "-m", "rollout"]
MARKER = "ROLLOUT_TEST_E2E_ID"  # inherited by every process a test module starts
OPEN_STATES = ["SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"]

SERVER_STARTUP_SECONDS = 120
COMMAND_SECONDS = 120
WORKER_SECONDS = 180
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

# Read in a subprocess: what the preview should find, and that the ledger has nothing.
EXPECTED_COUNT = """
from rollout.phases.enforce import preview_phase
from rollout.runtime import Runtime

with Runtime() as runtime:
    plan = runtime.plan
    print(preview_phase(runtime.registry, plan, plan.phase(%r)).count)
"""
LEDGER = """
import json, sqlite3, sys
from contextlib import closing

with closing(sqlite3.connect(sys.argv[1])) as connection:
    rows = connection.execute(
        "select id, mode, state, actor from plan_runs where step = ?", (sys.argv[2],)
    ).fetchall()
print(json.dumps(rows))
"""


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"--- {path.name}: (no file)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {path.name} (last {len(text)} lines):\n" + "\n".join(text)


def marked_pids(marker: str) -> list[int]:
    """Live processes carrying this marker (Linux /proc; elsewhere none are found)."""
    return pids_carrying(MARKER, marker)


@dataclass
class Processes:
    """The processes a test module (or the package: the server) starts, their logs, and
    the one Prefect server's address."""

    dir: Path
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    port: int = field(default_factory=free_port)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)
    server_log: Path | None = None  # the package's server, for a module's diagnostics

    def for_module(self, folder: Path) -> Processes:
        """A module's own processes on this server: its own marker, so its teardown
        kills its workers and flow runs, never the server."""
        return Processes(folder, port=self.port, server_log=self.dir / "server.log")

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def env(self, **extra: str) -> dict[str, str]:
        """The outer environment (PATH...) minus what Prefect or rollout would read, plus
        this module's Prefect settings and ``extra``."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("PREFECT_", "ROLLOUT_"))
            and name not in {"SENDGRID_API_KEY", "DO_NOT_TRACK"}
        }
        # Temporary files under this folder: a worker killed at teardown leaves its
        # runs' workspaces (prefect-workspace-attempt-*) behind, here and not in /tmp.
        scratch = self.dir / "tmp"
        scratch.mkdir(exist_ok=True)
        env.update(
            {
                "TMPDIR": str(scratch),
                "PREFECT_HOME": str(self.dir / "prefect-home"),
                "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "1",
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
                "PREFECT_LOGGING_COLORS": "false",
                "PYTHONUNBUFFERED": "1",
                MARKER: self.marker,
            }
        )
        env.update(extra)
        return env

    def start(
        self, name: str, args: list[str], env: dict[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        """A process in a session of its own, both its streams in ``<name>.log``."""
        process = start_logged(args, env, cwd, self.dir / f"{name}.log")
        self.started.append(process)
        return process

    def run(self, name: str, args: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
        """A command to completion; fails the test (with its output) unless it exits 0."""
        process = self.start(name, args, env, cwd or self.dir)
        log = self.dir / f"{name}.log"
        try:
            code = process.wait(timeout=COMMAND_SECONDS)
        except subprocess.TimeoutExpired:
            kill_group(process)
            pytest.fail(
                f"`{' '.join(args[2:])}` still running after {COMMAND_SECONDS} s\n"
                + self.diagnostics(log)
            )
        if code != 0:
            pytest.fail(f"`{' '.join(args[2:])}` exited {code}\n" + self.diagnostics(log))
        return log.read_text(errors="replace")

    def diagnostics(self, *logs: Path) -> str:
        """What a CI failure needs: the tails of the server's log, of ``logs``, and of
        the workers' logs (flow runs log there too)."""
        parts = [tail(log) for log in logs]
        if (server := self.server_log or self.dir / "server.log").exists():
            parts.insert(0, tail(server, 30))
        for worker in sorted(self.dir.glob("worker*.log")):  # a restarted one has its own
            parts.append(tail(worker, 80))
        return "\n".join(parts)

    def stop_all(self) -> list[int]:
        """Kill everything started here; returns what is still alive after that."""
        kill_groups(list(reversed(self.started)))
        return kill_carrying(MARKER, self.marker)  # e.g. a flow run in its own session

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """The server's REST API through rollout's own client of it (not Prefect's: its
        settings are global), which asks again after a busy server's 503 as Prefect's
        client does."""
        with PrefectApi(self.api_url) as api:
            response = api.call(method, path, body)
        assert response.is_success, (
            f"{method} {path}: {response.status_code} {response.text}\n{self.diagnostics()}"
        )
        return response.json()

    def cancel_open_runs(self) -> None:
        """Cancel every flow run not yet final, so no later module's worker picks one
        up (a test that failed half-way may leave one scheduled)."""
        runs = self.api(
            "POST", "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": OPEN_STATES}}}}
        )
        for run in runs:
            self.api(
                "POST",
                f"/flow_runs/{run['id']}/set_state",
                {"state": {"type": "CANCELLED", "name": "Cancelled"}, "force": True},
            )


@dataclass
class Home:
    path: Path
    env: dict[str, str] = field(repr=False)
    expected_count: int


def checkout_state() -> tuple[list[str], str]:
    """What `prefect deploy` could write: top-level entries, and prefect.yaml itself."""
    return (
        sorted(entry.name for entry in ROOT.iterdir()),
        hashlib.sha256((ROOT / "prefect.yaml").read_bytes()).hexdigest(),
    )


@dataclass
class Deployed:
    before: tuple[list[str], str] = field(repr=False)
    after: tuple[list[str], str] = field(repr=False)
    # By deployment name, each with a "flow_name" added.
    deployments: dict[str, dict[str, Any]] = field(repr=False)


def start_dev_sendgrid(processes: Processes, home: Home, key: str) -> str:
    """`rollout dev sendgrid` with ``key``, a process of this module's: its URL once it
    answers (its output in sendgrid.log)."""
    port = free_port()
    process = processes.start(
        "sendgrid",
        [*ROLLOUT, "dev", "sendgrid", "--port", str(port), "--api-key", key],
        home.env,
        processes.dir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{url}/dev/faults", process, "rollout dev sendgrid", seconds=30)
    except AssertionError as error:
        pytest.fail(f"{error}\n" + processes.diagnostics(processes.dir / "sendgrid.log"))
    return url
