"""Benchmark: render and send 100,000 queued emails to the local SendGrid server.

Usage:
    python bench/bench_notify.py [--emails 100000] [--concurrency 16] [--registry-url URL]

A fresh SQLite registry (or the given, empty one) gets ``--emails`` accounts without
2FA in the top-100 cohort, each with three packages; the phase notices are queued
(one INSERT ... SELECT), then drained through the official SendGrid client to
``rollout dev sendgrid`` running in its own process, as in development. Target
(issue 5): at most 2 minutes for 100,000, and the messages per second.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import insert, select

from rollout.notify import outbox
from rollout.notify.senders import SendGridSender
from rollout.plan import load_plan
from rollout.registry.engine import make_engine
from rollout.registry.migrate import upgrade
from rollout.registry.models import Account, CohortMembership, Notification

ROOT = Path(__file__).resolve().parents[1]
KEY = "SG.bench.local-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill(url: str, count: int) -> None:
    engine = make_engine(url)
    now = datetime(2021, 6, 1)
    with engine.begin() as connection:
        connection.execute(
            insert(Account),
            [
                {
                    "username": f"maintainer-{i:06d}",
                    "email": f"maintainer-{i:06d}@example.com",
                    "email_verified": True,
                    "created_at": now,
                }
                for i in range(count)
            ],
        )
        ids = [row[0] for row in connection.execute(select(Account.id))]
        connection.execute(
            insert(CohortMembership),
            [
                {
                    "cohort": "top-100",
                    "account_id": i,
                    "packages": [f"pkg-{i}", f"pkg-{i}-cli", "shared-core"],
                    "first_qualified_on": date(2022, 1, 3),
                    "last_qualified_on": date(2022, 1, 3),
                }
                for i in ids
            ],
        )
    engine.dispose()


def start_server(port: int, record: Path) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "rollout"),
            "dev",
            "sendgrid",
            "--port",
            str(port),
            "--api-key",
            KEY,
            "--record",
            str(record),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/dev/messages", timeout=1).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the local SendGrid server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emails", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--registry-url", help="an empty registry (default: a temp SQLite)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-notify-"))
    try:
        url = args.registry_url or f"sqlite:///{work / 'registry.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        fill(url, args.emails)
        plan = load_plan(ROOT / "plans" / "npm-2022.yaml")
        started = time.perf_counter()
        [queued] = outbox.queue_due(url, plan, date(2022, 1, 4), actor="bench")
        queue_s = time.perf_counter() - started
        port = free_port()
        server = start_server(port, work / "received.jsonl")
        try:
            sender = SendGridSender(KEY, f"http://127.0.0.1:{port}", timeout=10)
            started = time.perf_counter()
            report = outbox.drain(
                url, plan, sender, concurrency=args.concurrency, processes=args.processes
            )
            send_s = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait()
        received = sum(1 for _ in (work / "received.jsonl").open())
        engine = make_engine(url)
        with engine.connect() as connection:
            sent = connection.execute(
                select(Notification.id).where(Notification.state == "sent")
            ).all()
        me = resource.getrusage(resource.RUSAGE_SELF)
        server_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak = me.ru_maxrss / 1024
        print(f"queued {queued.added} phase notices in {queue_s:.1f} s")
        print(
            f"sent {report.sent} (failed {report.failed}) in {send_s:.1f} s: "
            f"{report.sent / send_s:,.0f} messages/s at concurrency {args.concurrency} "
            f"x {args.processes} processes; "
            f"server received {received}, ledger says sent {len(sent)}; "
            f"peak RSS {peak:,.0f} MiB"
        )
        print(
            f"CPU: this process {me.ru_utime + me.ru_stime:.1f} s (with setup), "
            f"the SendGrid server {server_cpu.ru_utime + server_cpu.ru_stime:.1f} s"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("no_proxy", "127.0.0.1")
    main()
