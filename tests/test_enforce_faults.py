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

from rollout.core.plan import load_plan
from rollout.phases import enforce
from rollout.registry import Registry
from rollout.registry.engine import session_scope
from rollout.registry.models import (
    Account,
    Action,
    CohortMembership,
    Notification,
    TfaFactor,
    Token,
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


def start_enforce(
    registry_url: str,
    plan: Path,
    home: Path,
    expect: int = NON_COMPLIANT,
    expect_tokens: int | None = None,
) -> subprocess.Popen[bytes]:
    with Registry(registry_url) as registry:
        loaded = load_plan(plan)
        listed = enforce.preview_phase(registry, loaded, loaded.phase("top-100")).fingerprint
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
            str(expect),
            *(["--expect-tokens", str(expect_tokens)] if expect_tokens is not None else []),
            *("--expect-list", listed),
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


# --- token revocation -------------------------------------------------------------------

HOLDERS, CLEAN, CLASSIC_EACH = 150, 50, 2


@pytest.fixture
def token_holders(registry: Registry) -> set[int]:
    """HOLDERS cohort accounts with CLASSIC_EACH classic tokens and a granular one each,
    CLEAN with only a granular token; every account has 2FA. Returns the classic ids."""
    fresh = datetime(2025, 11, 1)
    with session_scope(registry.engine) as session:
        accounts = [
            Account(username=f"holder{i:04d}", email=f"h{i}@example.com", created_at=T0)
            for i in range(HOLDERS + CLEAN)
        ]
        session.add_all(accounts)
        session.flush()
        classic = []
        for index, account in enumerate(accounts):
            session.add(TfaFactor(account_id=account.id, kind="totp", created_at=T0))
            session.add(
                Token(
                    account_id=account.id,
                    name="granular",
                    kind="granular",
                    writes=True,
                    bypass_2fa=False,
                    created_at=fresh,
                )
            )
            if index < HOLDERS:
                tokens = [
                    Token(account_id=account.id, name=f"ci-{n}", kind="automation", created_at=T0)
                    for n in range(CLASSIC_EACH)
                ]
                session.add_all(tokens)
                classic += tokens
            session.add(
                CohortMembership(
                    cohort="top-100",
                    account_id=account.id,
                    packages=["pkg"],
                    first_qualified_on=date(2022, 1, 3),
                    last_qualified_on=date(2022, 1, 3),
                )
            )
        session.flush()
        return {token.id for token in classic}


def revoked_tokens(registry: Registry) -> int:
    with registry.engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(Token).where(Token.revoked_at.is_not(None))
        ).scalar_one()


def test_killed_token_revocations_then_a_rerun_revoke_each_previewed_token_once(
    registry: Registry, registry_url: str, token_holders: set[int], tmp_path: Path
) -> None:
    """Each rerun is approved on a fresh preview, as an operator would: the accounts
    whose tokens went are compliant now, so the counts shrink."""
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(
        (ROOT / "plans" / "npm-2022.yaml")
        .read_text()
        .replace("    batch_size: 500", "    batch_size: 7")
        .replace(
            "    max_accounts: 1000\n",
            "    max_accounts: 1000\n"
            "    requires: {two_factor: none, no_classic_tokens: true}\n"
            "    effects: [revoke_tokens]\n"
            "    max_tokens: 1000\n",
        )
    )
    plan = load_plan(plan_path)
    total = len(token_holders)
    previewed: set[int] = set()
    chooser = random.Random(20251209)
    kills = 0
    for _ in range(4):
        preview = enforce.preview_phase(registry, plan, plan.phase("top-100"))
        previewed |= {t.token_id for t in preview.tokens}
        if not preview.tokens:
            break
        target = chooser.randrange(0, total)
        process = start_enforce(
            registry_url, plan_path, tmp_path, preview.count, preview.token_count
        )
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            if revoked_tokens(registry) >= target:
                time.sleep(chooser.choice([0, 0.001, 0.003, 0.01]))
                process.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.002)
        process.wait(timeout=60)
        if process.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(process.stderr.read().decode() if process.stderr else "")
    assert kills >= 1
    preview = enforce.preview_phase(registry, plan, plan.phase("top-100"))
    previewed |= {t.token_id for t in preview.tokens}
    final = start_enforce(registry_url, plan_path, tmp_path, preview.count, preview.token_count)
    _, errors = final.communicate(timeout=120)
    assert final.returncode == 0, errors.decode()

    with registry.engine.connect() as connection:
        revoked = set(
            connection.execute(select(Token.id).where(Token.revoked_at.is_not(None))).scalars()
        )
        audits = connection.execute(
            select(Action.subject, func.count())
            .where(Action.action == "revoke_token")
            .group_by(Action.subject)
        ).all()
        flags = connection.execute(
            select(func.count()).select_from(Account).where(Account.tfa_required_at.is_not(None))
        ).scalar_one()
    # Exactly the classic tokens, each once, never one outside a preview; nothing else.
    assert revoked == token_holders == previewed
    assert sorted(subject for subject, _ in audits) == sorted(f"token:{t}" for t in revoked)
    assert {count for _, count in audits} == {1}
    assert flags == 0
