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

from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    ARRAY,
    JSON,
    BigInteger,
    Connection,
    DateTime,
    Select,
    String,
    and_,
    any_,
    case,
    cast,
    column,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    table,
    text,
    true,
    update,
)

from rollout.core.calendar import cohorts_step_prefix, phase_step
from rollout.core.errors import BadInput, GuardRefused
from rollout.core.fingerprints import same_list
from rollout.core.plan import Phase, Plan
from rollout.core.words import by_count, counted
from rollout.notify import reach
from rollout.notify.emails import ENFORCEMENT_EMAIL, NOTICE_EMAIL, RERUN_OCCASION
from rollout.notify.queue import queue_phase_summary
from rollout.notify.withdraw import Selection, withdraw_preview, withdraw_queued, withdrawn_reason
from rollout.phases.drift import told_days_after_notice, told_deadline, told_less
from rollout.phases.previews import (
    PhasePreview,
    Target,
    TokenTarget,
    changed_since,
    naming_changes_since,
)
from rollout.registry import Registry
from rollout.registry.deadlines import deadlines
from rollout.registry.engine import begin_writing
from rollout.registry.ledger import dialect_insert, record_actions, recorded_run, utc_now
from rollout.registry.locks import lock_accounts
from rollout.registry.models import (
    Account,
    Action,
    CohortMembership,
    CohortPackage,
    Notification,
    PhaseRequirement,
    PlanRun,
    WebSession,
    current_membership,
)
from rollout.registry.parallel import connections_for, each_committed
from rollout.registry.requirements import (
    FACTORS,
    TOKENS,
    factor_counts,
    falls_short,
    lacked_factor_at,
    lacks_factor,
    offending_token,
    phase_reason,
    revoked_by_phase,
    token_rules,
)
from rollout.registry.statistics import refresh_statistics

ACCOUNTS = Account.__table__
SESSIONS = WebSession.__table__
ACTIONS = Action.__table__
NOTIFICATIONS = Notification.__table__
REQUIREMENTS = PhaseRequirement.__table__
PLAN_RUNS = PlanRun.__table__
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
    # Of them, those signed in after the approved preview (given its time): the preview
    # counted every live session of its accounts then, and enforcement signs out every
    # live one when their batch runs, so ``sessions_revoked`` is the preview's count
    # plus these, less any that ended meanwhile. None (not known) when sessions were
    # revoked and no approved preview's time was found here to count them against: not
    # a measured 0 (left out of the stored summary, null in JSON, "not known" in words).
    sessions_signed_in_since_preview: int | None = 0
    emails_queued: int = 0
    skipped_now_compliant: int = 0
    # Previewed, then deleted from the registry before their batch: nothing done.
    skipped_deleted: int = 0
    # Previewed for tokens, whose listed tokens were revoked or expired before their
    # batch, while a token made since (not listed) offends: nothing done, left for the
    # next preview (_short_as_previewed).
    skipped_tokens_changed: int = 0
    tokens_revoked: int = 0
    accounts_warned: int = 0
    totp_enrolment_closed: int = 0
    # Of the accounts it acted on (not those compliant since the preview), those no
    # notice or reminder of the phase reached.
    accounts_unreached: int = 0
    batches: int = 0

    def add(self, batch: BatchOutcome) -> None:
        for name, value in asdict(batch).items():
            now = getattr(self, name)
            # Not known in one batch is not known in the sum.
            setattr(self, name, None if now is None or value is None else now + value)
        self.batches += 1

    LABELS: ClassVar[dict[str, str]] = {
        "accounts_required": "accounts the phase now applies to",
        "accounts_flagged": "of them, newly required to use 2FA",
        "sessions_revoked": "web sessions revoked",
        "sessions_signed_in_since_preview": "of them, signed in since the preview",
        "tokens_revoked": "tokens revoked",
        "accounts_warned": "accounts shown the warning banner",
        "totp_enrolment_closed": "accounts closed to new TOTP set-ups",
        "emails_queued": "enforcement emails queued",
        "skipped_now_compliant": "skipped: compliant since the preview",
        "skipped_deleted": "skipped: deleted from the registry since the preview",
        "skipped_tokens_changed": (
            "skipped: their listed tokens gone since the preview, a token made since "
            "left for the next preview"
        ),
        "accounts_unreached": "of the accounts acted on, never reached by a notice or reminder",
    }

    def summary(self) -> dict[str, Any]:
        """The result as one record: what the CLI prints, flows return, runs store."""
        return asdict(self)


# A count of the run's summary it could not take, in words for people (a table, the
# flow's artifact): the only one is sessions_signed_in_since_preview, with no approved
# preview's time here. JSON says null and the stored summary leaves it out (_counts).
NOT_KNOWN = "not known: no saved preview here"


def with_unknowns_said(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` (:meth:`EnforceResult.summary`) for people: a count not known (None)
    said so, never shown as 0 or left blank."""
    return {k: NOT_KNOWN if v is None else v for k, v in summary.items()}


def cohort_built(connection: Connection, cohort: str) -> bool:
    """Whether the registry holds a build of ``cohort``: packages or accounts of it, or
    a build recorded (one that found it empty: a cohort of none)."""
    for model in (CohortPackage, CohortMembership):
        found = connection.execute(select(model.id).where(model.cohort == cohort).limit(1))
        if found.first() is not None:
            return True
    builds = connection.execute(
        select(PlanRun.parameters).where(
            PlanRun.step.startswith(cohorts_step_prefix()),
            PlanRun.state == "succeeded",
            PlanRun.mode == "apply",
        )
    )
    return any(cohort in (parameters or {}).get("cohorts", ()) for (parameters,) in builds)


def require_cohort_built(connection: Connection, phase: Phase) -> None:
    """Refuse (exit 2) a phase whose cohort was never built: it has no packages, no
    accounts and no build recorded. Its preview would read "0 accounts", and an
    enforcement approved on it would be recorded as applied (`plan show`: applied)
    having required no one, while the maintainers the build would list go unenforced.
    A cohort built and found empty is a cohort of none: previewed and enforced as such."""
    cohort = phase.cohort
    if cohort_built(connection, cohort):
        return
    raise BadInput(
        None,
        None,
        f"phase {phase.name}: its cohort {cohort} has never been built, so there is no one "
        f"to preview or enforce yet: build it on its day, `rollout cohorts build --as-of "
        f"{phase.cohort_as_of}` (the daily run does), then preview again",
    )


