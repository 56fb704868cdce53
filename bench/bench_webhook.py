"""Benchmark: the Event Webhook receiver taking 1M signed events, then ingest loading
them and the registry's notifications getting their delivery states (issue 17).

Usage:
    python bench/bench_webhook.py [--events 1000000] [--batch 1000] [--threads 4] [--repeat 3]

Starts the real receiver (`rollout notify events serve`, uvicorn) in a process of its
own on a free port, with a fresh ROLLOUT_HOME and a verification key made here; builds
``--events`` SendGrid-shaped events in posts of ``--batch`` (SendGrid batches events
the same way), each signed as SendGrid signs; posts them over keep-alive connections
from ``--threads`` threads; then reports events/s (wall) and events per CPU-second of
the receiver process (psutil: user + system), the target being per core.

Checked, failing the run (exit 1) when wrong: every post answered 200 with its event
count; the landing folder holds exactly one file per post, each byte for byte the body
posted (by SHA-256), and the events in them add up to ``--events``; a replay of the
first post is acknowledged as a duplicate (200, ``"duplicate": true``: SendGrid would
retry anything else for a day) and writes nothing.

Then ingest (rollout.warehouse.ingest, in this process, a fresh warehouse each of
``--repeat`` times) loads the landed files: checked, failing the run, that every event
is in ``raw_events`` once with its kind and notification as posted, nothing was
quarantined, and a second ingest loads nothing. Last, ``apply_delivery`` writes the
states to a SQLite registry holding the notifications the events name (two events
each): checked against the state the rules give each notification, worked here.

Targets (issue 17): the receiver at least 2,000 events/s per core; ingest at least
200k events/s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from rollout_child import ROLLOUT, rollout_env
from sqlalchemy import func, select

from rollout import warehouse
from rollout.dev.webhook_signing import WebhookSigner
from rollout.notify.delivery import apply_delivery
from rollout.notify.webhook import EVENTS_PATH
from rollout.registry import Registry
from rollout.registry.engine import make_engine
from rollout.registry.migrate import upgrade
from rollout.registry.models import DELIVERY_STATES, Account, Notification
from rollout.warehouse import ingest

KINDS = ("processed", "delivered", "deferred", "bounce", "dropped")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def posts(count: int, batch: int, signer: WebhookSigner) -> list[tuple[bytes, dict[str, str]]]:
    """The events as signed posts of ``batch`` each."""
    now = int(time.time())
    made = []
    for start in range(0, count, batch):
        events = [
            {
                "email": f"maintainer{i}@example.com",
                "timestamp": now,
                "event": KINDS[i % len(KINDS)],
                "sg_event_id": f"ev{i:012d}",
                "sg_message_id": f"msg{i // 2:012d}.filter0001.1.0",
                "outbox_id": str(i // 2 + 1),
                "email_name": "phase_notice",
                "category": ["phase_notice"],
            }
            for i in range(start, min(start + batch, count))
        ]
        body = json.dumps(events).encode()
        made.append((body, signer.headers(body, now)))
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="ingest timings to take")
    parser.add_argument(
        "--registry-url",
        help="an empty database for the delivery states (default: a SQLite file in a temp dir)",
    )
    args = parser.parse_args()
    signer = WebhookSigner()
    prepared = posts(args.events, args.batch, signer)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as scratch:
        home = Path(scratch)
        port = free_port()
        env = {
            **rollout_env(os.environ),
            "ROLLOUT_HOME": str(home),
            "ROLLOUT_SENDGRID_WEBHOOK_KEY": signer.public_key,
        }
        server = subprocess.Popen(
            [*ROLLOUT, "notify", "events", "serve", "--port", str(port)],
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("FAIL: the receiver did not start")
                time.sleep(0.2)
            process = psutil.Process(server.pid)
            cpu_before = process.cpu_times()
            clients = [httpx.Client(base_url=url, timeout=60) for _ in range(args.threads)]

            def post(index: int) -> tuple[int, int]:
                body, headers = prepared[index]
                answer = clients[index % args.threads].post(
                    EVENTS_PATH, content=body, headers=headers
                )
                received = answer.json().get("received", -1) if answer.status_code == 200 else -1
                return answer.status_code, received

            started = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                answers = list(pool.map(post, range(len(prepared))))
            wall = time.perf_counter() - started
            cpu_after = process.cpu_times()
            cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
            replay = clients[0].post(EVENTS_PATH, content=prepared[0][0], headers=prepared[0][1])
            for client in clients:
                client.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
        bad = [i for i, (status, _) in enumerate(answers) if status != 200]
        if bad:
            failures.append(f"{len(bad)} posts not answered 200 (first: {answers[bad[0]]})")
        if replay.status_code != 200 or replay.json().get("duplicate") is not True:
            failures.append(
                f"a replay was answered {replay.status_code} {replay.text[:200]!r}, "
                "not 200 as a duplicate"
            )
        landed = sorted((home / "landing" / "events").iterdir())
        if len(landed) != len(prepared):
            failures.append(f"{len(landed)} files for {len(prepared)} posts")
        posted = {hashlib.sha256(body).hexdigest() for body, _ in prepared}
        written = {hashlib.sha256(path.read_bytes()).hexdigest() for path in landed}
        if written != posted:
            failures.append("the files are not byte for byte the posts")
        events = sum(len(json.loads(path.read_bytes())) for path in landed)
        if events != args.events:
            failures.append(f"{events} events landed for {args.events} posted")
        # The process's CPU time counts in clock ticks (10 ms): a small run's receiver
        # may have used less than one (it divided by zero).
        per_cpu = (
            f"{args.events / cpu:,.0f} events per CPU-second"
            if cpu > 0
            else "less than a clock tick, too little to rate"
        )
        print(
            f"{args.events:,} events in {len(prepared):,} posts of {args.batch}, "
            f"{args.threads} client threads: {wall:.1f} s wall, {args.events / wall:,.0f} "
            f"events/s; receiver CPU {cpu:.1f} s: {per_cpu}"
        )
        url = args.registry_url or f"sqlite:///{home / 'registry.db'}"
        failures += ingest_part(home, args.events, args.repeat, url)
    if failures:
        raise SystemExit("FAIL: " + "; ".join(failures))
    print(
        "OK: every post landed once, byte for byte; the replay was a duplicate, written "
        "nothing; every event "
        "loaded once as posted; every notification's state as the rules give it"
    )


def expected_counts(count: int) -> tuple[dict[str, int], dict[str, int]]:
    """Events by kind, and notifications by delivery state, as posted: event i is of
    kind KINDS[i % 5] and notification i // 2 + 1; of a notification's events the most
    final decides (rollout.registry.models.DELIVERY_STATES' order)."""
    kinds: dict[str, int] = {}
    states: dict[str, int] = {}
    state_of = {"bounce": "bounced"}
    order = DELIVERY_STATES
    of_notification: dict[int, str] = {}
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        kinds[kind] = kinds.get(kind, 0) + 1
        state = state_of.get(kind, kind)
        outbox = i // 2 + 1
        known = of_notification.get(outbox)
        if known is None or order.index(state) > order.index(known):
            of_notification[outbox] = state
    for state in of_notification.values():
        states[state] = states.get(state, 0) + 1
    return kinds, states


def ingest_part(home: Path, count: int, repeat: int, url: str) -> list[str]:
    """Ingest the landed events ``repeat`` times, each into a fresh warehouse; apply
    the last one's to a registry. Returns what was wrong."""
    failures: list[str] = []
    landing_dir = home / "landing"
    kinds, states = expected_counts(count)
    seconds = []
    for attempt in range(repeat):
        path = home / f"warehouse-{attempt}.duckdb"
        con = warehouse.connect(path)
        started = time.perf_counter()
        report = ingest.ingest(con, [landing_dir], quarantine_limit=0.0, landing_root=landing_dir)
        seconds.append(time.perf_counter() - started)
        if attempt < repeat - 1:
            con.close()
            path.unlink()
    loaded = dict(con.execute("select event, count(*) from raw_events group by all").fetchall())
    distinct, lowest, highest, outboxes = con.execute(
        "select count(distinct sg_event_id), min(sg_event_id), max(sg_event_id), "
        "sum(outbox_id) from raw_events"
    ).fetchone()
    if report.rejected or report.rows_quarantined:
        failures.append(
            f"{len(report.rejected)} files refused, {report.rows_quarantined} quarantined"
        )
    if loaded != kinds:
        failures.append(f"events by kind {loaded}, posted {kinds}")
    expected_outboxes = sum(i // 2 + 1 for i in range(count))
    if (distinct, lowest, highest, outboxes) != (
        count,
        f"ev{0:012d}",
        f"ev{count - 1:012d}",
        expected_outboxes,
    ):
        failures.append(f"events not each once as posted: {distinct, lowest, highest, outboxes}")
    again = ingest.ingest(con, [landing_dir], quarantine_limit=0.0, landing_root=landing_dir)
    if again.loaded or again.rows_loaded:
        failures.append(f"a second ingest loaded {again.rows_loaded} events")
    print(
        f"ingest of {count:,} events in {len(report.files):,} files: "
        f"{min(seconds):.2f}-{max(seconds):.2f} s over {repeat} runs, "
        f"{count / max(seconds):,.0f}-{count / min(seconds):,.0f} events/s"
    )
    failures += delivery_part(url, con, (count + 1) // 2, states)
    con.close()
    return failures


def delivery_part(url: str, con: Any, notifications: int, states: dict[str, int]) -> list[str]:
    """The delivery states written to the registry at ``url`` (empty) with the
    ``notifications`` the events name (ids 1..N, one account), checked by state."""
    engine = make_engine(url)
    upgrade(engine)
    now = datetime(2026, 1, 1)
    with engine.begin() as connection:
        connection.execute(
            Account.__table__.insert(),
            [{"id": 1, "username": "maintainer", "email": "m@example.com", "created_at": now}],
        )
        for start in range(1, notifications + 1, 100_000):
            connection.execute(
                Notification.__table__.insert(),
                [
                    {
                        "id": i,
                        "account_id": 1,
                        "email": "phase_notice",
                        "phase": "p",
                        "occasion": str(i),
                        "state": "sent",
                        "context": {},
                        "attempts": 1,
                        "created_at": now,
                        "updated_at": now,
                        "sent_at": now,
                    }
                    for i in range(start, min(start + 100_000, notifications + 1))
                ],
            )
    engine.dispose()
    with Registry(url) as registry:
        started = time.perf_counter()
        report = apply_delivery(con, registry)
        seconds = time.perf_counter() - started
        with registry.engine.connect() as connection:
            written = dict(
                connection.execute(
                    select(Notification.delivery, func.count()).group_by(Notification.delivery)
                ).all()
            )
    print(
        f"delivery states of {notifications:,} notifications written to the registry "
        f"({engine.dialect.name}): "
        f"{seconds:.1f} s, {notifications / seconds:,.0f} notifications/s"
    )
    failures = []
    if report.notifications != notifications or report.unknown:
        failures.append(f"{report.notifications} states written, {report.unknown} unknown")
    if written != states:
        failures.append(f"states {written}, the rules give {states}")
    return failures


if __name__ == "__main__":
    main()
