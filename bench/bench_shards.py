"""Benchmark: 100,000 emails sent by the `notify` deployment through Prefect workers,
with one worker and with two (issue 18).

Usage (a PostgreSQL server to make databases on: `tests/support/with-postgres` starts
a throwaway one and sets ROLLOUT_TEST_POSTGRES_URL):
    tests/support/with-postgres .venv/bin/python bench/bench_shards.py \\
        [--emails 100000] [--concurrency 16] [--repeat 2] [--setups 1x1,1x2,2x2]

Everything is the real thing, each part a process of its own: a Prefect server (its
own PREFECT_HOME and database), the `rollout-process` work pool and `prefect deploy
--all` from the checkout, `rollout dev sendgrid` recording what it accepts, and for
each run a fresh PostgreSQL database holding ``--emails`` maintainers in the top-100
cohort (rollout.demo.crowd) with their phase notices queued, and fresh workers. One
`notify` flow run is created per run (as_of 2022-01-04, nothing more to queue) and
timed from creation to Completed, worker pick-up and process starts included; the
send span (first to last ``sent_at``) is reported beside it.

A setup ``WxS`` is W workers and S shards: ``1x1`` is the plain path (the notify run
sends in its own process, ``concurrency`` at a time), ``1x2`` two notify-shard runs on
one worker, ``2x2`` two workers of which each may take the notify run and one shard
(``--limit 2``: the shards cannot both land beside the notify run). Which worker ran
how many is read from the workers' logs (each shard logs its count).

Checked, failing the run (exit 1): the run Completed; the outbox holds ``--emails``
rows, all sent; the local server received exactly that many requests, each outbox
row once, to its own address, with the message id the outbox recorded; the shards'
logged counts add up; with two workers, both sent (at a size where one shard cannot
finish before the other starts: a few thousand emails and up).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from bench_notify import KEY, check, free_port, start_server
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from rollout.core.plan import load_plan
from rollout.demo.crowd import NOTICE_DAY, add_crowd
from rollout.notify.drain import DrainReport
from rollout.notify.queue import queue_due
from rollout.registry import Registry
from rollout.registry.engine import make_engine
from rollout.registry.migrate import upgrade
from rollout.registry.models import Notification

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "plans" / "npm-2022.yaml"
POOL = "rollout-process"
PREFECT = [sys.executable, "-m", "prefect"]
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RUN_SECONDS = 1800
MARKER = "ROLLOUT_BENCH_SHARDS_ID"
SHARD_COUNT = re.compile(r"this shard: (\d+) sent")


@dataclass
class Timed:
    setup: str
    run_s: float
    send_span_s: float
    by_worker: dict[str, int]
    worker_cpu_s: float


class Stack:
    """The processes: each in a session of its own, killed with its group at the end."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.started: list[subprocess.Popen[bytes]] = []
        self.marker = uuid.uuid4().hex  # inherited: the flow runs a worker starts have it
        self.base_env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("PREFECT_", "ROLLOUT_")) and k != "SENDGRID_API_KEY"
            },
            "PREFECT_HOME": str(work / "prefect-home"),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_LOGGING_COLORS": "false",
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            MARKER: self.marker,
        }
        (work / "prefect-home").mkdir()

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.work / f"{name}.log").open("ab") as out:
            process = subprocess.Popen(
                args,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(process)
        return process

    def run(self, name: str, args: list[str], env: dict[str, str]) -> None:
        code = self.start(name, args, env).wait(timeout=300)
        if code:
            raise SystemExit(f"FAIL: `{' '.join(args)}` exited {code}: see {self.work / name}.log")

    @staticmethod
    def stop(process: subprocess.Popen[bytes]) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)
                return

    def stop_all(self) -> None:
        """Every process started here, and the flow runs the workers started (each in a
        session of its own, found by the marker they inherit)."""
        for process in reversed(self.started):
            if process.poll() is None:
                self.stop(process)
        needle = f"{MARKER}={self.marker}".encode()
        for entry in Path("/proc").glob("[0-9]*"):
            with suppress(OSError, ValueError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, self.api_url + path, json=body, timeout=60)
        response.raise_for_status()
        return response.json()

    def serve_and_deploy(self) -> dict[str, str]:
        """The Prefect server up, the pool and the deployments: deployment ids by name."""
        env = {
            **self.base_env,
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": (
                f"sqlite+aiosqlite:///{self.work / 'prefect-home' / 'server.db'}"
            ),
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
        }
        server = self.start(
            "server",
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env,
        )
        deadline = time.monotonic() + 180
        while True:
            with suppress(httpx.HTTPError):
                if httpx.get(self.api_url + "/health", timeout=2).is_success:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"FAIL: the Prefect server did not start: {self.work}/server.log")
            time.sleep(0.5)
        self.run(
            "pool", [*PREFECT, "work-pool", "create", POOL, "--type", "process"], self.base_env
        )
        self.run("deploy", [*PREFECT, "--no-prompt", "deploy", "--all"], self.base_env)
        return {d["name"]: d["id"] for d in self.api("POST", "/deployments/filter", {})}


