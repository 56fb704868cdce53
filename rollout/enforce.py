"""Phase enforcement: require 2FA of a cohort's accounts that still have none.

``preview_phase`` lists exactly who would change; ``enforce_phase`` changes them, in
batches, each batch one transaction that marks ``tfa_required_at``, writes one audit
row per effect and queues the enforcement email, and revokes the account's live web
sessions last (the one effect that cannot be undone). Exactly once across crashes:
each change is a guarded UPDATE (``... IS NULL``) whose RETURNING rows are the only
ones audited, so a rerun after a crash changes, and audits, only what is left.
Guards: the expected count typed back, the plan's blast radius, one run at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    Connection,
    DateTime,
    Engine,
    String,
    and_,
    any_,
    cast,
    exists,
    func,
    literal,
    select,
    text,
    update,
)

from rollout.errors import GuardRefused
from rollout.locks import exclusive_run
from rollout.notify.outbox import queue_phase_summary
from rollout.plan import Phase, Plan
from rollout.registry.ledger import dialect_insert, record_actions, recorded_run, utc_now
from rollout.registry.migrate import open_registry
from rollout.registry.models import (
    Account,
    Action,
    CohortMembership,
    Notification,
    TfaFactor,
    WebSession,
    has_active_factor,
)

ACCOUNTS = Account.__table__
SESSIONS = WebSession.__table__
ACTIONS = Action.__table__
NOTIFICATIONS = Notification.__table__
ENFORCEMENT_EMAIL = "enforcement_notice"


@dataclass(frozen=True)
class Target:
    account_id: int
    username: str
    email: str
    last_login_at: datetime | None
    live_sessions: int
    already_required: bool


@dataclass
class PhasePreview:
    phase: str
    cohort: str
    targets: list[Target]
    compliant: int
    exempted: list[str]

    @property
    def count(self) -> int:
        return len(self.targets)

    @property
    def sessions(self) -> int:
        return sum(t.live_sessions for t in self.targets)


@dataclass
class EnforceResult:
    phase: str
    run_id: str
    accounts_flagged: int = 0
    sessions_revoked: int = 0
    emails_queued: int = 0
    skipped_now_compliant: int = 0
    batches: int = 0


def preview_phase(engine: Engine, plan: Plan, phase: Phase) -> PhasePreview:
    """Who ``enforce`` would change: the cohort's current accounts without a 2FA
    factor, minus the plan's exemptions. Reads only."""
    exempt = plan.exempt_usernames
    # Aggregated joins, not a correlated subquery per account: one pass over sessions.
    live = (
        select(WebSession.account_id, func.count().label("sessions"))
        .where(WebSession.revoked_at.is_(None))
        .group_by(WebSession.account_id)
        .subquery()
    )
    factors = (
        select(TfaFactor.account_id)
        .where(TfaFactor.removed_at.is_(None))
        .group_by(TfaFactor.account_id)
        .subquery()
    )
    query = (
        select(
            Account.id,
            Account.username,
            Account.email,
            Account.last_login_at,
            func.coalesce(live.c.sessions, 0),
            Account.tfa_required_at,
            factors.c.account_id.is_not(None),
        )
        .join(CohortMembership, CohortMembership.account_id == Account.id)
        .outerjoin(live, live.c.account_id == Account.id)
        .outerjoin(factors, factors.c.account_id == Account.id)
        .where(and_(CohortMembership.cohort == phase.cohort, CohortMembership.left_on.is_(None)))
        .order_by(Account.id)
    )
    targets, exempted, compliant = [], [], 0
    with engine.connect() as connection:
        for row in connection.execute(query):
            account_id, username, email, last_login, sessions, required_at, has_factor = row
            if has_factor:
                compliant += 1
            elif username in exempt:
                exempted.append(username)
            else:
                targets.append(
                    Target(
                        account_id, username, email, last_login, sessions, required_at is not None
                    )
                )
    return PhasePreview(phase.name, phase.cohort, targets, compliant, exempted)


# --- enforcement ---------------------------------------------------------------------------


def _among(connection: Connection, column: Any, ids: list[int]) -> Any:
    """``column IN ids`` for a batch of thousands of ids: one array parameter on
    PostgreSQL (a 10,000-placeholder statement cost more to parse than to run)."""
    if connection.dialect.name == "postgresql":
        return column == any_(cast(literal(ids), ARRAY(BigInteger)))
    return column.in_(ids)


def _audit_columns() -> list[str]:
    return [
        "effect_key",
        "action",
        "account_id",
        "subject",
        "phase",
        "reason",
        "actor",
        "run_id",
        "created_at",
        "details",
    ]


