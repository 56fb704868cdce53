"""Benchmark: the Event Webhook receiver taking 1M signed events (issue 17).

Usage:
    python bench/bench_webhook.py [--events 1000000] [--batch 1000] [--threads 4]

Starts the real receiver (`rollout notify events serve`, uvicorn) in a process of its
own on a free port, with a fresh ROLLOUT_HOME and a verification key made here; builds
``--events`` SendGrid-shaped events in posts of ``--batch`` (SendGrid batches events
the same way), each signed as SendGrid signs; posts them over keep-alive connections
from ``--threads`` threads; then reports events/s (wall) and events per CPU-second of
the receiver process (psutil: user + system), the target being per core.

Checked, failing the run (exit 1) when wrong: every post answered 200 with its event
count; the landing folder holds exactly one file per post, each byte for byte the body
posted (by SHA-256), and the events in them add up to ``--events``; a replay of the
first post is refused (409) and writes nothing.

Target (issue 17): the receiver at least 2,000 events/s per core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from rollout.dev.webhook_signing import WebhookSigner
from rollout.notify.webhook import EVENTS_PATH

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
                "outbox_id": str(i // 2),
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
    args = parser.parse_args()
    signer = WebhookSigner()
    prepared = posts(args.events, args.batch, signer)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as scratch:
        home = Path(scratch)
        port = free_port()
        env = {
            **os.environ,
            "ROLLOUT_HOME": str(home),
            "ROLLOUT_SENDGRID_WEBHOOK_KEY": signer.public_key,
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "rollout", "notify", "events", "serve", "--port", str(port)],
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
        if replay.status_code != 409:
            failures.append(f"a replay was answered {replay.status_code}, not 409")
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
    print(
        f"{args.events:,} events in {len(prepared):,} posts of {args.batch}, {args.threads} "
        f"client threads: {wall:.1f} s wall, {args.events / wall:,.0f} events/s; receiver "
        f"CPU {cpu:.1f} s: {args.events / cpu:,.0f} events per CPU-second"
    )
    if failures:
        raise SystemExit("FAIL: " + "; ".join(failures))
    print("OK: every post landed once, byte for byte; the replay was refused")


if __name__ == "__main__":
    main()