def preview_phase(
    registry: Registry,
    plan: Plan,
    phase: Phase,
    *,
    now: datetime | None = None,
    details: bool = True,
) -> PhasePreview:
    """Who ``enforce`` would change: the cohort's current accounts that fall short of
    the phase's requirements at ``now`` (lack the factor it asks for, or hold a token it
    forbids), minus the plan's exemptions; and, when it revokes tokens, which. Reads only (on
    PostgreSQL it may first refresh the planner's statistics: rollout.registry.statistics).

    ``details=False`` (enforcement's own preview under its lock, which needs only the
    ids and counts) leaves out the email, last login, the live sessions of a phase that
    does not revoke them, and each token's kind, name and dates."""
    now = now or utc_now()
    requires = phase.requires
    exempt = plan.exempt_usernames
    query = (
        select(ACCOUNTS.c.id)
        .join(CohortMembership, CohortMembership.account_id == ACCOUNTS.c.id)
        .outerjoin(
            REQUIREMENTS,
            and_(REQUIREMENTS.c.account_id == ACCOUNTS.c.id, REQUIREMENTS.c.phase == phase.name),
        )
        .where(current_membership(phase.cohort))
        .order_by(ACCOUNTS.c.id)
    )
    # Aggregated joins, not a correlated subquery per account: one pass over each table,
    # and only over the tables the phase's requirements and effects read. Without the
    # details (enforcement's own preview), no column needing a conversion per row.
    zero = literal(0)
    sessions: Any = zero
    if details or phase.does("revoke_sessions"):
        live = (
            select(SESSIONS.c.account_id, func.count().label("sessions"))
            .where(SESSIONS.c.revoked_at.is_(None))
            .group_by(SESSIONS.c.account_id)
            .subquery()
        )
        query = query.outerjoin(live, live.c.account_id == ACCOUNTS.c.id)
        sessions = func.coalesce(live.c.sessions, 0)
    has_factor: Any = literal(True)
    if requires.two_factor != "none":
        factors = (
            select(FACTORS.c.account_id)
            .where(factor_counts(requires))
            .group_by(FACTORS.c.account_id)
            .subquery()
        )
        query = query.outerjoin(factors, factors.c.account_id == ACCOUNTS.c.id)
        has_factor = factors.c.account_id.is_not(None)
    # Whether one of the phase's warnings reached the account (rollout.notify.reach).
    got = reach.reached(phase.name)
    query = query.outerjoin(got, got.c.account_id == ACCOUNTS.c.id)
    query = query.with_only_columns(
        ACCOUNTS.c.id,
        ACCOUNTS.c.username,
        ACCOUNTS.c.email if details else literal(""),
        ACCOUNTS.c.last_login_at if details else literal(None, DateTime),
        sessions,
        ACCOUNTS.c.tfa_required_at.is_not(None),
        has_factor,
        REQUIREMENTS.c.account_id.is_not(None),
        got.c.account_id.is_not(None),
        ACCOUNTS.c.warned_at.is_not(None),
        ACCOUNTS.c.totp_enrolment_closed_at.is_not(None),
        maintain_column_froms=True,
    )
    asks_factor = requires.two_factor != "none"
    targets, exempted, compliant = [], [], 0
    exempt_but_required: list[str] = []
    not_due = never_noticed = 0
    not_reached: list[int] = []
    refresh_statistics(registry.engine)  # the planner's, not the registry's data
    with registry.engine.connect() as connection:
        require_cohort_built(connection, phase)
        # With per-account deadlines, each noticed account's own (one read of the phase's
        # notices and snoozes): only accounts whose deadline has come are targets today;
        # an account without one was never sent the notice.
        per_account = phase.deadline is not None
        own_deadlines = deadlines(connection, phase) if per_account else {}
        today = now.date()
        # The cohort's forbidden tokens, read once: how many each account holds decides
        # whether it falls short, and those of the targets are the list to revoke.
        cohort_tokens: list[TokenTarget] = []
        cohort_token_ids: list[tuple[int, int]] = []
        aged_at = _aged_at(phase, now)
        if per_account and requires.token_max_age_days is not None:
            # Each account's tokens aged as at the start of its own deadline, as its
            # warnings judged them: one that grew too old since was never announced.
            cohort_token_ids = _old_by_own_deadline(connection, phase, now, own_deadlines)
            if details:
                kept = {token for token, _ in cohort_token_ids}
                cohort_tokens = [
                    t
                    for t in _offending_tokens(connection, phase, now, aged_at)
                    if t.token_id in kept
                ]
        elif requires.token_rules and details:
            cohort_tokens = _offending_tokens(connection, phase, now, aged_at)
            cohort_token_ids = [(t.token_id, t.account_id) for t in cohort_tokens]
        elif requires.token_rules:
            cohort_token_ids = _offending_token_ids(connection, phase, now, aged_at)
        held = Counter(account_id for _, account_id in cohort_token_ids)
        for row in connection.execute(query).all():
            (
                account_id,
                username,
                email,
                last_login,
                live_sessions,
                already_required,
                factor,
                required_by_phase,
                notice_reached,
                warned,
                totp_closed,
            ) = row
            offending_tokens = held.get(account_id, 0)
            lacks = asks_factor and not factor
            if not lacks and not offending_tokens:
                compliant += 1
            elif username in exempt:
                exempted.append(username)
                if required_by_phase:
                    exempt_but_required.append(username)
            elif per_account and (
                account_id not in own_deadlines or own_deadlines[account_id] > today
            ):
                not_due += 1
                never_noticed += account_id not in own_deadlines
            else:
                targets.append(
                    Target(
                        account_id,
                        username,
                        email,
                        last_login,
                        live_sessions,
                        bool(already_required),
                        bool(required_by_phase),
                        lacks,
                        offending_tokens,
                        own_deadlines.get(account_id),
                        bool(warned),
                        bool(totp_closed),
                    )
                )
                if not notice_reached:
                    not_reached.append(account_id)
        unreached = reach.why_unreached(connection, phase.name, not_reached)
    token_ids: list[tuple[int, int]] = []
    tokens_found: list[TokenTarget] = []
    if phase.does("revoke_tokens"):
        target_ids = {t.account_id for t in targets}
        token_ids = [pair for pair in cohort_token_ids if pair[1] in target_ids]
        tokens_found = [t for t in cohort_tokens if t.account_id in target_ids]
    return PhasePreview(
        phase.name,
        phase.cohort,
        targets,
        compliant,
        exempted,
        effects=tuple(phase.effects),
        token_ids=token_ids,
        tokens=tokens_found,
        requirements=tuple(requires.describe()),
        token_rules=requires.token_rules,
        any_second_factor=requires.two_factor == "any",
        per_account_deadlines=phase.deadline is not None,
        not_due=not_due,
        never_noticed=never_noticed,
        unreached=unreached,
        max_unreached_share=phase.max_unreached_share,
        max_accounts=phase.max_accounts,
        max_tokens=phase.max_tokens,
        exempt_but_required=exempt_but_required,
    )


def _aged_at(phase: Phase, now: datetime) -> datetime:
    """When enforcement judges a token's age: the start of the day the phase announced
    (its warnings judged tokens then, rollout.registry.requirements.judged_at), or
    ``now`` if earlier (enforced early). A token that grew too old after that day was
    never announced: a rerun weeks later does not revoke it unwarned. (Per-account
    deadlines: ``_old_by_own_deadline`` judges each account at its own.)"""
    if phase.deadline is not None:
        return now
    return min(now, datetime.combine(phase.enforce_on, time.min))


def _cohort_tokens(phase: Phase, now: datetime, aged_at: datetime) -> Any:
    """The live tokens of the phase's current cohort that its token rules forbid, their
    age judged at ``aged_at``."""
    return and_(
        CohortMembership.account_id == TOKENS.c.account_id,
        current_membership(phase.cohort),
        offending_token(phase.requires, TOKENS, now, aged_at),
    )


def _old_by_own_deadline(
    connection: Connection, phase: Phase, now: datetime, own_deadlines: Mapping[int, date]
) -> list[tuple[int, int]]:
    """``_offending_token_ids`` of a phase with per-account deadlines and a token age
    rule: the tokens forbidden now that are still forbidden with their age judged at the
    start of their account's own deadline (by a rule other than age, or old enough
    then). An account whose deadline has not come (or that has none) keeps its tokens
    as judged now: it is not enforced today."""
    max_age = phase.requires.token_max_age_days
    assert max_age is not None
    ageless = phase.requires.model_copy(update={"token_max_age_days": None})
    today = now.date()
    rows = connection.execute(
        select(
            TOKENS.c.id,
            TOKENS.c.account_id,
            TOKENS.c.created_at,
            offending_token(ageless, TOKENS, now),
        )
        .join(CohortMembership, _cohort_tokens(phase, now, now))
        .order_by(TOKENS.c.account_id, TOKENS.c.id)
    )
    return [
        (token_id, account_id)
        for token_id, account_id, created_at, by_other_rule in rows
        if by_other_rule
        or (deadline := own_deadlines.get(account_id)) is None
        or deadline > today
        or created_at < datetime.combine(deadline, time.min) - timedelta(days=max_age)
    ]


def _offending_token_ids(
    connection: Connection, phase: Phase, now: datetime, aged_at: datetime
) -> list[tuple[int, int]]:
    """(token id, account id) of the cohort's forbidden tokens: two integers a row, no
    per-row conversion."""
    query = (
        select(TOKENS.c.id, TOKENS.c.account_id)
        .join(CohortMembership, _cohort_tokens(phase, now, aged_at))
        .order_by(TOKENS.c.account_id, TOKENS.c.id)
    )
    return [(token, account) for token, account in connection.execute(query).all()]


