"""Fixtures of the end-to-end tests (helpers in stack.py): for the package, one Prefect
server, its work pool and `prefect deploy --all`; a prepared
ROLLOUT_HOME; per test module, a copy of that home and the module's own processes
(workers, commands), stopped with it.

All of tests/e2e runs on one xdist worker, at a stretch (tests/conftest.py groups it),
so the server boots and the project deploys once, not once per module (about 15-25 s
each on 2 cores); scoped to the package, not the session, the server stops after the
package's last test rather than idle to the end of the run (an idle Prefect server's
services still poll its database: about 3% of a core).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_URL, fresh_postgres_database
from tests.e2e.stack import (
    DAY,
    EXPECTED_COUNT,
    PHASE,
    PLAN,
    POOL,
    PREFECT,
    ROLLOUT,
    ROOT,
    SERVER_STARTUP_SECONDS,
    Deployed,
    Home,
    Processes,
    checkout_state,
)


@pytest.fixture(scope="package")
def prefect_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Prefect server's database: one of its own on the test PostgreSQL server, as
    operators run Prefect in production (on SQLite, a server under the load of a whole
    suite on 2 cores answered "database is locked" to a shard's final state, which then
    stayed Cancelling); SQLite only where no PostgreSQL is configured."""
    if not POSTGRES_URL:
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('prefect-db') / 'server.db'}"
        return
    with fresh_postgres_database("prefect") as url:
        yield (
            make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
        )


@pytest.fixture(scope="package")
def server_processes(
    tmp_path_factory: pytest.TempPathFactory, prefect_database_url: str
) -> Iterator[Processes]:
    """The package's processes: the Prefect server and the deploy (stopped before its
    database is dropped: this fixture is torn down first)."""
    processes = Processes(tmp_path_factory.mktemp("e2e-server"))
    (processes.dir / "prefect-home").mkdir()
    try:
        yield processes
    finally:
        left = processes.stop_all()
    assert not left, f"processes left running after teardown: {left}"


@pytest.fixture(scope="module")
def processes(
    server_processes: Processes,
    server: subprocess.Popen[bytes],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Processes]:
    """This module's processes on the package's server. (``server`` only so that it
    boots while the first module's home is prepared.)"""
    processes = server_processes.for_module(tmp_path_factory.mktemp("e2e"))
    (processes.dir / "prefect-home").mkdir()
    try:
        yield processes
    finally:
        left = processes.stop_all()
        if server.poll() is None:
            server_processes.cancel_open_runs()
    assert not left, f"processes left running after teardown: {left}"


@pytest.fixture(scope="package")
def prepared_home(server_processes: Processes) -> tuple[Path, int]:
    """Once for the package: a ROLLOUT_HOME with the tiny sample ingested, metrics and
    cohorts built for DAY, and how many accounts the PHASE preview should list. Each
    module gets a copy (``home``): five rollout commands cost about 4 s a module."""
    path = server_processes.dir / "rollout-home"
    env = server_processes.env(ROLLOUT_HOME=str(path), ROLLOUT_PLAN=str(PLAN))
    for name, *command in (
        ("db-upgrade", "db", "upgrade"),
        ("sample", "sample", "--scale", "tiny", "--seed", "7", "--replace"),
        ("ingest", "ingest"),
        ("metrics", "metrics", "--as-of", DAY),
        ("cohorts", "cohorts", "build", "--as-of", DAY),
    ):
        server_processes.run(f"rollout-{name}", [*ROLLOUT, *command], env)
    out = server_processes.run(
        "expected-count", [sys.executable, "-c", EXPECTED_COUNT % PHASE], env
    )
    count = int(out.strip().splitlines()[-1])
    assert count > 0, f"the {PHASE} cohort has no account without 2FA to preview"
    assert not (path / "reports" / "previews").exists()
    return path, count


@pytest.fixture(scope="module")
def home(processes: Processes, prepared_home: tuple[Path, int]) -> Home:
    """This module's ROLLOUT_HOME: a copy of the package's prepared one, so what one
    module's runs write (previews, outbox rows, enforcement) no other module sees."""
    template, count = prepared_home
    path = processes.dir / "rollout-home"
    shutil.copytree(template, path)
    return Home(path, processes.env(ROLLOUT_HOME=str(path), ROLLOUT_PLAN=str(PLAN)), count)


@pytest.fixture(scope="package")
def server(server_processes: Processes, prefect_database_url: str) -> subprocess.Popen[bytes]:
    """`prefect server start`, not waited for (``deployed`` waits)."""
    processes = server_processes
    return processes.start(
        "server",
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(processes.port)],
        processes.env(
            PREFECT_SERVER_DATABASE_CONNECTION_URL=prefect_database_url,
            # No scheduler: the daily deployment's cron runs must never reach the worker
            # (at 02:29:55 UTC one would be due within its prefetch window).
            PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
            PREFECT_UI_ENABLED="false",
        ),
        processes.dir,
    )


@pytest.fixture(scope="package")
def deployed(server_processes: Processes, server: subprocess.Popen[bytes]) -> Deployed:
    """The server up, the work pool, and `prefect deploy --all` from the repo root."""
    processes = server_processes
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
