"""End to end: prefect.yaml deployed to a real Prefect server, one run on a real worker.

Unlike tests/flows (flows called in-process against the test harness), this goes the way
production does: ``prefect server start``, ``prefect work-pool create``, ``prefect deploy
--all`` from the repo root, ``prefect deployment run``, then ``prefect worker start
--run-once``, whose flow-run subprocess gets to this checkout through the pull step
(``set_working_directory`` to ``$ROLLOUT_PROJECT_DIR``).

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
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "plans" / "npm-2022.yaml"
CONFIG = yaml.safe_load((ROOT / "prefect.yaml").read_text())
POOL = "rollout-process"
DAY = "2022-02-01"
PHASE = "top-100"
PREFECT = [sys.executable, "-m", "prefect"]
ROLLOUT = [sys.executable, "-m", "rollout"]
MARKER = "ROLLOUT_TEST_E2E_ID"  # inherited by every process this module starts

SERVER_STARTUP_SECONDS = 120
COMMAND_SECONDS = 120
WORKER_SECONDS = 180
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

# Read in a subprocess: what the preview should find, and that the ledger has nothing.
EXPECTED_COUNT = """
from rollout.config import load_settings
from rollout.enforce import preview_phase
from rollout.plan import load_plan
from rollout.registry.migrate import open_registry

settings = load_settings()
plan = load_plan(settings.plan_path)
with open_registry(settings.registry_url) as engine:
    print(preview_phase(engine, plan, plan.phase(%r)).count)
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def marked_pids(marker: str) -> list[int]:
    """Live processes carrying this marker (Linux /proc; elsewhere none are found)."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue  # gone, or not ours to read
    return [pid for pid in found if pid != os.getpid()]


def kill_group(process: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM the process's session, then SIGKILL whatever is left of it."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)


@dataclass
class Processes:
    """The processes this module starts, their logs, and the one Prefect server's address."""

    dir: Path
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    port: int = field(default_factory=free_port)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

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
        env.update(
            {
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
        with (self.dir / f"{name}.log").open("wb") as out:
            process = subprocess.Popen(
                args,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
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
        the worker's log (flow runs log there too)."""
        parts = [tail(log) for log in logs]
        if (server := self.dir / "server.log").exists():
            parts.insert(0, tail(server, 30))
        if (worker := self.dir / "worker.log").exists():
            parts.append(tail(worker, 80))
        return "\n".join(parts)

    def stop_all(self) -> list[int]:
        """Kill everything started here; returns what is still alive after that."""
        for process in reversed(self.started):
            kill_group(process)
        for pid in marked_pids(self.marker):  # e.g. a flow run in its own session
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (left := marked_pids(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """The server's REST API (no in-process Prefect client: its settings are global)."""
        response = httpx.request(method, self.api_url + path, json=body, timeout=30)
        assert response.is_success, (
            f"{method} {path}: {response.status_code} {response.text}\n{self.diagnostics()}"
        )
        return response.json()


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    processes = Processes(tmp_path_factory.mktemp("e2e"))
    (processes.dir / "prefect-home").mkdir()
    try:
        yield processes
    finally:
        left = processes.stop_all()
    assert not left, f"processes left running after teardown: {left}"


@dataclass
class Home:
    path: Path
    env: dict[str, str] = field(repr=False)
    expected_count: int


@pytest.fixture(scope="module")
def home(processes: Processes) -> Home:
    """ROLLOUT_HOME with the tiny sample ingested, metrics and cohorts built for DAY."""
    path = processes.dir / "rollout-home"
    env = processes.env(ROLLOUT_HOME=str(path), ROLLOUT_PLAN=str(PLAN))
    for name, *command in (
        ("db-upgrade", "db", "upgrade"),
        ("sample", "sample", "--scale", "tiny", "--seed", "7", "--replace"),
        ("ingest", "ingest"),
        ("metrics", "metrics", "--as-of", DAY),
        ("cohorts", "cohorts", "build", "--as-of", DAY),
    ):
        processes.run(f"rollout-{name}", [*ROLLOUT, *command], env)
    out = processes.run("expected-count", [sys.executable, "-c", EXPECTED_COUNT % PHASE], env)
    count = int(out.strip().splitlines()[-1])
    assert count > 0, f"the {PHASE} cohort has no account without 2FA to preview"
    assert not (path / "reports" / "previews").exists()
    return Home(path, env, count)


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


@pytest.fixture(scope="module")
def server(processes: Processes) -> subprocess.Popen[bytes]:
    """`prefect server start`, not waited for: it boots while the home is prepared."""
    return processes.start(
        "server",
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(processes.port)],
        processes.env(
            PREFECT_SERVER_DATABASE_CONNECTION_URL=(
                f"sqlite+aiosqlite:///{processes.dir / 'prefect-home' / 'server.db'}"
            ),
            # No scheduler: the daily deployment's cron runs must never reach the worker
            # (at 02:29:55 UTC one would be due within its prefetch window).
            PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
            PREFECT_UI_ENABLED="false",
        ),
        processes.dir,
    )


@pytest.fixture(scope="module")
def deployed(processes: Processes, server: subprocess.Popen[bytes], home: Home) -> Deployed:
    """The server up, the work pool, and `prefect deploy --all` from the repo root.

    (``home`` only so that it is prepared while the server boots.)
    """
    deadline = time.monotonic() + SERVER_STARTUP_SECONDS
    while True:
        if server.poll() is not None:
            pytest.fail(f"the server exited {server.returncode}\n" + processes.diagnostics())
        with suppress(httpx.TransportError):
            if httpx.get(processes.api_url + "/health", timeout=2).is_success:
                break
        if time.monotonic() > deadline:
            pytest.fail(
                f"no /api/health after {SERVER_STARTUP_SECONDS} s\n" + processes.diagnostics()
            )
        time.sleep(0.25)

    env = processes.env()
    processes.run(
        "work-pool-create", [*PREFECT, "work-pool", "create", POOL, "--type", "process"], env
    )
    before = checkout_state()
    processes.run("deploy", [*PREFECT, "--no-prompt", "deploy", "--all"], env, cwd=ROOT)
    after = checkout_state()

    flows = {f["id"]: f["name"] for f in processes.api("POST", "/flows/filter", {})}
    deployments = {}
    for deployment in processes.api("POST", "/deployments/filter", {}):
        deployment["flow_name"] = flows[deployment["flow_id"]]
        deployments[deployment["name"]] = deployment
    return Deployed(before, after, deployments)


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
        assert created["pull_steps"] == CONFIG["pull"], where
        assert set(created["tags"]) == set(expected["tags"]), where
        assert created["parameters"] == (expected.get("parameters") or {}), where
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


def test_its_artifact_names_the_account_count(
    processes: Processes, preview_run: PreviewRun, home: Home
) -> None:
    key = f"phase-preview-{PHASE}"
    artifacts = processes.api("POST", "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}})
    assert len(artifacts) == 1, f"artifacts {key}: {artifacts}\n{processes.diagnostics()}"
    [artifact] = artifacts
    assert artifact["type"] == "markdown"
    assert artifact["flow_run_id"] == preview_run.flow_run["id"]
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