def _offending_tokens(
    connection: Connection, phase: Phase, now: datetime, aged_at: datetime
) -> list[TokenTarget]:
    """The cohort's tokens that a token rule of the phase forbids at ``now``, their age
    judged at ``aged_at``, each with the rules it breaks (an approver of a phase with
    several rules had to infer which from the other columns)."""
    rules = token_rules(phase.requires, TOKENS, aged_at)
    query = (
        select(
            TOKENS.c.id,
            TOKENS.c.account_id,
            ACCOUNTS.c.username,
            TOKENS.c.kind,
            TOKENS.c.name,
            TOKENS.c.created_at,
            TOKENS.c.last_used_at,
            TOKENS.c.expires_at,
            *(case((broken, 1), else_=0) for broken in rules.values()),
        )
        .join(ACCOUNTS, ACCOUNTS.c.id == TOKENS.c.account_id)
        .join(CohortMembership, _cohort_tokens(phase, now, aged_at))
        .order_by(TOKENS.c.account_id, TOKENS.c.id)
    )
    found = []
    for row in connection.execute(query).all():
        details, broken = row[:8], row[8:]
        breaks = "; ".join(rule for rule, hit in zip(rules, broken, strict=True) if hit)
        found.append(TokenTarget(*details, breaks=breaks))
    return found


# --- enforcement ---------------------------------------------------------------------------


def _among(connection: Connection, column: Any, ids: list[int]) -> Any:
    """``column IN ids`` for a batch of thousands of ids: one array parameter on
    PostgreSQL (a 10,000-placeholder statement cost more to parse than to run)."""
    if connection.dialect.name == "postgresql":
        return _in_array(column, ids)
    return column.in_(ids)


def _in_array(column: Any, ids: list[int]) -> Any:
    """PostgreSQL's ``column IN ids``: equal to one of an array, and between the
    smallest and largest id. The range says nothing the array does not, but it is what
    the planner can read: a batch holds ids in order, a narrow band of an index, while
    for an array alone it costs one probe per id and took a scan of the whole table
    instead (every live web session and every active factor, in each batch)."""
    if not ids:
        return false()
    array = cast(literal(ids), ARRAY(BigInteger))
    return and_(column.between(min(ids), max(ids)), column == any_(array))


# SQLite's side of _id_set: temp tables of the connection (the names resolve to the
# temp schema; no registry table has them).
_ID_TABLES = ("batch_ids", "changed_ids", "token_ids")


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
        return lambda column_: _in_array(column_, ids)
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
    sessions_signed_in_since_preview: int | None = 0  # None: not known (no preview time)
    emails_queued: int = 0
    skipped_now_compliant: int = 0
    skipped_deleted: int = 0
    skipped_tokens_changed: int = 0
    tokens_revoked: int = 0
    accounts_warned: int = 0
    totp_enrolment_closed: int = 0
    accounts_unreached: int = 0


@dataclass(frozen=True)
class _Batch:
    """What every effect of one batch shares: its transaction, its accounts (those
    still short of the requirements, as an id condition), and its audit columns."""

    connection: Connection
    phase: Phase
    among: Callable[[Any], Any]
    run_id: str
    actor: str
    now: datetime
    # When the approved preview was taken (None: not known): the sessions signed in
    # since are counted apart (EnforceResult.sessions_signed_in_since_preview).
    previewed_at: datetime | None = None

    @property
    def reason(self) -> str:
        requires = self.phase.requires
        asked = (
            "2FA"
            if requires.two_factor == "any" and not requires.token_rules
            else "; ".join(requires.describe())
        )
        return phase_reason(self.phase.name, asked, self.phase.cohort)

    def audit_common(self, details: dict[str, Any] | None = None) -> list[Any]:
        return [
            literal(self.phase.name),
            literal(self.reason),
            literal(self.actor),
            literal(self.run_id),
            literal(self.now, DateTime),
            literal(details or {}, JSON),
        ]

    def lacking(self, account_id: Any) -> Any:
        """The batch's accounts that lack the second factor the phase asks for."""
        return and_(self.among(account_id), lacks_factor(self.phase.requires, account_id))


def _update_audited(
    batch: _Batch,
    statement: Any,
    target: Any,
    *,
    action: str,
    key: Callable[[Any], Any],
    subject: Callable[[Any], Any] | None,
    account_id: Callable[[Any], Any],
    details: dict[str, Any] | None = None,
    changed_where: Any = None,
) -> int:
    """Run a guarded UPDATE and write one audit row for each row it changed, in the
    batch's transaction: a rerun after a crash finds the changed rows no longer match
    the guard, so neither the change nor its audit row happens twice.

    ``changed_where``, if given, is a condition on ``target`` true of exactly the rows
    this UPDATE changed (a previewed id set and the batch's timestamp): on SQLite the
    audit then selects them by it, instead of the UPDATE returning every id through
    Python into a temp table (for 781k tokens, 5 s of a 30 s run)."""
    connection = batch.connection

    def audit(changed: Any) -> Any:
        return dialect_insert(connection, ACTIONS).from_select(
            _audit_columns(),
            select(
                key(changed),
                literal(action),
                account_id(changed),
                subject(changed) if subject else literal(None, String),
                *batch.audit_common(details),
            ),
        )

    columns = [target.c.id, target.c.account_id] if "account_id" in target.c else [target.c.id]
    if connection.dialect.name == "postgresql":
        # Changed and audited in one statement: the audit reads the rows the UPDATE
        # returns instead of finding them again.
        changed = statement.returning(*columns).cte("changed")
        audited = audit(changed).returning(ACTIONS.c.id).cte("audited")
        return int(connection.execute(select(func.count()).select_from(audited)).scalar_one())
    if changed_where is not None:
        connection.execute(statement)
        return int(
            connection.execute(audit(select(*columns).where(changed_where).subquery())).rowcount
        )
    # The rows this UPDATE changed, by id: finding them again by time would also find a
    # row an earlier run changed at the same instant (a simulated clock).
    ids = list(connection.execute(statement.returning(target.c.id)).scalars())
    if ids:
        changed_here = _id_set(connection, ids, "changed_ids")
        connection.execute(audit(select(*columns).where(changed_here(target.c.id)).subquery()))
    return len(ids)


def _account_key(action: str, batch: _Batch) -> Callable[[Any], Any]:
    """An account effect's audit key: one per phase, account and run."""
    return lambda rows: (
        literal(f"{action}:{batch.phase.name}:")
        + cast(rows.c.id, String)
        + literal(f":{batch.run_id}")
    )


def _record_requirement(batch: _Batch) -> int:
    """The phase's own record of whom it applies to, whether or not another phase
    already does (what a rollback of either phase must know), and its audit row for
    each account newly recorded (``_requirement_audit``). Returns how many."""
    connection, phase = batch.connection, batch.phase
    insert = (
        dialect_insert(connection, REQUIREMENTS)
        .from_select(
            ["account_id", "phase", "required_at", "run_id"],
            select(
                ACCOUNTS.c.id,
                literal(phase.name),
                literal(batch.now, DateTime),
                literal(batch.run_id),
            ).where(batch.among(ACCOUNTS.c.id)),
        )
        .on_conflict_do_nothing(index_elements=["account_id", "phase"])
    )
    if connection.dialect.name == "postgresql":
        # Recorded and audited in one statement: the audit reads the rows the INSERT
        # returns. Found again in the table instead, they were a scan of every
        # requirement the run had made so far, in each batch (a table the planner
        # last saw empty).
        required = insert.returning(REQUIREMENTS.c.account_id).cte("required")
        audited = (
            _requirement_audit(batch, required.c.account_id, true())
            .returning(ACTIONS.c.id)
            .cte("audited")
        )
        return int(connection.execute(select(func.count()).select_from(audited)).scalar_one())
    recorded = int(connection.execute(insert).rowcount)
    connection.execute(
        _requirement_audit(
            batch,
            REQUIREMENTS.c.account_id,
            and_(
                REQUIREMENTS.c.phase == phase.name,
                batch.among(REQUIREMENTS.c.account_id),
                REQUIREMENTS.c.run_id == batch.run_id,
                REQUIREMENTS.c.required_at == batch.now,
            ),
        )
    )
    return recorded


