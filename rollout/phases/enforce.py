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

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    Connection,
    DateTime,
    String,
    and_,
    any_,
    cast,
    column,
    exists,
    func,
    literal,
    select,
    table,
    text,
    update,
)

from rollout.core.calendar import phase_step
from rollout.core.errors import GuardRefused
from rollout.core.plan import Phase, Plan
from rollout.notify.queue import queue_phase_summary
from rollout.notify.withdraw import Selection, withdraw_preview, withdraw_queued
from rollout.phases.previews import PhasePreview, Target
from rollout.registry import Registry
from rollout.registry.ledger import dialect_insert, record_actions, recorded_run, utc_now
from rollout.registry.models import (
    Account,
    Action,
    CohortMembership,
    Notification,
    PhaseRequirement,
    PlanRun,
    TfaFactor,
    WebSession,
    has_active_factor,
)

ACCOUNTS = Account.__table__
SESSIONS = WebSession.__table__
ACTIONS = Action.__table__
NOTIFICATIONS = Notification.__table__
REQUIREMENTS = PhaseRequirement.__table__
PLAN_RUNS = PlanRun.__table__
ENFORCEMENT_EMAIL = "enforcement_notice"
LOCK = "enforce"


@dataclass
class EnforceResult:
    phase: str
    run_id: str
    # The phase now requires 2FA of this many accounts it did not before; of them,
    # ``accounts_flagged`` were not required by any other phase.
    accounts_required: int = 0
    accounts_flagged: int = 0
    sessions_revoked: int = 0
    emails_queued: int = 0
    skipped_now_compliant: int = 0
    batches: int = 0

    def add(self, batch: BatchOutcome) -> None:
        for name, value in asdict(batch).items():
            setattr(self, name, getattr(self, name) + value)
        self.batches += 1

    LABELS: ClassVar[dict[str, str]] = {
        "accounts_required": "accounts the phase now requires 2FA of",
        "accounts_flagged": "of them, not required by another phase before",
        "sessions_revoked": "web sessions revoked",
        "emails_queued": "enforcement emails queued",
        "skipped_now_compliant": "skipped: enrolled since the preview",
    }

    def summary(self) -> dict[str, Any]:
        """The result as one record: what the CLI prints, flows return, runs store."""
        return asdict(self)


