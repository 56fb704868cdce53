"""End to end: prefect.yaml deployed to a real Prefect server, one run on a real worker.

Unlike tests/flows (flows called in-process against the test harness), this goes the way
production does: ``prefect server start``, ``prefect work-pool create``, ``prefect deploy
--all`` from the repo root, ``prefect deployment run``, then ``prefect worker start
--run-once``, whose flow-run subprocess pulls the code from this checkout through the
``set_working_directory`` step and ``$ROLLOUT_PROJECT_DIR``.

Every Prefect process is a subprocess with an explicit environment: its own
PREFECT_HOME (and server database) in a temp dir, no inherited PREFECT_* or ROLLOUT_*
variable. So nothing touches ~/.prefect, the repo's var/, or the in-process harness
other tests share. Each process starts in a session of its own and carries a marker
variable its descendants inherit; teardown kills every such session, then any process
left with the marker (the process worker starts each flow run in a session of its
own), pass or fail. Server, worker and CLI output go to log files whose tails the
failure messages quote.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from rollout.cli import app
from rollout.config import load_settings
from rollout.enforce import preview_phase
from rollout.plan import load_plan
from rollout.registry.migrate import open_registry

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PLAN = ROOT / "plans" / "npm-2022.yaml"
CONFIG = yaml.safe_load((ROOT / "prefect.yaml").read_text())
POOL = "rollout-process"
DAY = "2022-02-01"
PHASE = "top-100"
PREFECT = [sys.executable, "-m", "prefect"]
MARKER = "ROLLOUT_TEST_E2E_ID"  # inherited by every process this module starts

SERVER_STARTUP_SECONDS = 120
COMMAND_SECONDS = 120
WORKER_SECONDS = 180
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


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
    """Live processes carrying this module's marker (Linux /proc; elsewhere none found)."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue  # gone, or not ours to read
    return [pid for pid in found if pid != os.getpid()]