def _requirement_audit(batch: _Batch, account_id: Any, where: Any) -> Any:
    """INSERT ... SELECT of one audit row per account the batch newly applies the phase
    to (``account_id`` of the rows ``where`` selects), whatever its effects:
    ``tfa_required`` for one whose second factor the phase requires (it lacks it, and
    the phase does require_2fa), ``phase_required`` for the others (a token, banner or
    TOTP-closing phase's accounts, or one short only of the token rules). The ledger is
    what the adoption marts read of whom a phase applied to, on any past day
    (int_phase_requirements_known); the phase_requirements table holds only the present."""
    phase = batch.phase
    action = (
        case((batch.lacking(account_id), "tfa_required"), else_="phase_required")
        if phase.does("require_2fa")
        else literal("phase_required")
    )
    # No ON CONFLICT: these rows describe requirements this transaction just added
    # (the insert skipped existing ones), so their keys are new; were one not, the
    # unique key should fail the batch loudly. (Speculative inserts cost a fifth more
    # on PostgreSQL.)
    return dialect_insert(batch.connection, ACTIONS).from_select(
        _audit_columns(),
        select(
            func.replace(action, "_", "-")
            + literal(f":{phase.name}:")
            + cast(account_id, String)
            + literal(f":{batch.run_id}"),
            action,
            account_id,
            literal(None, String),
            *batch.audit_common({"two_factor": phase.requires.two_factor}),
        ).where(where),
    )


def _require_second_factor(batch: _Batch) -> int:
    """Flag the accounts that lack the factor (and, for a phishing-resistant phase,
    require a security key)."""
    connection, phase = batch.connection, batch.phase
    flagged = _changed(
        connection,
        update(ACCOUNTS)
        .where(and_(batch.lacking(ACCOUNTS.c.id), ACCOUNTS.c.tfa_required_at.is_(None)))
        .values(tfa_required_at=batch.now),
        ACCOUNTS.c.id,
    )
    if phase.requires.two_factor == "phishing_resistant":
        connection.execute(
            update(ACCOUNTS)
            .where(and_(batch.lacking(ACCOUNTS.c.id), ACCOUNTS.c.webauthn_required_at.is_(None)))
            .values(webauthn_required_at=batch.now)
        )
    return flagged


def _mark_accounts(batch: _Batch, column: str, action: str, *, lacking_only: bool) -> int:
    """Set an account mark (the warning banner, TOTP enrolment closed) where unset."""
    who = batch.lacking if lacking_only else batch.among
    mark = ACCOUNTS.c[column]
    return _update_audited(
        batch,
        update(ACCOUNTS)
        .where(and_(who(ACCOUNTS.c.id), mark.is_(None)))
        .values({column: batch.now}),
        ACCOUNTS,
        action=action,
        key=_account_key(action, batch),
        subject=None,
        account_id=lambda rows: rows.c.id,
    )


def _enforcement_emails(batch: _Batch, account_id: Any, where: Any, occasion: str = "") -> Any:
    """INSERT ... SELECT of the phase's enforcement email, queued by this batch, to the
    ``account_id`` of each row ``where`` selects (the caller adds its ON CONFLICT).
    Not queue_email: its queue-time skip checks (suppressed, unverified) cost 2 s of an
    npm-scale run, over the 30 s target; the drain makes them at send time."""
    phase = batch.phase
    return dialect_insert(batch.connection, NOTIFICATIONS).from_select(
        [
            "account_id",
            "email",
            "phase",
            "occasion",
            "state",
            "context",
            "attempts",
            "run_id",
            "created_at",
            "updated_at",
        ],
        select(
            account_id,
            literal(ENFORCEMENT_EMAIL),
            literal(phase.name),
            literal(occasion),
            literal("queued"),
            literal({"phase": phase.name, "cohort": phase.cohort}, JSON),
            literal(0),
            literal(batch.run_id),
            literal(batch.now, DateTime),
            literal(batch.now, DateTime),
        ).where(where),  # (SQLite parses ON CONFLICT after a SELECT only past a WHERE)
    )


def _rolled_back(phase: str) -> str:
    """Why a rollback withdraws its phase's unsent enforcement emails: what tells them,
    when the phase is enforced again, from those a person withdrew."""
    return f"phase {phase} rolled back"


def _told_of_the_banner(batch: _Batch) -> Any | None:
    """SQL: for a phase whose only effect is the banner, the account was sent the
    phase's notice, which told it the banner comes on its day: the enforcement email
    ("a banner is now shown") would tell it again, a day or two later (PyPI 2023: a
    reminder, the banner's notice and the banner's email on three days running). One
    the notice did not reach (unverified then, suppressed, a newcomer) still gets it,
    and so does one the notice thanked (``notify_compliant``: it met the phase when the
    notice went, which said there was nothing to do and no banner), falling short
    since. None for a phase that does anything else: that is news to every account."""
    phase = batch.phase
    if list(phase.effects) != ["warn"]:
        return None
    n = NOTIFICATIONS.c
    told = and_(
        n.account_id == ACCOUNTS.c.id,
        n.email == NOTICE_EMAIL,
        n.phase == phase.name,
        n.state == "sent",
    )
    if phase.notify_compliant:
        # Told of the banner: short of the phase's factor when the notice went (a
        # token the phase forbids is not judged as of then: such an account gets the
        # banner's email again, rather than none).
        told = and_(told, lacked_factor_at(phase.requires, n.account_id, n.sent_at))
    # From the notifications named: a phase asking no factor makes ``told`` a constant
    # false, which leaves the EXISTS with no table of its own ("SELECT * WHERE false",
    # refused by both backends).
    return exists().select_from(NOTIFICATIONS).where(told)


def _queue_enforcement_emails(batch: _Batch) -> int:
    told = _told_of_the_banner(batch)
    among = batch.among(ACCOUNTS.c.id)
    insert = _enforcement_emails(
        batch, ACCOUNTS.c.id, among if told is None else and_(among, ~told)
    )
    return _changed(
        batch.connection,
        # One the phase's rollback withdrew (never sent) is queued again: enforced
        # anew, the account must be told; one sent, queued or in flight stays as it is,
        # and so does one a person withdrew (`notify withdraw`: a wrong text), which the
        # next run (a deadline phase's each day) queued again.
        insert.on_conflict_do_update(
            index_elements=["account_id", "email", "phase", "occasion"],
            set_={
                "state": "queued",
                "skip_reason": None,
                "error": None,
                "attempts": 0,
                "run_id": insert.excluded.run_id,
                "updated_at": insert.excluded.updated_at,
            },
            where=and_(
                NOTIFICATIONS.c.state == "skipped",
                NOTIFICATIONS.c.skip_reason == withdrawn_reason(_rolled_back(batch.phase.name)),
            ),
        ),
        NOTIFICATIONS.c.id,
    )


def _queue_notices_of_tokens_revoked_again(batch: _Batch) -> int:
    """An enforcement email of this run to each account whose tokens it revoked that an
    earlier run of the phase had told already: a token made since, which the phase
    forbids, is revoked by a rerun, and the notice sent before (one per account and
    phase) blocked any other, so its owner was never told. Keyed by this run (its
    occasion), so a rerun of this batch queues none twice."""
    n = NOTIFICATIONS.c
    told_before = exists().where(
        and_(
            n.account_id == TOKENS.c.account_id,
            n.email == ENFORCEMENT_EMAIL,
            n.phase == batch.phase.name,
            n.occasion == "",
            n.run_id != batch.run_id,
            # Still queued, it lists this run's tokens too: rendered when it goes.
            n.state != "queued",
        )
    )
    revoked_now = (
        select(TOKENS.c.account_id)
        .where(
            and_(
                TOKENS.c.revoked_at == batch.now,
                TOKENS.c.revoked_reason == batch.reason[:300],
                batch.among(TOKENS.c.account_id),
                told_before,
            )
        )
        .distinct()
        .subquery()
    )
    insert = _enforcement_emails(
        batch, revoked_now.c.account_id, true(), occasion=f"{RERUN_OCCASION}{batch.run_id}"
    )
    return _changed(
        batch.connection,
        insert.on_conflict_do_nothing(index_elements=["account_id", "email", "phase", "occasion"]),
        NOTIFICATIONS.c.id,
    )