def preview_phase(registry: Registry, plan: Plan, phase: Phase) -> PhasePreview:
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
            REQUIREMENTS.c.account_id.is_not(None),
        )
        .join(CohortMembership, CohortMembership.account_id == Account.id)
        .outerjoin(live, live.c.account_id == Account.id)
        .outerjoin(factors, factors.c.account_id == Account.id)
        .outerjoin(
            REQUIREMENTS,
            and_(REQUIREMENTS.c.account_id == Account.id, REQUIREMENTS.c.phase == phase.name),
        )
        .where(and_(CohortMembership.cohort == phase.cohort, CohortMembership.left_on.is_(None)))
        .order_by(Account.id)
    )
    targets, exempted, compliant = [], [], 0
    with registry.engine.connect() as connection:
        for row in connection.execute(query):
            (
                account_id,
                username,
                email,
                last_login,
                sessions,
                required_at,
                has_factor,
                required_by_phase,
            ) = row
            if has_factor:
                compliant += 1
            elif username in exempt:
                exempted.append(username)
            else:
                targets.append(
                    Target(
                        account_id,
                        username,
                        email,
                        last_login,
                        sessions,
                        required_at is not None,
                        bool(required_by_phase),
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


# SQLite's side of _id_set: temp tables of the connection (the names resolve to the
# temp schema; no registry table has them).
_ID_TABLES = ("batch_ids", "revoked_ids")


def _id_set(
    connection: Connection, ids: list[int], name: str = "batch_ids"
) -> Callable[[Any], Any]:
    """``column IN ids`` for the several statements of one batch's transaction.

    SQLite: the ids go once into a temp table (``name``) that each statement reads;
    binding 10,000 placeholders into each of six statements a batch took SQLAlchemy
    longer than SQLite took to run them (about 10 s of an npm-scale enforcement), and
    the statement without them is compiled once for the whole run. PostgreSQL: one
    array parameter.
    """
    if connection.dialect.name == "postgresql":
        array = cast(literal(ids), ARRAY(BigInteger))
        return lambda column_: column_ == any_(array)
    if name not in _ID_TABLES:
        raise ValueError(f"not an id table: {name!r}")
    connection.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {name} (id INTEGER PRIMARY KEY)")
    connection.exec_driver_sql(f"DELETE FROM {name}")
    connection.exec_driver_sql(f"INSERT INTO {name} (id) VALUES (?)", [(i,) for i in ids])
    ids_table = table(name, column("id"))
    return lambda column_: column_.in_(select(ids_table.c.id))


def _changed(connection: Connection, statement: Any, key: Any) -> int:
    """How many rows an INSERT ... SELECT or UPDATE changed. SQLite: the rowcount.
    PostgreSQL: counted in the server over its RETURNING, since psycopg reports -1 for
    an INSERT ... SELECT; the rows themselves never travel (fetched one by one through
    SQLAlchemy they were seconds of an npm-scale run)."""
    if connection.dialect.name == "postgresql":
        changed = statement.returning(key).cte("changed")
        return int(connection.execute(select(func.count()).select_from(changed)).scalar_one())
    return int(connection.execute(statement).rowcount)


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


@dataclass(frozen=True)
class BatchOutcome:
    """What one batch changed."""

    accounts_required: int = 0
    accounts_flagged: int = 0
    sessions_revoked: int = 0
    emails_queued: int = 0
    skipped_now_compliant: int = 0


def _enforce_batch(
    connection: Connection,
    phase: Phase,
    account_ids: list[int],
    run_id: str,
    actor: str,
    now: datetime,
) -> BatchOutcome:
    """One transaction: record the phase's requirement, flag, queue the email, revoke
    sessions last, audit each effect.

    Set-based on the server: the audit rows and emails are INSERT ... SELECTs over the
    rows this batch changed, which carry its timestamp ``now``; nothing travels row by
    row through Python (at npm scale that was 1.3M audit rows a run).
    """
    among = _id_set(connection, account_ids)
    still_without = [
        account_id
        for (account_id,) in connection.execute(
            select(Account.id).where(and_(among(Account.id), ~has_active_factor(Account.id)))
        )
    ]
    skipped = len(account_ids) - len(still_without)
    if not still_without:
        return BatchOutcome(skipped_now_compliant=skipped)
    if skipped:
        among = _id_set(connection, still_without)
    reason = f"phase {phase.name}: 2FA required of cohort {phase.cohort}"
    if connection.dialect.name == "postgresql":
        # A batch commits or vanishes whole either way; not waiting for its WAL flush
        # cannot lose half a batch, only delay when a server crash would lose it all.
        connection.execute(text("set local synchronous_commit to off"))
    # The phase's own record of whom it requires, whether or not another phase already
    # does: what a rollback of either phase must know.
    required = _changed(
        connection,
        dialect_insert(connection, REQUIREMENTS)
        .from_select(
            ["account_id", "phase", "required_at", "run_id"],
            select(
                ACCOUNTS.c.id, literal(phase.name), literal(now, DateTime), literal(run_id)
            ).where(among(ACCOUNTS.c.id)),
        )
        .on_conflict_do_nothing(index_elements=["account_id", "phase"]),
        REQUIREMENTS.c.account_id,
    )
    flagged = _changed(
        connection,
        update(ACCOUNTS)
        .where(and_(among(ACCOUNTS.c.id), ACCOUNTS.c.tfa_required_at.is_(None)))
        .values(tfa_required_at=now),
        ACCOUNTS.c.id,
    )
    required_here = and_(
        REQUIREMENTS.c.phase == phase.name,
        among(REQUIREMENTS.c.account_id),
        REQUIREMENTS.c.run_id == run_id,
        REQUIREMENTS.c.required_at == now,
    )
    # Not queue_email: its queue-time skip checks (suppressed, unverified) cost
    # 2 s of an npm-scale run, over the 30 s target; the drain makes them at send time.
    queued = _changed(
        connection,
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
            ).where(among(ACCOUNTS.c.id)),
        )
        .on_conflict_do_nothing(index_elements=["account_id", "email", "phase", "occasion"]),
        NOTIFICATIONS.c.id,
    )
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
                + cast(REQUIREMENTS.c.account_id, String)
                + literal(f":{run_id}"),
                literal("tfa_required"),
                REQUIREMENTS.c.account_id,
                literal(None, String),
                *common,
            ).where(required_here),
        )
        # No ON CONFLICT: these rows describe requirements this transaction just added
        # (the insert above skipped existing ones), so their keys are new; were one
        # not, the unique key should fail the batch loudly. (Speculative inserts cost a
        # fifth more on PostgreSQL.)
    )
    revoke = (
        update(SESSIONS)
        .where(
            and_(
                among(SESSIONS.c.account_id),
                SESSIONS.c.revoked_at.is_(None),
            )
        )
        .values(revoked_at=now, revoked_reason=reason)
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
        # The sessions this UPDATE revoked, by id: finding them again by account and
        # time would also find a session an earlier run revoked at the same instant (a
        # simulated clock, a second `rollout demo`), whose audit row exists already.
        revoked_ids = list(connection.execute(revoke.returning(SESSIONS.c.id)).scalars())
        revoked = len(revoked_ids)
        if revoked_ids:
            revoked_here = _id_set(connection, revoked_ids, "revoked_ids")
            connection.execute(
                session_audit(
                    select(SESSIONS.c.id, SESSIONS.c.account_id)
                    .where(revoked_here(SESSIONS.c.id))
                    .subquery()
                )
            )
    return BatchOutcome(required, flagged, revoked, queued, skipped)


def enforce_phase(
    registry: Registry,
    plan: Plan,
    phase_name: str,
    *,
    expect: int,
    actor: str,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EnforceResult:
    """Apply a phase to exactly the previewed accounts, refusing on any mismatch.

    ``progress(done, total)``, if given, is called after each batch commits: the
    accounts done so far, of the previewed total."""
    phase = plan.phase(phase_name)
    with registry.lock(LOCK):
        engine = registry.engine
        preview = preview_phase(registry, plan, phase)
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
            step=phase_step(phase.name),
            mode="apply",
            actor=actor,
            lock=LOCK,
            parameters={"expect": expect, "phase": phase.name},
        ) as run:
            result = EnforceResult(phase.name, run.id)
            for start in range(0, len(ids), size):
                with engine.begin() as connection:
                    outcome = _enforce_batch(
                        connection, phase, ids[start : start + size], run.id, actor, utc_now()
                    )
                result.add(outcome)
                run.summary = _counts(result)
                if progress is not None:
                    progress(min(start + size, len(ids)), len(ids))
            if result.accounts_required or result.sessions_revoked:
                with engine.begin() as connection:
                    queue_phase_summary(
                        connection,
                        plan,
                        phase.name,
                        counts=_counts(result),
                        run_id=run.id,
                        now=utc_now(),
                    )
        return result


def _counts(result: EnforceResult | RollbackResult) -> dict[str, int]:
    """A result's counts: what its plan_runs row (and the release managers' summary
    email) keep, without the phase and run id they already carry."""
    return {k: v for k, v in result.summary().items() if isinstance(v, int)}


@dataclass(frozen=True)
class Withdrawal:
    """An account the phase requires, and what rolling the phase back does to it."""

    account_id: int
    username: str
    # The other applied phases that still require it: empty means its flag is cleared.
    still_required_by: tuple[str, ...]

    @property
    def cleared(self) -> bool:
        return not self.still_required_by


@dataclass
class RollbackPreview:
    phase: str
    accounts: list[Withdrawal]
    # Emails the phase's enforcement queued that have not gone: withdrawn, not sent.
    queued_emails: int

    @property
    def cleared(self) -> list[int]:
        return [a.account_id for a in self.accounts if a.cleared]

    @property
    def kept(self) -> list[Withdrawal]:
        return [a for a in self.accounts if not a.cleared]


def _queued_by_enforcement(phase_name: str) -> Selection:
    """The phase's emails that its enforcement runs queued and nobody sent yet."""
    runs = select(PLAN_RUNS.c.id).where(
        and_(PLAN_RUNS.c.step == phase_step(phase_name), PLAN_RUNS.c.mode == "apply")
    )
    return Selection(runs=runs)


def rollback_preview(registry: Registry, phase_name: str) -> RollbackPreview:
    """What rolling ``phase_name`` back would do: withdraw its requirement from every
    account it requires, clearing the flag of exactly those no other applied phase
    requires (revoked sessions stay revoked). Reads only."""
    other = REQUIREMENTS.alias("other")
    query = (
        select(ACCOUNTS.c.id, ACCOUNTS.c.username, other.c.phase)
        .join(REQUIREMENTS, REQUIREMENTS.c.account_id == ACCOUNTS.c.id)
        .outerjoin(other, and_(other.c.account_id == ACCOUNTS.c.id, other.c.phase != phase_name))
        .where(REQUIREMENTS.c.phase == phase_name)
        .order_by(ACCOUNTS.c.id, other.c.phase)
    )
    by_account: dict[int, tuple[str, list[str]]] = {}
    with registry.engine.connect() as connection:
        for account_id, username, other_phase in connection.execute(query):
            _, others = by_account.setdefault(account_id, (username, []))
            if other_phase is not None:
                others.append(other_phase)
        queued = sum(
            row["queued"]
            for row in withdraw_preview(connection, _queued_by_enforcement(phase_name))
        )
    return RollbackPreview(
        phase_name,
        [Withdrawal(i, name, tuple(others)) for i, (name, others) in by_account.items()],
        queued,
    )


@dataclass
class RollbackResult:
    phase: str
    run_id: str
    requirements_withdrawn: int = 0
    accounts_cleared: int = 0
    emails_withdrawn: int = 0

    LABELS: ClassVar[dict[str, str]] = {}

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def _rollback_batch(
    connection: Connection, phase_name: str, ids: list[int], run_id: str, actor: str
) -> tuple[int, int]:
    """One transaction: withdraw the phase's requirement of these accounts, clear the
    flag of those no other phase requires, audit both."""
    reason = f"rollback of phase {phase_name}"
    withdrawn = [
        row[0]
        for row in connection.execute(
            REQUIREMENTS.delete()
            .where(
                and_(
                    REQUIREMENTS.c.phase == phase_name,
                    _among(connection, REQUIREMENTS.c.account_id, ids),
                )
            )
            .returning(REQUIREMENTS.c.account_id)
        )
    ]
    required_elsewhere = exists().where(REQUIREMENTS.c.account_id == ACCOUNTS.c.id)
    cleared = [
        row[0]
        for row in connection.execute(
            update(ACCOUNTS)
            .where(
                and_(
                    _among(connection, ACCOUNTS.c.id, withdrawn),
                    ACCOUNTS.c.tfa_required_at.is_not(None),
                    ~required_elsewhere,
                )
            )
            .values(tfa_required_at=None)
            .returning(ACCOUNTS.c.id)
        )
    ]
    record_actions(
        connection,
        [
            *(
                {
                    "effect_key": f"tfa-required-withdrawn:{phase_name}:{account_id}:{run_id}",
                    "action": "tfa_required_withdrawn",
                    "account_id": account_id,
                    "phase": phase_name,
                    "reason": reason,
                    "actor": actor,
                    "run_id": run_id,
                }
                for account_id in withdrawn
            ),
            *(
                {
                    "effect_key": f"tfa-required-cleared:{phase_name}:{account_id}:{run_id}",
                    "action": "tfa_required_cleared",
                    "account_id": account_id,
                    "phase": phase_name,
                    "reason": reason,
                    "actor": actor,
                    "run_id": run_id,
                }
                for account_id in cleared
            ),
        ],
    )
    return len(withdrawn), len(cleared)


def rollback_phase(
    registry: Registry, plan: Plan, phase_name: str, *, actor: str
) -> RollbackResult:
    """Withdraw the phase's 2FA requirement: clear the flag of the accounts no other
    applied phase requires, and withdraw the emails its enforcement queued and has not
    sent (recorded as skipped, with the reason). Revoked sessions stay revoked."""
    phase = plan.phase(phase_name)
    with registry.lock(LOCK):
        engine = registry.engine
        ids = [a.account_id for a in rollback_preview(registry, phase.name).accounts]
        with recorded_run(
            engine,
            plan=plan.name,
            step=phase_step(phase.name),
            mode="rollback",
            actor=actor,
            lock=LOCK,
        ) as run:
            result = RollbackResult(phase.name, run.id)
            for start in range(0, len(ids), phase.batch_size):
                with engine.begin() as connection:
                    withdrawn, cleared = _rollback_batch(
                        connection, phase.name, ids[start : start + phase.batch_size], run.id, actor
                    )
                result.requirements_withdrawn += withdrawn
                result.accounts_cleared += cleared
                run.summary = _counts(result)
            with engine.begin() as connection:
                # After the requirements: a crash in between leaves emails queued that
                # a rerun (which finds no requirement left) still withdraws.
                result.emails_withdrawn = withdraw_queued(
                    connection,
                    _queued_by_enforcement(phase.name),
                    reason=f"phase {phase.name} rolled back",
                    actor=actor,
                    run_id=run.id,
                )
            run.summary = _counts(result)
        return result
