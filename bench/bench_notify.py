"""Benchmark: render and send 100,000 queued emails to the local SendGrid server.

Usage:
    python bench/bench_notify.py [--emails 100000] [--concurrency 16] [--registry-url URL]

A fresh SQLite registry (or the given, empty one) gets ``--emails`` accounts without
2FA in the top-100 cohort, each with three packages; the phase notices are queued
(one INSERT ... SELECT), then drained through the official SendGrid client to
``rollout dev sendgrid`` running in its own process, as in development. Target
(issue 5): at most 2 minutes for 100,000, and the messages per second.

Checked afterwards (not timed), exiting non-zero with the reasons otherwise: one phase
notice queued per account (``--emails``), the drain reporting that many sent and none
failed, the outbox holding exactly that many rows, all ``sent``; the local server
having received exactly that many requests, each outbox row's ``outbox_id`` exactly
once (none missing, none twice, none unknown), addressed to that row's account, and
the ``X-Message-Id`` it answered being the one the outbox recorded for the row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from peak import own_peak_mib
from sqlalchemy import select

from rollout.core.plan import load_plan
from rollout.demo.crowd import NOTICE_DAY, add_crowd
from rollout.notify.drain import DrainReport, drain
from rollout.notify.message import header_address
from rollout.notify.queue import queue_due
from rollout.notify.senders import SendGridSender
from rollout.registry import Registry
from rollout.registry.engine import make_engine
from rollout.registry.migrate import upgrade
from rollout.registry.models import Account, Notification

ROOT = Path(__file__).resolve().parents[1]
KEY = "SG.bench.local-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        start_new_session=True,  # bench_shards stops it with its process group
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


def check(
    url: str, record: Path, expected: int, queued: int, report: DrainReport
) -> tuple[int, int]:
    """Every queued row sent once and recorded; raises SystemExit naming what is off.
    Returns (requests received, rows sent)."""
    problems: list[str] = []
    if queued != expected:
        problems.append(f"queued {queued:,} phase notices, expected {expected:,}")
    if report.sent != expected or report.failed:
        problems.append(
            f"the drain reports {report.sent:,} sent and {report.failed:,} failed, expected "
            f"{expected:,} sent" + (f" ({report.failure_message()})" if report.failed else "")
        )
    engine = make_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                Notification.id, Notification.state, Notification.message_id, Account.email
            ).join(Account, Account.id == Notification.account_id)
        ).all()
    engine.dispose()
    states = Counter(state for _, state, _, _ in rows)
    if states != Counter({"sent": expected}):
        problems.append(f"the outbox holds {dict(states)}, expected {{'sent': {expected:,}}}")
    received: dict[int, list[tuple[str, str]]] = {}
    requests = 0
    with record.open(encoding="utf-8") as lines:
        for line in lines:
            entry = json.loads(line)
            body = entry["body"]
            requests += 1
            outbox_id = int(body.get("custom_args", {}).get("outbox_id", -1))
            to = body["personalizations"][0]["to"][0]["email"]
            received.setdefault(outbox_id, []).append((entry["message_id"], to))
    if requests != expected:
        problems.append(
            f"the SendGrid server received {requests:,} requests, expected {expected:,}"
        )
    twice = sorted(i for i, got in received.items() if len(got) > 1)
    if twice:
        problems.append(f"{len(twice):,} outbox rows delivered more than once: {twice[:5]}")
    ledger = {row_id: (message_id, address) for row_id, _, message_id, address in rows}
    missing = sorted(set(ledger) - set(received))
    unknown = sorted(set(received) - set(ledger))
    if missing or unknown:
        problems.append(
            f"{len(missing):,} outbox rows never received (first {missing[:5]}), "
            f"{len(unknown):,} received ids not in the outbox (first {unknown[:5]})"
        )
    wrong = [
        row_id
        for row_id, (message_id, address) in ledger.items()
        if len(received.get(row_id, ())) == 1
        and received[row_id][0] != (message_id, header_address(address))
    ]
    if wrong:
        problems.append(
            f"{len(wrong):,} rows whose recorded message id or recipient is not what the "
            f"server received (first {sorted(wrong)[:5]})"
        )
    if problems:
        raise SystemExit("FAIL: " + "\n  ".join(problems))
    return requests, states["sent"]


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
        add_crowd(url, args.emails)
        plan = load_plan(ROOT / "plans" / "npm-2022.yaml")
        started = time.perf_counter()
        with Registry(url) as registry:
            # Years after the notice day: queued however late (held back otherwise).
            [queued] = queue_due(registry, plan, NOTICE_DAY, actor="bench", late=True)
        queue_s = time.perf_counter() - started
        port = free_port()
        server = start_server(port, work / "received.jsonl")
        try:
            sender = SendGridSender(KEY, f"http://127.0.0.1:{port}", timeout=10)
            started = time.perf_counter()
            with Registry(url) as registry:
                report = drain(
                    registry, plan, sender, concurrency=args.concurrency, processes=args.processes
                )
            send_s = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait()
        received, sent = check(url, work / "received.jsonl", args.emails, queued.added, report)
        me = resource.getrusage(resource.RUSAGE_SELF)
        server_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak = own_peak_mib()
        print(f"queued {queued.added} phase notices in {queue_s:.1f} s")
        print(
            f"sent {report.sent} (failed {report.failed}) in {send_s:.1f} s: "
            f"{report.sent / send_s:,.0f} messages/s at concurrency {args.concurrency} "
            f"x {args.processes} processes; "
            f"server received {received}, ledger says sent {sent} (checked: each "
            f"outbox row delivered once, as recorded); "
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