def _revoke_sessions(batch: _Batch) -> tuple[int, int | None]:
    """The live web sessions of the accounts that lack the factor: every one live now,
    as the preview's rule says (a session signed in since the preview too, or the
    account would keep a session the phase signs out). Returns how many, and of them how
    many were signed in after the approved preview (``batch.previewed_at``): None when
    it revoked some and that time is not known (no count to give, not 0)."""
    revoked = _update_audited(
        batch,
        update(SESSIONS)
        .where(and_(batch.lacking(SESSIONS.c.account_id), SESSIONS.c.revoked_at.is_(None)))
        .values(revoked_at=batch.now, revoked_reason=batch.reason[:300]),
        SESSIONS,
        action="revoke_session",
        key=lambda rows: literal("revoke-session:") + cast(rows.c.id, String),
        subject=lambda rows: literal("web_session:") + cast(rows.c.id, String),
        account_id=lambda rows: rows.c.account_id,
    )
    if not revoked:
        return revoked, 0
    if batch.previewed_at is None:
        return revoked, None
    # Revoked at this batch's instant with its reason, of its accounts: exactly those
    # this UPDATE revoked (the run holds the lock; no other run revokes meanwhile).
    since = batch.connection.execute(
        select(func.count())
        .select_from(SESSIONS)
        .where(
            and_(
                batch.among(SESSIONS.c.account_id),
                SESSIONS.c.revoked_at == batch.now,
                SESSIONS.c.revoked_reason == batch.reason[:300],
                SESSIONS.c.created_at > batch.previewed_at,
            )
        )
    ).scalar_one()
    return revoked, int(since)


def _revoke_tokens(batch: _Batch, token_ids: list[int]) -> int:
    """The previewed tokens of the batch's accounts still short of the requirements
    (the caller's list) that still offend: never a token the preview did not list, nor
    one that stopped offending since (revoked or expired by its owner, or its account
    now has the factor a rule asks for). By token id alone: on PostgreSQL an
    ``account_id = ANY(...)`` beside it made the planner scan the batch's accounts'
    tokens and test each against the 16k ids one by one (6 s a batch)."""
    if not token_ids:
        return 0
    previewed = _id_set(batch.connection, token_ids, "token_ids")
    return _update_audited(
        batch,
        update(TOKENS)
        .where(
            and_(
                previewed(TOKENS.c.id),
                offending_token(batch.phase.requires, TOKENS, batch.now),
            )
        )
        .values(revoked_at=batch.now, revoked_reason=batch.reason[:300]),
        TOKENS,
        action="revoke_token",
        key=lambda rows: literal("revoke-token:") + cast(rows.c.id, String),
        subject=lambda rows: literal("token:") + cast(rows.c.id, String),
        account_id=lambda rows: rows.c.account_id,
        # Every previewed token was live under the lock, and no other run of the phase
        # revokes meanwhile (it holds the lock), so those revoked at this batch's
        # instant with its reason are exactly the ones this UPDATE revoked: not one its
        # owner revoked at the same instant (a coarse or simulated clock).
        changed_where=and_(
            previewed(TOKENS.c.id),
            TOKENS.c.revoked_at == batch.now,
            TOKENS.c.revoked_reason == batch.reason[:300],
        ),
    )


def _short_as_previewed(
    connection: Connection,
    phase: Phase,
    account_ids: list[int],
    tokens_of: Mapping[int, list[int]] | None,
    now: datetime,
) -> Any:
    """SQL over ``accounts``: an account that falls short is still short of the phase as
    previewed: it lacks the factor the phase asks for, or one of the tokens the preview
    listed for it still offends. Of a phase that revokes tokens, an account whose listed
    tokens its owner revoked (or that expired) since the preview, and that falls short
    now only by a token made since (rotated), is not: enforcement revokes no token the
    preview did not list, so acting on it would record it as enforced and tell it so
    ("nothing for you to do") with a forbidden token still live. It is left for the
    next preview, which lists that token. Without ``tokens_of`` (or revoking no
    tokens): every account that falls short."""
    if tokens_of is None or not phase.does("revoke_tokens"):
        return true()
    previewed = [t for a in account_ids for t in tokens_of.get(a, ())]
    if not previewed:
        return lacks_factor(phase.requires, ACCOUNTS.c.id)
    listed = _id_set(connection, previewed, "token_ids")
    return or_(
        lacks_factor(phase.requires, ACCOUNTS.c.id),
        # From the tokens named: a rule-less phase's constant false leaves none.
        exists()
        .select_from(TOKENS)
        .where(
            and_(
                TOKENS.c.account_id == ACCOUNTS.c.id,
                listed(TOKENS.c.id),
                offending_token(phase.requires, TOKENS, now),
            )
        ),
    )


def _enforce_batch(
    connection: Connection,
    phase: Phase,
    account_ids: list[int],
    run_id: str,
    actor: str,
    now: datetime,
    tokens_of: Mapping[int, list[int]] | None = None,
    unreached: Collection[int] = (),
    acted_on: list[int] | None = None,
    previewed_at: datetime | None = None,
) -> BatchOutcome:
    """One transaction: record the phase's application to each account still short of
    its requirements, apply each of its effects, queue the enforcement email, and do the
    irreversible revocations (sessions, then tokens) last; every effect audited. Of the
    accounts it acts on, it counts those in ``unreached`` (no warning reached them), and
    adds them all to ``acted_on``.

    Set-based on the server: the audit rows and emails are INSERT ... SELECTs over the
    rows this batch changed, which carry its timestamp ``now``; nothing travels row by
    row through Python (at npm scale that was 1.3M audit rows a run).
    """
    among = _id_set(connection, account_ids)
    short = connection.execute(
        select(ACCOUNTS.c.id, _short_as_previewed(connection, phase, account_ids, tokens_of, now))
        .where(and_(among(ACCOUNTS.c.id), falls_short(phase.requires, ACCOUNTS.c.id, now)))
        .order_by(ACCOUNTS.c.id)
    ).all()
    still_short = [account_id for account_id, as_previewed in short if as_previewed]
    tokens_changed = len(short) - len(still_short)
    skipped = len(account_ids) - len(short)
    deleted = 0
    if skipped:
        # Of those no longer short, the accounts the registry deleted since the preview
        # (it closes accounts while a run goes on): not counted as having complied.
        present = connection.execute(
            select(func.count()).select_from(ACCOUNTS).where(among(ACCOUNTS.c.id))
        ).scalar_one()
        deleted = len(account_ids) - int(present)
        skipped -= deleted
    if not still_short:
        return BatchOutcome(
            skipped_now_compliant=skipped,
            skipped_deleted=deleted,
            skipped_tokens_changed=tokens_changed,
        )
    if len(still_short) < len(account_ids):
        among = _id_set(connection, still_short)
    # Every account this batch may change, locked before it changes any, in order of id
    # (rollout.registry.locks): its several UPDATEs (flag, then warn, ...) each lock a
    # different subset, and beside ELV's enrolment that order deadlocked.
    lock_accounts(connection, among(ACCOUNTS.c.id))
    if connection.dialect.name == "postgresql":
        # A batch commits or vanishes whole either way; not waiting for its WAL flush
        # cannot lose half a batch, only delay when a server crash would lose it all.
        connection.execute(text("set local synchronous_commit to off"))
    batch = _Batch(connection, phase, among, run_id, actor, now, previewed_at)
    required = _record_requirement(batch)
    # Those this run applies the phase to: not those a run that died had (a rerun
    # passes over them again, finding their effects done), whom the unreached count and
    # the summary would otherwise name as acted on twice. Read back only when some were
    # required already: most batches require every account they hold.
    applied_here = (
        set(still_short)
        if required == len(still_short)
        else set(
            connection.execute(
                select(REQUIREMENTS.c.account_id).where(
                    and_(
                        REQUIREMENTS.c.phase == phase.name,
                        REQUIREMENTS.c.run_id == run_id,
                        among(REQUIREMENTS.c.account_id),
                    )
                )
            ).scalars()
        )
    )
    if acted_on is not None:
        acted_on.extend(applied_here)
    flagged = _require_second_factor(batch) if phase.does("require_2fa") else 0
    warned = (
        _mark_accounts(batch, "warned_at", "warn", lacking_only=False) if phase.does("warn") else 0
    )
    closed = (
        _mark_accounts(batch, "totp_enrolment_closed_at", "close_totp_enrolment", lacking_only=True)
        if phase.does("close_totp_enrolment")
        else 0
    )
    queued = _queue_enforcement_emails(batch)
    revoked, signed_in_since = _revoke_sessions(batch) if phase.does("revoke_sessions") else (0, 0)
    tokens = (
        _revoke_tokens(batch, [t for a in still_short for t in (tokens_of or {}).get(a, ())])
        if phase.does("revoke_tokens")
        else 0
    )
    if tokens:
        queued += _queue_notices_of_tokens_revoked_again(batch)
    return BatchOutcome(
        accounts_required=required,
        accounts_flagged=flagged,
        sessions_revoked=revoked,
        sessions_signed_in_since_preview=signed_in_since,
        emails_queued=queued,
        skipped_now_compliant=skipped,
        skipped_deleted=deleted,
        skipped_tokens_changed=tokens_changed,
        tokens_revoked=tokens,
        accounts_warned=warned,
        totp_enrolment_closed=closed,
        accounts_unreached=len(applied_here.intersection(unreached)),
    )


