"""Fault injection: kill the enforce process at random points (between batches and
inside one), rerun, and check every effect happened exactly once, on SQLite and
PostgreSQL. The enforcing runs are real `rollout` processes killed with SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import date, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from rollout.registry import Registry
from rollout.registry.engine import session_scope
from rollout.registry.models import (
    Account,
    Action,
    CohortMembership,
    Notification,
    TfaFactor,
    WebSession,
)

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2021, 6, 1)
NON_COMPLIANT, COMPLIANT, SESSIONS_EACH = 240, 60, 3


@pytest.fixture
def crowd(registry: Registry) -> tuple[set[int], set[int]]:
    with session_scope(registry.engine) as session:
        accounts = [
            Account(
                username=f"user{i:04d}",
                email=f"user{i:04d}@example.com",
                email_verified=True,
                created_at=T0,
            )
            for i in range(NON_COMPLIANT + COMPLIANT)
        ]
        session.add_all(accounts)
        session.flush()
        compliant = {a.id for a in accounts[NON_COMPLIANT:]}
        for account in accounts:
            if account.id in compliant:
                session.add(TfaFactor(account_id=account.id, kind="totp", created_at=T0))
            session.add_all(
                WebSession(account_id=account.id, created_at=T0) for _ in range(SESSIONS_EACH)
            )
            session.add(
                CohortMembership(
                    cohort="top-100",
                    account_id=account.id,
                    packages=["pkg"],
                    first_qualified_on=date(2022, 1, 3),
                    last_qualified_on=date(2022, 1, 3),
                )
            )
        return {a.id for a in accounts[:NON_COMPLIANT]}, compliant


def start_enforce(registry_url: str, plan: Path, home: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ROLLOUT_REGISTRY_URL": registry_url,
        "ROLLOUT_PLAN": str(plan),
        "ROLLOUT_HOME": str(home),
        "ROLLOUT_ACTOR": "fault-test",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rollout",
            "phase",
            "enforce",
            "top-100",
            "--apply",
            "--expect",
            str(NON_COMPLIANT),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def flagged(registry: Registry) -> int:
    with registry.engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(Account).where(Account.tfa_required_at.is_not(None))
        ).scalar_one()


def test_killed_runs_then_a_rerun_change_everything_exactly_once(
    registry: Registry, registry_url: str, crowd: tuple[set[int], set[int]], tmp_path: Path
) -> None:
    non_compliant, compliant = crowd
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        (ROOT / "plans" / "npm-2022.yaml")
        .read_text()
        .replace("    batch_size: 500", "    batch_size: 7")
    )
    chooser = random.Random(20220201)
    kills, partial = 0, []
    for _ in range(4):
        target = chooser.randrange(0, NON_COMPLIANT)
        process = start_enforce(registry_url, plan, tmp_path)
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            if flagged(registry) >= target:
                # Sometimes at once (between batches), sometimes a moment later (inside
                # the next batch's transaction).
                time.sleep(chooser.choice([0, 0.001, 0.003, 0.01]))
                process.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.002)
        process.wait(timeout=60)
        partial.append(flagged(registry))
        if process.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(process.stderr.read().decode() if process.stderr else "")
    assert kills >= 1
    # At least one kill stopped a run half way: the rerun had work left to resume.
    assert any(0 < done < NON_COMPLIANT for done in partial), partial
    final = start_enforce(registry_url, plan, tmp_path)
    _, errors = final.communicate(timeout=120)
    assert final.returncode == 0, errors.decode()

    with registry.engine.connect() as connection:
        required = {
            a
            for (a,) in connection.execute(
                select(Account.id).where(Account.tfa_required_at.is_not(None))
            )
        }
        live = dict(
            connection.execute(
                select(WebSession.account_id, func.count())
                .where(WebSession.revoked_at.is_(None))
                .group_by(WebSession.account_id)
            ).all()
        )
        revoke_rows = connection.execute(
            select(Action.subject, func.count())
            .where(Action.action == "revoke_session")
            .group_by(Action.subject)
        ).all()
        flag_rows = connection.execute(
            select(Action.account_id, func.count())
            .where(Action.action == "tfa_required")
            .group_by(Action.account_id)
        ).all()
        emails = connection.execute(
            select(Notification.account_id, func.count()).group_by(Notification.account_id)
        ).all()
        revoked_sessions = connection.execute(
            select(func.count()).select_from(WebSession).where(WebSession.revoked_at.is_not(None))
        ).scalar_one()
    assert required == non_compliant
    # Every non-compliant session revoked, exactly one audit row each; none of the others.
    assert all(account in compliant for account in live)
    assert all(live[account] == SESSIONS_EACH for account in compliant)
    assert revoked_sessions == NON_COMPLIANT * SESSIONS_EACH
    assert len(revoke_rows) == NON_COMPLIANT * SESSIONS_EACH
    assert {count for _, count in revoke_rows} == {1}
    assert {account for account, _ in flag_rows} == non_compliant
    assert {count for _, count in flag_rows} == {1}
    assert {account for account, _ in emails} == non_compliant
    assert {count for _, count in emails} == {1}
