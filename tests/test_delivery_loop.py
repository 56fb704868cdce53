"""The whole loop with real processes, on SQLite and PostgreSQL: emails queued, sent by
`rollout notify send` through the official client to `rollout dev sendgrid`, whose
signed delivery events `rollout notify events serve` lands; `rollout ingest` loads them
and gives each notification its state; `rollout phase preview` then names who no
warning reached, and `rollout phase enforce` refuses over the plan's share until that
count is typed back."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import select

from rollout.core.plan import load_plan
from rollout.demo.crowd import NOTICE_DAY
from rollout.dev.event_webhook import BOUNCE_REASON
from rollout.dev.sendgrid_api import DEFAULT_API_KEY
from rollout.notify.webhook import EVENTS_PATH
from rollout.registry import Registry
from rollout.registry.models import Account, Notification
from tests.factories import AccountFactory, bound_to
from tests.support.outbox import ids, queue_late
from tests.support.previews import to_apply
from tests.support.serving import free_port, wait_until_answering

__all__ = ["ids"]  # a fixture, used by name

ROOT = Path(__file__).resolve().parents[1]


class Processes:
    """The commands the loop runs, each a process of its own, all stopped at the end."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.started: list[subprocess.Popen[str]] = []

    def start(self, *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "rollout", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.started.append(process)
        return process

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rollout", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def stop(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def processes(registry: Registry, tmp_path: Path, plan_path: Path) -> Iterator[Processes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROLLOUT_", "SENDGRID_"))}
    (tmp_path / "home").mkdir()  # a deployment's home, where the receiver lands events
    env.update(
        ROLLOUT_HOME=str(tmp_path / "home"),
        ROLLOUT_REGISTRY_URL=registry.url,
        ROLLOUT_PLAN=str(plan_path),
        ROLLOUT_ACTOR="rm",
    )
    running = Processes(env)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def plan_path(tmp_path: Path) -> Path:
    """The reference plan, with a reach guard on its first phase: at most half of the
    accounts it changes may be unwarned."""
    plan = yaml.safe_load((ROOT / "plans" / "npm-2022.yaml").read_text())
    first = next(p for p in plan["phases"] if p["name"] == "top-100")
    first["max_unreached_share"] = 0.5
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_who_bounced_is_named_before_enforcement_and_holds_it_back(
    registry: Registry, ids: dict[str, int], processes: Processes, tmp_path: Path
) -> None:
    """In the top-100 cohort: ann (no 2FA) whose mailbox bounces, ben (TOTP), cat
    (unverified email), dan (an address suppressed by hand), fay (no 2FA, delivered)."""
    with bound_to(registry.engine):
        AccountFactory(username="fay", in_cohort="top-100")
    # Sent now, by the real clock, years after the notice's last day: queued --late.
    queue_late(registry, load_plan(Path(processes.env["ROLLOUT_PLAN"])), NOTICE_DAY)
    sendgrid_port, receiver_port = free_port(), free_port()
    receiver_url = f"http://127.0.0.1:{receiver_port}"
    sendgrid = processes.start(
        "dev",
        "sendgrid",
        "--port",
        str(sendgrid_port),
        "--webhook-url",
        f"{receiver_url}{EVENTS_PATH}",
    )
    assert sendgrid.stdout is not None
    key = None
    while key is None:
        line = sendgrid.stdout.readline()
        assert line, "the local SendGrid server ended before printing its key"
        found = re.search(r"\(ROLLOUT_SENDGRID_WEBHOOK_KEY\): (\S+)", line)
        key = found.group(1) if found else None
    sendgrid_url = f"http://127.0.0.1:{sendgrid_port}"
    processes.env.update(
        ROLLOUT_SENDGRID_URL=sendgrid_url,
        SENDGRID_API_KEY=DEFAULT_API_KEY,
        ROLLOUT_SENDGRID_WEBHOOK_KEY=key,
    )
    receiver = processes.start("notify", "events", "serve", "--port", str(receiver_port))
    wait_until_answering(f"{receiver_url}/healthz", receiver, "the receiver")
    scripted = httpx.post(
        f"{sendgrid_url}/dev/events",
        json={"ann@example.com": "bounce"},
        headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
    )
    assert scripted.is_success, scripted.text

    sent = processes.run("notify", "send", "--apply")
    assert sent.returncode == 0, sent.stderr
    # ann, ben and fay were sent the notice (cat's address is unverified, dan's
    # suppressed): processed, then bounce or delivered, each.
    landing = Path(processes.env["ROLLOUT_HOME"]) / "landing" / "events"
    deadline = time.monotonic() + 60
    while sum(len(json.loads(p.read_text())) for p in landing.glob("*.json")) < 6:
        assert time.monotonic() < deadline, "the events did not land"
        time.sleep(0.2)

    loaded = processes.run("ingest", "--format", "json")
    assert loaded.returncode == 0, loaded.stderr
    assert {f["kind"] for f in json.loads(loaded.stdout)} == {"events"}
    assert "delivery events: states written for 3 notifications" in loaded.stderr
    with registry.engine.connect() as connection:
        states = dict(
            connection.execute(
                select(Account.username, Notification.delivery).join(
                    Account, Account.id == Notification.account_id
                )
            ).all()
        )
    assert states == {
        "ann": "bounced",
        "ben": "delivered",
        "cat": None,
        "dan": None,
        "fay": "delivered",
    }

    preview = processes.run("phase", "preview", "top-100", "--format", "json")
    assert preview.returncode == 0, preview.stderr
    notice = {row["username"]: row["notice"] for row in json.loads(preview.stdout)}
    assert notice == {
        "ann": f"bounced: bounce: {BOUNCE_REASON}",
        "cat": "unverified email",
        "dan": "suppressed",
        "fay": "delivered",
    }
    assert "Never reached: 3 of 4 (75.0%), over the plan's limit of 50.0%" in preview.stderr
    assert "--apply --expect 4 --accept-unreached 3" in preview.stderr

    apply = to_apply(preview.stderr)
    assert apply[-4:-2] == ["--accept-unreached", "3"]
    refused = processes.run(*apply[:-4], *apply[-2:])
    assert refused.returncode == 3
    assert "3 of 4 accounts (75.0%) were never reached" in refused.stderr
    enforced = processes.run(*apply, "--format", "json")
    assert enforced.returncode == 0, enforced.stderr
    result = json.loads(enforced.stdout)
    assert (result["accounts_required"], result["accounts_unreached"]) == (4, 3)