def enforce_phase(
    registry: Registry,
    plan: Plan,
    phase_name: str,
    *,
    expect: int,
    actor: str,
    expect_tokens: int | None = None,
    accept_unreached: int | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    early: bool = False,
    expect_list: str | None = None,
    previewed_at: datetime | None = None,
) -> EnforceResult:
    """Apply a phase to exactly the previewed accounts (and, when it revokes tokens,
    exactly the previewed tokens), refusing on any mismatch (the counts, and with
    ``expect_list`` the list's fingerprint: PhasePreview.fingerprint), when more of them were
    never reached by a warning than the plan allows (unless ``accept_unreached`` is
    their count), and before the phase's ``enforce_on`` (unless ``early``).

    ``progress(done, total)``, if given, is called after each batch commits: the
    accounts done so far, of the previewed total.

    Every live web session of the accounts is signed out, as the preview's rule says
    (its count is of those live then); given ``previewed_at``, the approved preview's
    time, the result counts apart those signed in since
    (``sessions_signed_in_since_preview``), so its ``sessions_revoked`` reconciles with
    the count the preview showed."""
    phase = plan.phase(phase_name)
    if expect_tokens is not None and not phase.does("revoke_tokens"):
        # A count typed back from another phase's preview, most likely: not ignored.
        raise BadInput(
            None, None, f"--expect-tokens {expect_tokens}: phase {phase.name} revokes no tokens"
        )
    with registry.lock(LOCK) as held:
        engine = registry.engine
        if not early:
            _date_guard(phase, utc_now().date(), enforceable_from(registry, plan, phase))
            if (fewer := fewer_days_than_told(registry, plan, phase)) is not None:
                raise GuardRefused(fewer)
            if (more := asks_more_than_told(registry, plan, phase)) is not None:
                raise GuardRefused(more)
        preview = preview_phase(registry, plan, phase, details=False)
        _guard(phase, preview, expect, expect_tokens)
        _list_guard(phase, preview, expect_list)
        _reach_guard(phase, preview, accept_unreached)
        ids = [t.account_id for t in preview.targets]
        tokens_of: dict[int, list[int]] = {}
        for token_id, account_id in preview.token_ids:
            tokens_of.setdefault(account_id, []).append(token_id)
        size = batch_size or phase.batch_size
        with recorded_run(
            engine,
            plan=plan.name,
            step=phase_step(phase.name),
            mode="apply",
            actor=actor,
            lock=LOCK,
            parameters={
                "expect": expect,
                "expect_tokens": expect_tokens,
                "expect_list": expect_list,
                "accept_unreached": accept_unreached,
                "phase": phase.name,
            },
        ) as run:
            result = EnforceResult(phase.name, run.id)
            unreached = frozenset(preview.unreached)
            acted_on: list[int] = []  # extended by each batch (list.extend: thread-safe)
            batches = [ids[start : start + size] for start in range(0, len(ids), size)]
            accounts_done = 0

            def apply(connection: Connection, accounts: list[int]) -> BatchOutcome:
                # The lock gone (its PostgreSQL session ended), another enforcement may
                # be at work: no batch more (a rerun goes on from where this one ended).
                held.check()
                return _enforce_batch(
                    connection,
                    phase,
                    accounts,
                    run.id,
                    actor,
                    utc_now(),
                    tokens_of,
                    unreached,
                    acted_on,
                    previewed_at,
                )

            def committed(accounts: list[int], outcome: BatchOutcome) -> None:
                nonlocal accounts_done
                result.add(outcome)
                run.summary = _counts(result)
                accounts_done += len(accounts)
                if progress is not None:
                    progress(accounts_done, len(ids))

            # Every batch but the last, on PostgreSQL two at a time (each holds accounts
            # no other does: rollout.registry.parallel).
            each_committed(
                engine, batches[:-1], apply, committed, connections=connections_for(engine)
            )
            if batches:
                # The last once all the others committed, with the summary: a run stopped
                # between the two would have done the phase and told nobody, and its
                # rerun finds nothing left to do, so no summary either.
                with begin_writing(engine) as connection:
                    outcome = apply(connection, batches[-1])
                    done = replace(result)
                    done.add(outcome)
                    _queue_summary(connection, plan, done, preview, set(acted_on))
                committed(batches[-1], outcome)
        return result


def _queue_summary(
    connection: Connection,
    plan: Plan,
    result: EnforceResult,
    preview: PhasePreview,
    acted: set[int],
) -> None:
    """The release managers' summary of a run that changed anything, naming the
    accounts it acted on that no warning reached."""
    if not (result.accounts_required or result.sessions_revoked or result.tokens_revoked):
        return
    queue_phase_summary(
        connection,
        plan,
        result.phase,
        counts=_counts(result),
        run_id=result.run_id,
        now=utc_now(),
        unreached=[
            (t.username, preview.unreached[t.account_id])
            for t in preview.targets
            if t.account_id in preview.unreached and t.account_id in acted
        ],
    )


def enforceable_from(registry: Registry, plan: Plan, phase: Phase) -> date:
    """The first day the phase may be enforced: its ``enforce_on``, the date every
    notice and reminder gave, or a later date its sent notices or reminders gave
    (``enforce_on`` moved earlier since)."""
    with registry.engine.connect() as connection:
        told = told_deadline(connection, phase, plan.name)
    return max(phase.enforce_on, told or phase.enforce_on)


def fewer_days_than_told(registry: Registry, plan: Plan, phase: Phase) -> str | None:
    """Why a phase with per-account deadlines may not be enforced now, if it gives
    accounts fewer days from their notice than the notices sent told them
    (``days_after_notice`` cut since): every such account's deadline would come before
    the date it was given."""
    if phase.deadline is None:
        return None
    with registry.engine.connect() as connection:
        told = told_days_after_notice(connection, phase, plan.name)
    if told is None or told <= phase.deadline.days_after_notice:
        return None
    return (
        f"phase {phase.name}'s notices told accounts their own deadline came "
        f"{counted(told, 'day')} "
        f"after their notice, and the plan now says {phase.deadline.days_after_notice}: "
        "enforcing now locks them out before the dates they were given. Put "
        f"days_after_notice back to {told} (or more), or pass --early to enforce anyway"
    )


def asks_more_than_told(registry: Registry, plan: Plan, phase: Phase) -> str | None:
    """Why a phase may not be enforced now, if it asks or does more than its sent
    notices and reminders told (``requires`` or ``effects`` edited since): an account
    that met what it was told (a TOTP user told any factor would do) would be locked
    out unwarned."""
    with registry.engine.connect() as connection:
        less = told_less(connection, phase, plan.name)
    if less is None:
        return None
    count, told, more = less
    return (
        f"{count} of phase {phase.name}'s sent notices and reminders told accounts it asks "
        f"and does {told!r}; the plan now asks more ({'; '.join(more)}): enforcing now "
        "locks out accounts that did what they were told. Put the requirements and "
        "effects back and ask the rest in a new phase with its own notice, or pass "
        "--early to enforce anyway"
    )