def fresh_database(server_url: str, name: str) -> str:
    admin = make_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, name: str) -> None:
    admin = make_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def one_run(
    stack: Stack,
    deployments: dict[str, str],
    server_url: str,
    setup: str,
    index: int,
    emails: int,
    concurrency: int,
) -> Timed:
    workers, shards = (int(n) for n in setup.split("x"))
    name = f"bench_shards_{setup}_{index}_{os.getpid()}"
    url = fresh_database(server_url, name)
    record = stack.work / f"received-{setup}-{index}.jsonl"
    try:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        add_crowd(url, emails)
        with Registry(url) as registry:
            # Years after the notice day: queued however late (held back otherwise).
            [queued] = queue_due(registry, load_plan(PLAN), NOTICE_DAY, actor="bench", late=True)
        sendgrid_port = free_port()
        sendgrid = start_server(sendgrid_port, record)
        stack.started.append(sendgrid)
        sendgrid_url = f"http://127.0.0.1:{sendgrid_port}"
        home = stack.work / f"home-{setup}-{index}"
        env = {
            **stack.base_env,
            "ROLLOUT_HOME": str(home),
            "ROLLOUT_PLAN": str(PLAN),
            "ROLLOUT_REGISTRY_URL": url,
            "ROLLOUT_PROJECT_DIR": str(ROOT),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "SENDGRID_API_KEY": KEY,
            "ROLLOUT_SENDGRID_URL": sendgrid_url,
        }
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        logs = [f"worker-{setup}-{index}-{w}" for w in range(workers)]
        limit = str(shards + 1 if workers == 1 else 2)
        started_workers = [
            stack.start(log, [*PREFECT, "worker", "start", "--pool", POOL, "--limit", limit], env)
            for log in logs
        ]
        parameters = {
            "as_of": NOTICE_DAY.isoformat(),
            "shards": shards,
            "concurrency": concurrency,
            "lease_seconds": 300,
        }
        started = time.perf_counter()
        run = stack.api(
            "POST",
            f"/deployments/{deployments['notify']}/create_flow_run",
            {"parameters": parameters},
        )
        deadline = time.monotonic() + RUN_SECONDS
        while True:
            state = stack.api("GET", f"/flow_runs/{run['id']}")["state_type"]
            if state in FINAL:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"FAIL: the notify run still {state} after {RUN_SECONDS} s")
            time.sleep(0.25)
        run_s = time.perf_counter() - started
        for worker in started_workers:
            stack.stop(worker)
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        stack.stop(sendgrid)
        if state != "COMPLETED":
            raise SystemExit(f"FAIL: the notify run ended {state}: see {stack.work}")
        engine = make_engine(url)
        with engine.connect() as connection:
            first, last, sent = connection.execute(
                select(
                    func.min(Notification.sent_at),
                    func.max(Notification.sent_at),
                    func.count().filter(Notification.state == "sent"),
                )
            ).one()
            failed = connection.scalar(select(func.count()).where(Notification.state == "failed"))
        engine.dispose()
        check(url, record, emails, queued.added, DrainReport("sendgrid", sent=sent, failed=failed))
        by_worker = {
            log: sum(int(n) for n in SHARD_COUNT.findall((stack.work / f"{log}.log").read_text()))
            for log in logs
        }
        if shards > 1:
            if sum(by_worker.values()) != emails:
                raise SystemExit(f"FAIL: the shards logged {by_worker}, not {emails:,} in all")
            if workers > 1 and not all(by_worker.values()):
                raise SystemExit(f"FAIL: a worker sent nothing: {by_worker}")
        span = (last - first).total_seconds() if isinstance(first, datetime) else 0.0
        cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (
            cpu_before.ru_utime + cpu_before.ru_stime
        )
        return Timed(setup, run_s, span, by_worker, cpu)
    finally:
        drop_database(server_url, name)
        record.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emails", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--setups", default="1x1,1x2,2x2")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("ROLLOUT_TEST_POSTGRES_URL"),
        help="a PostgreSQL server to create the databases on (default: $ROLLOUT_TEST_POSTGRES_URL)",
    )
    args = parser.parse_args()
    if not args.postgres_url:
        raise SystemExit(
            "no PostgreSQL: run it under tests/support/with-postgres or give --postgres-url"
        )
    setups = args.setups.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    stack = Stack(work)
    timings: list[Timed] = []
    try:
        started = time.perf_counter()
        deployments = stack.serve_and_deploy()
        print(f"Prefect server up and deployed in {time.perf_counter() - started:.0f} s")
        for index in range(args.repeat):
            for setup in setups:  # alternated, so a slow spell of the VM hits each
                timed = one_run(
                    stack,
                    deployments,
                    args.postgres_url,
                    setup,
                    index,
                    args.emails,
                    args.concurrency,
                )
                timings.append(timed)
                print(
                    f"{setup}: run {timed.run_s:.1f} s (sending {timed.send_span_s:.1f} s), "
                    f"{args.emails / timed.run_s:,.0f} emails/s, workers' CPU "
                    f"{timed.worker_cpu_s:.0f} s, by worker {timed.by_worker or '-'}",
                    flush=True,
                )
    finally:
        stack.stop_all()
    print(
        f"\n{args.emails:,} emails, concurrency {args.concurrency} per sender; checked: each "
        "outbox row sent and received once, as recorded"
    )
    for setup in setups:
        runs = [t.run_s for t in timings if t.setup == setup]
        print(
            f"  {setup}: {min(runs):.1f}-{max(runs):.1f} s, "
            f"{args.emails / max(runs):,.0f}-{args.emails / min(runs):,.0f} emails/s"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