@dataclass
class Prefect:
    """A Prefect server, and the CLI and worker processes run against it."""

    dir: Path
    port: int = field(default_factory=free_port)
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def home(self) -> Path:
        return self.dir / "prefect-home"

    def env(self, **extra: str) -> dict[str, str]:
        """The outer environment (PATH...), minus anything Prefect or rollout would read."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("PREFECT_", "ROLLOUT_"))
            and name not in {"SENDGRID_API_KEY", "DO_NOT_TRACK"}
        }
        env.update(
            {
                "PREFECT_HOME": str(self.home),
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
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """A process in a session of its own, its output (both streams) in ``<name>.log``."""
        log = self.dir / f"{name}.log"
        with log.open("wb") as out:
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
        return process, log

    def run(self, name: str, *args: str, cwd: Path | None = None, **env: str) -> str:
        """A CLI command to completion; fails the test (with its output) unless it exits 0."""
        process, log = self.start(name, [*PREFECT, *args], self.env(**env), cwd or self.dir)
        try:
            code = process.wait(timeout=COMMAND_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill_group(process)
            pytest.fail(
                f"`prefect {' '.join(args)}` still running after {COMMAND_SECONDS} s\n"
                + self.diagnostics(log)
            )
        if code != 0:
            pytest.fail(f"`prefect {' '.join(args)}` exited {code}\n" + self.diagnostics(log))
        return log.read_text(errors="replace")

    def diagnostics(self, *logs: Path) -> str:
        """What a CI failure needs to be understood: the tails of the server's and the
        worker's logs (the flow run logs there too), and of any other log given."""
        parts = [tail(self.dir / "server.log", 30), *(tail(log) for log in logs)]
        if (worker := self.dir / "worker.log").exists():
            parts.append(tail(worker, 80))
        return "\n".join(parts)

    @staticmethod
    def kill_group(process: subprocess.Popen[bytes], grace: float = 10) -> None:
        """SIGTERM the process's group, then SIGKILL whatever is left of it."""
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)

    def stop_all(self) -> list[int]:
        """Kill everything started here; returns what was still alive after that."""
        for process in reversed(self.started):
            self.kill_group(process)
        for pid in marked_pids(self.marker):  # e.g. a flow run in its own session
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (left := marked_pids(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    # --- the REST API ---------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, self.api_url + path, json=body, timeout=30)
        assert response.is_success, (
            f"{method} {path}: {response.status_code} {response.text}\n{self.diagnostics()}"
        )
        return response.json()


@dataclass
class Home:
    path: Path
    expected_count: int


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """ROLLOUT_HOME with the tiny sample ingested, metrics and cohorts built for DAY."""
    path = tmp_path_factory.mktemp("e2e-rollout") / "home"
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("ROLLOUT_") and not name.startswith("ROLLOUT_TEST_"):
                mp.delenv(name)
        mp.delenv("SENDGRID_API_KEY", raising=False)
        mp.setenv("ROLLOUT_HOME", str(path))
        mp.setenv("ROLLOUT_PLAN", str(PLAN))
        for command in (
            ["db", "upgrade"],
            ["sample", "--scale", "tiny", "--seed", "7", "--replace"],
            ["ingest"],
            ["metrics", "--as-of", DAY],
            ["cohorts", "build", "--as-of", DAY],
        ):
            result = CliRunner().invoke(app, command)
            assert result.exit_code == 0, (command, result.output, result.exception)
        # What the worker's run should find: computed here, read-only, in-process.
        settings = load_settings()
        plan = load_plan(settings.plan_path)
        with open_registry(settings.registry_url) as engine:
            count = preview_phase(engine, plan, plan.phase(PHASE)).count
    assert count > 0, f"the {PHASE} cohort has no account without 2FA to preview"
    assert not (path / "reports" / "previews").exists()
    return Home(path, count)


def checkout_state() -> tuple[list[str], str]:
    """What `prefect deploy` could write: top-level entries, and prefect.yaml itself."""
    return (
        sorted(entry.name for entry in ROOT.iterdir()),
        hashlib.sha256((ROOT / "prefect.yaml").read_bytes()).hexdigest(),
    )


@dataclass
class Deployed:
    prefect: Prefect
    before: tuple[list[str], str] = field(repr=False)
    after: tuple[list[str], str] = field(repr=False)
    # By deployment name, each with a "flow_name" added.
    deployments: dict[str, dict[str, Any]] = field(repr=False)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """A fresh server, the work pool, and `prefect deploy --all` from the repo root."""
    prefect = Prefect(tmp_path_factory.mktemp("e2e-prefect"))
    prefect.home.mkdir()
    try:
        server, _ = prefect.start(
            "server",
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(prefect.port)],
            prefect.env(
                PREFECT_SERVER_DATABASE_CONNECTION_URL=(
                    f"sqlite+aiosqlite:///{prefect.home / 'server.db'}"
                ),
                # No scheduler: the daily deployment's cron runs must never reach the
                # worker (at 02:29:50 UTC one would be due within its prefetch window).
                PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
                PREFECT_UI_ENABLED="false",
            ),
            prefect.dir,
        )
        deadline = time.monotonic() + SERVER_STARTUP_SECONDS
        while True:
            if server.poll() is not None:
                pytest.fail(f"the server exited {server.returncode}\n" + prefect.diagnostics())
            try:
                if httpx.get(prefect.api_url + "/health", timeout=2).is_success:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no /api/health after {SERVER_STARTUP_SECONDS} s\n" + prefect.diagnostics()
                )
            time.sleep(0.25)

        prefect.run("work-pool-create", "work-pool", "create", POOL, "--type", "process")
        before = checkout_state()
        prefect.run("deploy", "--no-prompt", "deploy", "--all", cwd=ROOT)
        after = checkout_state()

        flows = {f["id"]: f["name"] for f in prefect.api("POST", "/flows/filter", {})}
        deployments = {}
        for deployment in prefect.api("POST", "/deployments/filter", {}):
            deployment["flow_name"] = flows[deployment["flow_id"]]
            deployments[deployment["name"]] = deployment
        yield Deployed(prefect, before, after, deployments)
    finally:
        left = prefect.stop_all()
    assert not left, f"processes left running after teardown: {left}"


@dataclass
class PreviewRun:
    flow_run: dict[str, Any] = field(repr=False)
    worker_exit: int


