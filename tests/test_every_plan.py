"""Every shipped plan played through its calendar on one registry, on SQLite and
PostgreSQL: each day's emails queued and sent, each phase previewed and enforced on
its day with the counts typed back, and what each phase did checked against what it
asks: nobody who met a phase's requirements was touched by it, and each phase changed
exactly what its preview listed.

The cohorts are made directly (every account in every cohort of the plan): choosing
them from download metrics is pinned down in tests/sql/golden/package_metrics."""

from __future__ import annotations

from datetime import datetime, time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from rollout.core.calendar import plan_calendar
from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.plan import Plan, load_plan
from rollout.notify.drain import drain
from rollout.notify.queue import queue_due
from rollout.notify.senders import FileSender
from rollout.phases import enforce
from rollout.registry import Registry
from rollout.registry.models import Account, Action, Notification, Token, WebSession
from tests.factories import AccountFactory, FactorFactory, MembershipFactory, TokenFactory

PLANS = sorted((Path(__file__).resolve().parent.parent / "plans").glob("*.yaml"))


@pytest.fixture
def people(factories: None) -> list[Account]:
    """Accounts of every standing a campaign distinguishes, each with a web session:
    no 2FA; TOTP only; a security key; each with and without a classic token, a token
    that bypasses 2FA, a fresh granular one."""
    created = datetime(2019, 1, 1)
    accounts = []
    for factor in (None, "totp", "webauthn"):
        for token in (None, "classic", "bypass", "granular"):
            account = AccountFactory(
                username=f"p{len(accounts):02d}-{factor or 'none'}-{token or 'none'}", sessions=1
            )
            accounts.append(account)
            if factor:
                FactorFactory(account_id=account.id, kind=factor, created_at=created)
            if token == "classic":
                TokenFactory(account=account, kind="publish", created_at=created)
            elif token == "bypass":
                TokenFactory(
                    account=account,
                    granular=True,
                    bypass_2fa=True,
                    created_at=created,
                    expires_at=datetime(2030, 1, 1),
                )
            elif token == "granular":
                TokenFactory(
                    account=account,
                    granular=True,
                    created_at=created,
                    expires_at=datetime(2030, 1, 1),
                )
    return accounts


def _in_every_cohort(plan: Plan, accounts: list[Account]) -> None:
    for cohort in plan.cohorts:
        for account in accounts:
            MembershipFactory(account=account, cohort=cohort)


def _count(registry: Registry, model: type, *where: object) -> int:
    with registry.engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(model).where(*where)
        ).scalar_one()


@pytest.mark.parametrize("path", PLANS, ids=[p.stem for p in PLANS])
def test_every_plan_plays_through_its_calendar(
    path: Path, registry: Registry, people: list[Account], tmp_path: Path
) -> None:
    plan = load_plan(path)
    _in_every_cohort(plan, people)
    days = sorted({step.on for step in plan_calendar(plan)})
    sender = FileSender(tmp_path / "outbox", plan.notifications.from_address)
    for day in days:
        clock = SimulatedClock(datetime.combine(day, time(9)))
        with use_clock(clock):
            queue_due(registry, plan, day, actor="rm")
            drain(registry, plan, sender)
            for phase in plan.phases:
                if phase.enforce_on != day:
                    continue
                clock.move_to(datetime.combine(day, time(12)))
                preview = enforce.preview_phase(registry, plan, phase)
                listed_tokens = {t.token_id for t in preview.tokens}
                # The mix of people leaves every phase someone to act on.
                assert preview.count > 0, phase.name
                assert bool(listed_tokens) == phase.does("revoke_tokens"), phase.name
                untouched = {t.account_id for t in preview.targets} ^ _all_ids(registry)
                before = _marks(registry, untouched)
                result = enforce.enforce_phase(
                    registry,
                    plan,
                    phase.name,
                    expect=preview.count,
                    expect_tokens=preview.token_count if phase.does("revoke_tokens") else None,
                    actor="rm",
                )
                # Exactly the previewed tokens, nothing of the accounts that complied.
                assert _revoked_by(registry, phase.name) == listed_tokens
                assert result.tokens_revoked == len(listed_tokens)
                assert _marks(registry, untouched) == before, phase.name
                assert result.accounts_required == preview.newly_required
                # The banner and TOTP closing as the preview counted them, too.
                assert result.accounts_warned == preview.newly_warned, phase.name
                assert result.totp_enrolment_closed == preview.newly_totp_closed, phase.name
                drain(registry, plan, sender)
    # Every email the plan queued was sent or skipped with a reason; none failed.
    assert _count(registry, Notification, Notification.state.in_(("queued", "failed"))) == 0
    assert _count(registry, Notification, Notification.state == "sent") > 0
    # Every revocation has exactly one audit row.
    revoked_tokens = _count(registry, Token, Token.revoked_reason.like("phase %"))
    revoked_sessions = _count(registry, WebSession, WebSession.revoked_reason.like("phase %"))
    assert _count(registry, Action, Action.action == "revoke_token") == revoked_tokens
    assert _count(registry, Action, Action.action == "revoke_session") == revoked_sessions


def _all_ids(registry: Registry) -> set[int]:
    with registry.engine.connect() as connection:
        return set(connection.execute(select(Account.id)).scalars())


def _marks(registry: Registry, ids: set[int]) -> list[tuple[object, ...]]:
    """Everything a phase may change of these accounts: the marks, live sessions and
    live tokens."""
    with registry.engine.connect() as connection:
        accounts = connection.execute(
            select(
                Account.id,
                Account.tfa_required_at,
                Account.webauthn_required_at,
                Account.warned_at,
                Account.totp_enrolment_closed_at,
            )
            .where(Account.id.in_(ids))
            .order_by(Account.id)
        ).all()
        sessions = connection.execute(
            select(WebSession.id).where(
                WebSession.account_id.in_(ids), WebSession.revoked_at.is_(None)
            )
        ).all()
        tokens = connection.execute(
            select(Token.id).where(Token.account_id.in_(ids), Token.revoked_at.is_(None))
        ).all()
    return [*accounts, *sorted(sessions), *sorted(tokens)]


def _revoked_by(registry: Registry, phase: str) -> set[int]:
    with registry.engine.connect() as connection:
        return set(
            connection.execute(
                select(Token.id).where(Token.revoked_reason.like(f"phase {phase}:%"))
            ).scalars()
        )