def _date_guard(phase: Phase, today: date, due: date) -> None:
    """Refuse before ``due`` (``enforceable_from``): a slip of the day (or of the
    clock, or of the plan) locked accounts out before they were told."""
    if today < phase.enforce_on:
        raise GuardRefused(
            f"phase {phase.name} is enforced from {phase.enforce_on}, the date its emails "
            f"gave, and today is {today}: enforcing now locks accounts out before it. Wait, "
            "move enforce_on in the plan, or pass --early to enforce anyway"
        )
    if today < due:
        raise GuardRefused(
            f"phase {phase.name}'s notices or reminders told accounts {due}, and today is {today} "
            f"(the plan now says {phase.enforce_on}): enforcing now locks them out before "
            "the date they were given. Wait, or pass --early to enforce anyway"
        )


class NotAsPreviewed(GuardRefused):
    """Refused: the list taken under the lock (``preview``) is not the one approved (its
    count, token count or fingerprint): a caller holding the approved preview's files
    can say who changed (rollout.phases.previews.changed_since)."""

    def __init__(self, message: str, preview: PhasePreview) -> None:
        super().__init__(message)
        self.preview = preview

    def __reduce__(self) -> tuple[type[GuardRefused], tuple[str]]:
        # Stored or sent on (a flow run's state keeps its refusal) as the refusal it
        # is: its message, not the whole list with every address in it.
        return GuardRefused, (str(self),)


def naming_changes(refused: GuardRefused, reports_dir: Path, typed: str | None) -> GuardRefused:
    """``refused``, and when it is a list not as previewed (:class:`NotAsPreviewed`)
    whose approved preview (``typed``: its fingerprint) is saved under ``reports_dir``,
    saying who changed since (rollout.phases.previews.changed_since); else as it is."""
    return naming_changes_since(
        refused,
        typed,
        NotAsPreviewed,
        lambda refused, typed: changed_since(reports_dir, refused.preview, typed),
    )


def _guard(phase: Phase, preview: PhasePreview, expect: int, expect_tokens: int | None) -> None:
    """Refuse unless the preview taken under the lock is the one approved (the counts
    typed back) and within the plan's blast radius."""
    if preview.count != expect:
        raise NotAsPreviewed(
            f"phase {phase.name} would change {counted(preview.count, 'account')}, not the "
            f"{expect} expected: run `rollout phase preview {phase.name}` and check",
            preview,
        )
    # In the words the preview warned with (PhasePreview.over_blast_radius).
    over = preview.over_blast_radius("accounts")
    if over is not None:
        raise GuardRefused(over)
    if not phase.does("revoke_tokens"):
        return
    if expect_tokens is None:
        raise GuardRefused(
            f"phase {phase.name} revokes tokens ({preview.token_count} now): give the "
            f"token count `rollout phase preview {phase.name}` showed (--expect-tokens)"
        )
    if preview.token_count != expect_tokens:
        raise NotAsPreviewed(
            f"phase {phase.name} would revoke {counted(preview.token_count, 'token')}, not the "
            f"{expect_tokens} expected: run `rollout phase preview {phase.name}` and check",
            preview,
        )
    over = preview.over_blast_radius("tokens")
    if over is not None:
        raise GuardRefused(over)


def _list_guard(phase: Phase, preview: PhasePreview, expect_list: str | None) -> None:
    """Refuse a list other than the one previewed, even of the same size."""
    if expect_list is None or same_list(preview.fingerprint, expect_list):
        return
    what = "accounts and tokens" if phase.does("revoke_tokens") else "accounts"
    raise NotAsPreviewed(
        f"phase {phase.name}: the {what} it would change now are not the ones previewed "
        f"(list {preview.fingerprint}, not {expect_list}): some changed since, though the "
        f"count may not have; run `rollout phase preview {phase.name}` and check",
        preview,
    )


def _reach_guard(phase: Phase, preview: PhasePreview, accept: int | None) -> None:
    """Refuse to enforce on more accounts never reached by a warning than the plan
    allows, unless their count was typed back (the preview showed it)."""
    unreached = len(preview.unreached)
    if accept is not None and accept != unreached:
        raise GuardRefused(
            f"phase {phase.name}: {unreached:,} of the accounts "
            f"{by_count(unreached, 'was', 'were')} never reached by a "
            f"notice or reminder, not the {accept} accepted: run `rollout phase preview "
            f"{phase.name}` and check"
        )
    if preview.over_unreached_limit and accept is None:
        raise GuardRefused(
            f"phase {phase.name}: {unreached:,} of {counted(preview.count, 'account')} "
            f"({preview.unreached_share:.1%}) {by_count(unreached, 'was', 'were')} never "
            "reached by a notice or reminder, "
            f"over the plan's max_unreached_share of {phase.max_unreached_share:.1%}: "
            f"`rollout phase preview {phase.name}` lists them with why; to enforce anyway, "
            f"type their count back (--accept-unreached {unreached})"
        )


def _counts(result: EnforceResult | RollbackResult) -> dict[str, int]:
    """A result's counts: what its plan_runs row (and the release managers' summary
    email) keep, without the phase and run id they already carry, nor a count not
    known (None: left out, never stored as 0)."""
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
    # Emails the phase's enforcement queued that have not gone (queued, or failed):
    # withdrawn, not sent; and those a send holds, marked not to go again.
    queued_emails: int
    in_flight_emails: int = 0

    @property
    def cleared(self) -> list[int]:
        return [a.account_id for a in self.accounts if a.cleared]

    @property
    def kept(self) -> list[Withdrawal]:
        return [a for a in self.accounts if not a.cleared]


def _enforcement_runs(phase_name: str) -> Select[Any]:
    """The ids of the phase's enforcement runs (any outcome: one that died may have
    acted)."""
    return select(PLAN_RUNS.c.id).where(
        and_(PLAN_RUNS.c.step == phase_step(phase_name), PLAN_RUNS.c.mode == "apply")
    )


def _queued_by_enforcement(phase_name: str) -> Selection:
    """The phase's emails that its enforcement runs queued and nobody sent yet, but the
    enforcement email of an account whose tokens the phase revoked: a rollback cannot
    restore them, and withdrawn, their owner was never told (the email then says the
    step was rolled back since)."""
    n = NOTIFICATIONS.c
    revoked_tokens = exists().where(
        and_(TOKENS.c.account_id == n.account_id, revoked_by_phase(TOKENS, phase_name))
    )
    return Selection(
        runs=_enforcement_runs(phase_name),
        keep=and_(n.email == ENFORCEMENT_EMAIL, revoked_tokens),
    )


def rollback_preview(
    registry: Registry, phase_name: str, plan: Plan | None = None
) -> RollbackPreview:
    """What rolling ``phase_name`` back would do: withdraw its requirement from every
    account it requires, clearing the flag of exactly those no other applied phase
    requires (revoked sessions and tokens stay revoked). Given the plan, only phases
    that require 2FA (or that it no longer names) count as still requiring. Reads only."""
    other = REQUIREMENTS.alias("other")
    others = and_(other.c.account_id == ACCOUNTS.c.id, other.c.phase != phase_name)
    if plan is not None:
        requiring = [p.name for p in plan.phases if p.does("require_2fa")]
        known = [p.name for p in plan.phases]
        others = and_(others, or_(other.c.phase.in_(requiring), other.c.phase.not_in(known)))
    query = (
        select(ACCOUNTS.c.id, ACCOUNTS.c.username, other.c.phase)
        .join(REQUIREMENTS, REQUIREMENTS.c.account_id == ACCOUNTS.c.id)
        .outerjoin(other, others)
        .where(REQUIREMENTS.c.phase == phase_name)
        .order_by(ACCOUNTS.c.id, other.c.phase)
    )
    by_account: dict[int, tuple[str, list[str]]] = {}
    with registry.engine.connect() as connection:
        for account_id, username, other_phase in connection.execute(query):
            _, others = by_account.setdefault(account_id, (username, []))
            if other_phase is not None:
                others.append(other_phase)
        emails = withdraw_preview(connection, _queued_by_enforcement(phase_name))
    return RollbackPreview(
        phase_name,
        [Withdrawal(i, name, tuple(others)) for i, (name, others) in by_account.items()],
        sum(row["queued"] for row in emails),
        sum(row["in_flight"] for row in emails),
    )