@pytest.fixture(scope="module")
def preview_run(deployed: Deployed, home: Home) -> PreviewRun:
    """`prefect deployment run phase-preview/phase-preview`, then one worker pass."""
    prefect = deployed.prefect
    prefect.run(
        "deployment-run",
        "deployment",
        "run",
        "phase-preview/phase-preview",
        "--param",
        f"phase={PHASE}",
    )
    deployment_id = deployed.deployments["phase-preview"]["id"]
    runs = prefect.api(
        "POST",
        "/flow_runs/filter",
        {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}},
    )
    assert len(runs) == 1, runs
    worker, _ = prefect.start(
        "worker",
        [*PREFECT, "worker", "start", "--pool", POOL, "--run-once"],
        prefect.env(
            ROLLOUT_PROJECT_DIR=str(ROOT),
            ROLLOUT_HOME=str(home.path),
            ROLLOUT_PLAN=str(PLAN),
        ),
        prefect.dir,  # not the checkout: the pull step must get the run there
    )
    try:
        code = worker.wait(timeout=WORKER_SECONDS)
    except subprocess.TimeoutExpired:
        prefect.kill_group(worker)
        pytest.fail(f"the worker still ran after {WORKER_SECONDS} s\n" + prefect.diagnostics())
    # The worker waits for the runs it submitted; allow a last state write to land.
    deadline = time.monotonic() + 10
    flow_run = prefect.api("GET", f"/flow_runs/{runs[0]['id']}")
    while flow_run["state_type"] not in FINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        flow_run = prefect.api("GET", f"/flow_runs/{runs[0]['id']}")
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


def test_deploy_creates_every_deployment_of_prefect_yaml(deployed: Deployed) -> None:
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
    # Each one answers to the flow/deployment name operators type.
    for name, created in deployed.deployments.items():
        found = deployed.prefect.api("GET", f"/deployments/name/{created['flow_name']}/{name}")
        assert found["id"] == created["id"]


def test_deploy_writes_nothing_in_the_checkout(deployed: Deployed) -> None:
    entries_before, yaml_before = deployed.before
    entries_after, yaml_after = deployed.after
    assert set(entries_after) - set(entries_before) == set(), "prefect deploy created files"
    assert yaml_after == yaml_before, "prefect deploy rewrote prefect.yaml"


# --- a run on a worker ---------------------------------------------------------------


def test_the_preview_run_completes_on_a_worker(deployed: Deployed, preview_run: PreviewRun) -> None:
    flow_run = preview_run.flow_run
    assert flow_run["state_type"] == "COMPLETED", (
        f"flow run {flow_run['name']} is {flow_run['state_type']}: "
        f"{(flow_run.get('state') or {}).get('message')}\n{deployed.prefect.diagnostics()}"
    )
    assert flow_run["parameters"] == {"phase": PHASE}
    assert preview_run.worker_exit == 0, deployed.prefect.diagnostics()


def test_its_artifact_names_the_account_count(
    deployed: Deployed, preview_run: PreviewRun, home: Home
) -> None:
    key = f"phase-preview-{PHASE}"
    artifacts = deployed.prefect.api(
        "POST", "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}}
    )
    assert len(artifacts) == 1, f"artifacts {key}: {artifacts}\n{deployed.prefect.diagnostics()}"
    [artifact] = artifacts
    assert artifact["type"] == "markdown"
    assert artifact["flow_run_id"] == preview_run.flow_run["id"]
    count = home.expected_count
    assert f"| accounts without 2FA to require it of | {count} |" in artifact["data"]
    assert f"--expect {count}`" in artifact["data"]


def test_it_writes_the_csv_and_records_the_preview(
    deployed: Deployed, preview_run: PreviewRun, home: Home
) -> None:
    previews = home.path / "reports" / "previews"
    csvs = sorted(previews.glob(f"{PHASE}-*.csv")) if previews.exists() else []
    assert len(csvs) == 1, f"{previews}: {csvs}\n{deployed.prefect.diagnostics()}"
    with csvs[0].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == home.expected_count
    assert {row["already_required"] for row in rows} <= {"False", "True"}
    # The registry's ledger names the Prefect run as the actor.
    with closing(sqlite3.connect(home.path / "registry.db")) as connection:
        recorded = connection.execute(
            "select mode, state, actor from plan_runs where step = ?", (f"phase {PHASE}",)
        ).fetchall()
    assert recorded == [("preview", "succeeded", f"prefect/{preview_run.flow_run['name']}")]