def _enforce_batch(
    connection: Connection,
    phase: Phase,
    account_ids: list[int],
    run_id: str,
    actor: str,
    now: datetime,
) -> tuple[list[int], int, int, int]:
    """One transaction: flag, queue the email, revoke sessions last, audit each effect.

    Set-based on the server: the audit rows and emails are INSERT ... SELECTs over the
    rows this batch changed, which carry its timestamp ``now``; nothing travels row by
    row through Python (at npm scale that was 1.3M audit rows a run).
    """
    still_without = [
        account_id
        for (account_id,) in connection.execute(
            select(Account.id).where(
                and_(_among(connection, Account.id, account_ids), ~has_active_factor(Account.id))
            )
        )
    ]
    skipped = len(account_ids) - len(still_without)
    if not still_without:
        return [], 0, 0, skipped
    reason = f"phase {phase.name}: 2FA required of cohort {phase.cohort}"
    if connection.dialect.name == "postgresql":
        # A batch commits or vanishes whole either way; not waiting for its WAL flush
        # cannot lose half a batch, only delay when a server crash would lose it all.
        connection.execute(text("set local synchronous_commit to off"))
    flagged = [
        row[0]
        for row in connection.execute(
            update(ACCOUNTS)
            .where(
                and_(
                    _among(connection, ACCOUNTS.c.id, still_without),
                    ACCOUNTS.c.tfa_required_at.is_(None),
                )
            )
            .values(tfa_required_at=now)
            .returning(ACCOUNTS.c.id)
        )
    ]
    flagged_here = and_(
        _among(connection, ACCOUNTS.c.id, flagged), ACCOUNTS.c.tfa_required_at == now
    )
    # Not outbox.queue_email: its queue-time skip checks (suppressed, unverified) cost
    # 2 s of an npm-scale run, over the 30 s target; the drain makes them at send time.
    queued = connection.execute(
        dialect_insert(connection, NOTIFICATIONS)
        .from_select(
            [
                "account_id",
                "email",
                "phase",
                "state",
                "context",
                "attempts",
                "run_id",
                "created_at",
                "updated_at",
            ],
            select(
                ACCOUNTS.c.id,
                literal(ENFORCEMENT_EMAIL),
                literal(phase.name),
                literal("queued"),
                literal({"phase": phase.name, "cohort": phase.cohort}, JSON),
                literal(0),
                literal(run_id),
                literal(now, DateTime),
                literal(now, DateTime),
            ).where(_among(connection, ACCOUNTS.c.id, still_without)),
        )
        .on_conflict_do_nothing(index_elements=["account_id", "email", "phase", "occasion"])
        # Counted from RETURNING: psycopg reports -1 as this INSERT's rowcount.
        .returning(NOTIFICATIONS.c.id)
    ).all()
    common = [
        literal(phase.name),
        literal(reason),
        literal(actor),
        literal(run_id),
        literal(now, DateTime),
        literal({}, JSON),
    ]
    connection.execute(
        dialect_insert(connection, ACTIONS).from_select(
            _audit_columns(),
            select(
                literal(f"tfa-required:{phase.name}:")
                + cast(ACCOUNTS.c.id, String)
                + literal(f":{run_id}"),
                literal("tfa_required"),
                ACCOUNTS.c.id,
                literal(None, String),
                *common,
            ).where(flagged_here),
        )
        # No ON CONFLICT: these rows describe changes this transaction just made behind
        # an IS NULL guard, so their keys are new; were one not, the unique key should
        # fail the batch loudly. (Speculative inserts cost a fifth more on PostgreSQL.)
    )
    revoke = (
        update(SESSIONS)
        .where(
            and_(
                _among(connection, SESSIONS.c.account_id, still_without),
                SESSIONS.c.revoked_at.is_(None),
            )
        )
        .values(revoked_at=now, revoked_reason=reason[:200])
    )

    def session_audit(sessions: Any) -> Any:
        return dialect_insert(connection, ACTIONS).from_select(
            _audit_columns(),
            select(
                literal("revoke-session:") + cast(sessions.c.id, String),
                literal("revoke_session"),
                sessions.c.account_id,
                literal("web_session:") + cast(sessions.c.id, String),
                *common,
            ),
        )

    if connection.dialect.name == "postgresql":
        # Revoked and audited in one statement: the audit reads the rows the UPDATE
        # returns instead of finding them again by account and time.
        revoked_rows = revoke.returning(SESSIONS.c.id, SESSIONS.c.account_id).cte("revoked")
        audited = session_audit(revoked_rows).returning(ACTIONS.c.id).cte("audited")
        revoked = connection.execute(select(func.count()).select_from(audited)).scalar_one()
    else:
        revoked = connection.execute(revoke).rowcount
        revoked_now = (
            select(SESSIONS.c.id, SESSIONS.c.account_id)
            .where(
                and_(
                    _among(connection, SESSIONS.c.account_id, still_without),
                    SESSIONS.c.revoked_at == now,
                )
            )
            .subquery()
        )
        connection.execute(session_audit(revoked_now))
    return flagged, revoked, len(queued), skipped