@dataclass
class RollbackResult:
    phase: str
    run_id: str
    requirements_withdrawn: int = 0
    accounts_cleared: int = 0
    # The other marks it set and cleared (warned, TOTP enrolment closed, security key
    # required), one an account and mark, where no other applied phase set them.
    marks_cleared: int = 0
    emails_withdrawn: int = 0
    # Being sent as it rolled back: they go only if that send goes.
    emails_in_flight: int = 0

    LABELS: ClassVar[dict[str, str]] = {}

    def summary(self) -> dict[str, Any]:
        return asdict(self)


# The effects that leave a mark on the account a rollback clears; revoked sessions and
# tokens stay revoked.
MARKING_EFFECTS = ("require_2fa", "warn", "close_totp_enrolment")

# The account marks a phase's effects set, and which phases set each: a rollback clears
# a mark only where no other phase that sets it still applies to the account.
_MARKS: dict[str, Callable[[Phase], bool]] = {
    "tfa_required_at": lambda p: p.does("require_2fa"),
    "webauthn_required_at": lambda p: (
        p.does("require_2fa") and p.requires.two_factor == "phishing_resistant"
    ),
    "warned_at": lambda p: p.does("warn"),
    "totp_enrolment_closed_at": lambda p: p.does("close_totp_enrolment"),
}


# The audit action each mark's setting wrote (webauthn_required_at: a tfa_required of
# a phishing-resistant phase).
_MARK_ACTIONS = {
    "tfa_required_at": "tfa_required",
    "webauthn_required_at": "tfa_required",
    "warned_at": "warn",
    "totp_enrolment_closed_at": "close_totp_enrolment",
}


def _marks_set(connection: Connection, phase: Phase) -> set[str]:
    """The marks the phase's enforcement runs set, by their audit rows, with those the
    plan's phase sets now: an effect taken out of the plan after enforcement left its
    marks on every account, with no command to clear them."""
    runs = _enforcement_runs(phase.name)
    found = {mark for mark, sets_mark in _MARKS.items() if sets_mark(phase)}
    for mark, action in _MARK_ACTIONS.items():
        if mark in found:
            continue
        wrote = and_(ACTIONS.c.run_id.in_(runs), ACTIONS.c.action == action)
        if mark == "webauthn_required_at":
            wrote = and_(wrote, ACTIONS.c.details["two_factor"].as_string() == "phishing_resistant")
        if connection.execute(select(ACTIONS.c.id).where(wrote).limit(1)).first():
            found.add(mark)
    return found


def _held_elsewhere(plan: Plan, phase_name: str, sets_mark: Callable[[Phase], bool]) -> Any:
    """SQL: another phase that sets the mark still applies to the account. A phase the
    plan no longer names counts as setting it: clearing too little is the safe side."""
    setting = [p.name for p in plan.phases if p.name != phase_name and sets_mark(p)]
    known = [p.name for p in plan.phases]
    return exists().where(
        and_(
            REQUIREMENTS.c.account_id == ACCOUNTS.c.id,
            REQUIREMENTS.c.phase != phase_name,
            or_(REQUIREMENTS.c.phase.in_(setting), REQUIREMENTS.c.phase.not_in(known)),
        )
    )


def _rollback_batch(
    connection: Connection,
    plan: Plan,
    phase: Phase,
    ids: list[int],
    run_id: str,
    actor: str,
    marks: set[str],
) -> tuple[int, int, int]:
    """One transaction: withdraw the phase's requirement of these accounts, clear the
    marks it set (2FA required, banner, ...) of those no other phase setting them still
    applies to, audit each."""
    phase_name = phase.name
    reason = f"rollback of phase {phase_name}"
    # Its accounts locked first, in order of id, as every run changing accounts does
    # (rollout.registry.locks): one UPDATE a mark, each of a different subset.
    lock_accounts(connection, _among(connection, ACCOUNTS.c.id, ids))
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
    cleared: dict[str, list[int]] = {}
    for column_name, sets_mark in _MARKS.items():
        if column_name not in marks:
            continue
        mark = ACCOUNTS.c[column_name]
        cleared[column_name] = [
            row[0]
            for row in connection.execute(
                update(ACCOUNTS)
                .where(
                    and_(
                        _among(connection, ACCOUNTS.c.id, withdrawn),
                        mark.is_not(None),
                        ~_held_elsewhere(plan, phase_name, sets_mark),
                    )
                )
                .values({column_name: None})
                .returning(ACCOUNTS.c.id)
            )
        ]

    def row(action: str, account_id: int, **details: Any) -> dict[str, Any]:
        return {
            "effect_key": f"{action.replace('_', '-')}:{phase_name}:{account_id}:{run_id}"
            + (f":{details['mark']}" if details else ""),
            "action": action,
            "account_id": account_id,
            "phase": phase_name,
            "reason": reason,
            "actor": actor,
            "run_id": run_id,
            "details": details,
        }

    record_actions(
        connection,
        [
            *(row("tfa_required_withdrawn", account_id) for account_id in withdrawn),
            *(
                row("tfa_required_cleared", account_id)
                for account_id in cleared.get("tfa_required_at", [])
            ),
            *(
                row("mark_cleared", account_id, mark=column_name)
                for column_name, accounts in cleared.items()
                if column_name != "tfa_required_at"
                for account_id in accounts
            ),
        ],
    )
    others = sum(len(a) for column, a in cleared.items() if column != "tfa_required_at")
    return len(withdrawn), len(cleared.get("tfa_required_at", [])), others


def require_enforced(registry: Registry, phase_name: str) -> None:
    """Refuse to roll back a phase no enforcement run ever applied (one that died
    counts: it may have required accounts). Such a rollback would change nothing, yet
    record a run, and the calendar would read the phase 'rolled back'."""
    with registry.engine.connect() as connection:
        enforced = connection.execute(_enforcement_runs(phase_name).limit(1)).first()
    if enforced is None:
        raise GuardRefused(f"phase {phase_name} was never enforced: there is nothing to roll back")


def rollback_phase(
    registry: Registry, plan: Plan, phase_name: str, *, actor: str
) -> RollbackResult:
    """Withdraw the phase's 2FA requirement: clear the flag of the accounts no other
    applied phase requires, and withdraw the emails its enforcement queued and has not
    sent (recorded as skipped, with the reason). Revoked sessions stay revoked."""
    phase = plan.phase(phase_name)
    with registry.lock(LOCK) as held:
        engine = registry.engine
        require_enforced(registry, phase.name)
        ids = [a.account_id for a in rollback_preview(registry, phase.name, plan).accounts]
        with recorded_run(
            engine,
            plan=plan.name,
            step=phase_step(phase.name),
            mode="rollback",
            actor=actor,
            lock=LOCK,
        ) as run:
            result = RollbackResult(phase.name, run.id)
            with begin_writing(engine) as connection:
                # Before the requirements: a crash between batches left the emails
                # queued, and the next send told accounts already released that 2FA
                # is required. Enforcement takes the same lock, so none is queued
                # meanwhile; a rerun withdraws again (nothing left) and goes on.
                emails = withdraw_queued(
                    connection,
                    _queued_by_enforcement(phase.name),
                    reason=_rolled_back(phase.name),
                    actor=actor,
                    run_id=run.id,
                )
            result.emails_withdrawn = emails.taken
            result.emails_in_flight = emails.in_flight
            with engine.connect() as connection:
                set_by_phase = _marks_set(connection, phase)
            for start in range(0, len(ids), phase.batch_size):
                held.check()  # as enforce_phase's batches
                with begin_writing(engine) as connection:
                    withdrawn, cleared, marks = _rollback_batch(
                        connection,
                        plan,
                        phase,
                        ids[start : start + phase.batch_size],
                        run.id,
                        actor,
                        set_by_phase,
                    )
                result.requirements_withdrawn += withdrawn
                result.accounts_cleared += cleared
                result.marks_cleared += marks
                run.summary = _counts(result)
            run.summary = _counts(result)
        return result