def enforce_phase(
    registry_url: str,
    plan: Plan,
    phase_name: str,
    *,
    expect: int,
    actor: str,
    batch_size: int | None = None,
) -> EnforceResult:
    """Apply a phase to exactly the previewed accounts, refusing on any mismatch."""
    phase = plan.phase(phase_name)
    with exclusive_run(registry_url, "enforce"), open_registry(registry_url) as engine:
        preview = preview_phase(engine, plan, phase)
        if preview.count != expect:
            raise GuardRefused(
                f"phase {phase.name} would change {preview.count} accounts, not the "
                f"{expect} expected: run `rollout phase preview {phase.name}` and check"
            )
        if preview.count > phase.max_accounts:
            raise GuardRefused(
                f"phase {phase.name} would change {preview.count} accounts, over the "
                f"plan's blast-radius limit of {phase.max_accounts}"
            )
        ids = [t.account_id for t in preview.targets]
        size = batch_size or phase.batch_size
        with recorded_run(
            engine,
            plan=plan.name,
            step=f"phase {phase.name}",
            mode="apply",
            actor=actor,
            parameters={"expect": expect, "phase": phase.name},
        ) as run:
            result = EnforceResult(phase.name, run.id)
            for start in range(0, len(ids), size):
                with engine.begin() as connection:
                    flagged, revoked, queued, skipped = _enforce_batch(
                        connection, phase, ids[start : start + size], run.id, actor, utc_now()
                    )
                result.accounts_flagged += len(flagged)
                result.sessions_revoked += revoked
                result.emails_queued += queued
                result.skipped_now_compliant += skipped
                result.batches += 1
                run.summary = _summary(result)
            if result.accounts_flagged or result.sessions_revoked:
                with engine.begin() as connection:
                    queue_phase_summary(
                        connection,
                        plan,
                        phase.name,
                        counts=_summary(result),
                        run_id=run.id,
                        now=utc_now(),
                    )
        return result


def _summary(result: EnforceResult) -> dict[str, int]:
    return {
        "accounts_flagged": result.accounts_flagged,
        "sessions_revoked": result.sessions_revoked,
        "emails_queued": result.emails_queued,
        "skipped_now_compliant": result.skipped_now_compliant,
        "batches": result.batches,
    }


def rollback_preview(engine: Engine, phase_name: str) -> list[int]:
    """Accounts whose 2FA requirement this phase set and only this phase: what a
    rollback clears (revoked sessions stay revoked)."""
    other = ACTIONS.alias("other")
    query = (
        select(ACCOUNTS.c.id)
        .distinct()
        .join(ACTIONS, ACTIONS.c.account_id == ACCOUNTS.c.id)
        .where(
            and_(
                ACTIONS.c.action == "tfa_required",
                ACTIONS.c.phase == phase_name,
                ACCOUNTS.c.tfa_required_at.is_not(None),
                ~exists().where(
                    and_(
                        other.c.account_id == ACCOUNTS.c.id,
                        other.c.action == "tfa_required",
                        other.c.phase != phase_name,
                    )
                ),
            )
        )
        .order_by(ACCOUNTS.c.id)
    )
    with engine.connect() as connection:
        return [row[0] for row in connection.execute(query)]


def rollback_phase(
    registry_url: str, plan: Plan, phase_name: str, *, actor: str
) -> tuple[str, int]:
    """Clear the 2FA-required flags this phase set; returns (run id, accounts cleared)."""
    phase = plan.phase(phase_name)
    with exclusive_run(registry_url, "enforce"), open_registry(registry_url) as engine:
        ids = rollback_preview(engine, phase.name)
        cleared = 0
        with recorded_run(
            engine, plan=plan.name, step=f"phase {phase.name}", mode="rollback", actor=actor
        ) as run:
            for start in range(0, len(ids), phase.batch_size):
                batch = ids[start : start + phase.batch_size]
                with engine.begin() as connection:
                    changed = [
                        row[0]
                        for row in connection.execute(
                            update(ACCOUNTS)
                            .where(
                                and_(
                                    ACCOUNTS.c.id.in_(batch),
                                    ACCOUNTS.c.tfa_required_at.is_not(None),
                                )
                            )
                            .values(tfa_required_at=None)
                            .returning(ACCOUNTS.c.id)
                        )
                    ]
                    record_actions(
                        connection,
                        (
                            {
                                "effect_key": (
                                    f"tfa-required-cleared:{phase.name}:{account_id}:{run.id}"
                                ),
                                "action": "tfa_required_cleared",
                                "account_id": account_id,
                                "phase": phase.name,
                                "reason": f"rollback of phase {phase.name}",
                                "actor": actor,
                                "run_id": run.id,
                            }
                            for account_id in changed
                        ),
                    )
                cleared += len(changed)
                run.summary = {"accounts_cleared": cleared}
        return run.id, cleared
