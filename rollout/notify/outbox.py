"""The outbox: queue the emails the plan calls for, then deliver them exactly once.

Queueing is set-based (one INSERT ... SELECT per occasion) into ``notifications``,
whose natural key (account, email, phase, occasion) makes a re-run, of a flow, a
phase or the whole plan, queue nothing twice. Accounts the email must not reach are
recorded as ``skipped`` with the reason: unverified email, suppressed address,
already compliant (for warnings only).

Draining claims a handful of rows at a time (``queued`` -> ``sending``, as many as
are sent at once), renders and sends them concurrently, and records each outcome.
A crash leaves at most that handful in ``sending``; the next drain sends them again
(the only possible duplicates, bounded by the concurrency), never a whole batch.
One drain runs at a time.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    DateTime,
    Engine,
    Select,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal,
    select,
    update,
)

from rollout.errors import BadInput, RolloutError
from rollout.locks import exclusive_run
from rollout.notify.emails import EMAILS, Recipient
from rollout.notify.message import DeliveryFailed, Message, Sender
from rollout.notify.render import render
from rollout.plan import Plan
from rollout.registry.ledger import dialect_insert, recorded_run, utc_now
from rollout.registry.migrate import open_registry
from rollout.registry.models import (
    Account,
    CohortMembership,
    EmailSuppression,
    Notification,
    TfaFactor,
    has_active_factor,
)
from rollout.timeline import heads_up_step, notices_step, reminders_step

log = logging.getLogger(__name__)

NOTIFICATIONS = Notification.__table__
ACCOUNTS = Account.__table__
SUPPRESSIONS = EmailSuppression.__table__

UNVERIFIED = "unverified email"
SUPPRESSED = "suppressed"
COMPLIANT = "already compliant"
REPEAT = "inside the repeat window"
# Messages sent at once, and so at most claimed at once: the most a crash can resend.
DEFAULT_CONCURRENCY = 8


# --- what the plan calls for, and when ---------------------------------------------------


@dataclass(frozen=True)
class Occasion:
    """One mailing of the plan: an email to an audience, due from one day until another."""

    step: str  # the plan_runs step (rollout plan show)
    email: str
    phase: str
    occasion: str
    due_on: date
    until: date  # queued no later than the day before (a reminder after the deadline is noise)
    audience: str  # cohort:<name> | without-2fa | without-2fa-nor-elv
    context: dict[str, Any]


def plan_occasions(plan: Plan) -> list[Occasion]:
    """Every mailing the plan makes, in date order."""
    found: list[Occasion] = []
    for phase in plan.phases:
        stored = {"phase": phase.name}
        found.append(
            Occasion(
                notices_step(phase.name),
                "phase_notice",
                phase.name,
                "",
                phase.notice_on,
                phase.enforce_on,
                f"cohort:{phase.cohort}",
                stored,
            )
        )
        for days in phase.reminders_days_before:
            found.append(
                Occasion(
                    reminders_step(phase.name, days),
                    "reminder",
                    phase.name,
                    f"{days}d",
                    phase.enforce_on - timedelta(days=days),
                    phase.enforce_on,
                    f"cohort:{phase.cohort}",
                    {**stored, "days_before": days},
                )
            )
    for b in plan.brownouts:
        found.append(
            Occasion(
                heads_up_step(b.name),
                "brownout_heads_up",
                "",
                b.name,
                b.starts_at.date() - timedelta(days=b.heads_up_days_before),
                b.starts_at.date(),
                "without-2fa",
                {
                    "brownout": b.name,
                    "starts_at": b.starts_at.isoformat(),
                    "ends_at": b.ends_at.isoformat(),
                    "hours": b.hours,
                },
            )
        )
    on = plan.elv.enroll_all_on
    found.append(
        Occasion(
            heads_up_step("elv"),
            "elv_enrollment",
            "",
            "elv",
            on - timedelta(days=plan.elv.heads_up_days_before),
            on,
            "without-2fa-nor-elv",
            {"enrolled_on": on.isoformat()},
        )
    )
    return sorted(found, key=lambda o: o.due_on)


def due_occasions(plan: Plan, day: date) -> list[Occasion]:
    """The mailings to queue on ``day``: due, and not yet too late (catches up missed days)."""
    return [o for o in plan_occasions(plan) if o.due_on <= day < o.until]


def audience(spec: str) -> Select:
    """The account ids a mailing goes to."""
    if spec.startswith("cohort:"):
        return select(CohortMembership.account_id).where(
            and_(
                CohortMembership.cohort == spec.removeprefix("cohort:"),
                CohortMembership.left_on.is_(None),
            )
        )
    without = select(ACCOUNTS.c.id).where(~has_active_factor(ACCOUNTS.c.id))
    if spec == "without-2fa":
        return without
    if spec == "without-2fa-nor-elv":
        return without.where(ACCOUNTS.c.elv_enrolled_at.is_(None))
    raise ValueError(f"unknown audience {spec!r}")


def _skip_reason(email: str) -> Any:
    """SQL: why an account gets no email at queue time, or NULL."""
    suppressed = exists().where(SUPPRESSIONS.c.address == func.lower(ACCOUNTS.c.email))
    whens = [(~ACCOUNTS.c.email_verified, UNVERIFIED), (suppressed, SUPPRESSED)]
    if EMAILS[email].when_compliant == "skip":
        whens.append((has_active_factor(ACCOUNTS.c.id), COMPLIANT))
    return case(*whens, else_=None)


def queue_email(
    connection: Connection,
    *,
    email: str,
    phase: str,
    occasion: str,
    account_ids: Select,
    context: Mapping[str, Any],
    run_id: str | None,
    now: datetime,
) -> int:
    """Queue (or record as skipped) one email to each account; returns rows added.

    An account that already has this (email, phase, occasion) keeps its row: queued,
    sent or skipped, it is never queued again."""
    reason = _skip_reason(email)
    ids = account_ids.subquery()
    rows = connection.execute(
        dialect_insert(connection, NOTIFICATIONS)
        .from_select(
            [
                "account_id",
                "email",
                "phase",
                "occasion",
                "state",
                "skip_reason",
                "context",
                "attempts",
                "run_id",
                "created_at",
                "updated_at",
            ],
            select(
                ACCOUNTS.c.id,
                literal(email),
                literal(phase),
                literal(occasion),
                case((reason.is_(None), "queued"), else_="skipped"),
                reason,
                literal(dict(context), JSON),
                literal(0),
                literal(run_id),
                literal(now, DateTime),
                literal(now, DateTime),
            ).where(ACCOUNTS.c.id.in_(select(ids.c[0]))),
        )
        .on_conflict_do_nothing(index_elements=["account_id", "email", "phase", "occasion"])
        .returning(NOTIFICATIONS.c.id)
    ).all()
    return len(rows)


@dataclass
class QueueOutcome:
    occasion: Occasion
    audience: int
    added: int = 0
    already: int = 0  # already queued, sent or skipped by an earlier run


def queue_preview(engine: Engine, plan: Plan, day: date) -> list[QueueOutcome]:
    """What queueing on ``day`` would add, per mailing. Reads only."""
    outcomes = []
    with engine.connect() as connection:
        for o in due_occasions(plan, day):
            ids = audience(o.audience).subquery()
            total = connection.execute(select(func.count()).select_from(ids)).scalar_one()
            existing = connection.execute(
                select(func.count())
                .select_from(NOTIFICATIONS)
                .where(
                    and_(
                        NOTIFICATIONS.c.email == o.email,
                        NOTIFICATIONS.c.phase == o.phase,
                        NOTIFICATIONS.c.occasion == o.occasion,
                        NOTIFICATIONS.c.account_id.in_(select(ids.c[0])),
                    )
                )
            ).scalar_one()
            outcomes.append(QueueOutcome(o, total, total - existing, existing))
    return outcomes


def queue_due(registry_url: str, plan: Plan, day: date, *, actor: str) -> list[QueueOutcome]:
    """Queue every mailing due on ``day``: one recorded run per mailing."""
    outcomes = []
    with open_registry(registry_url) as engine:
        for o in due_occasions(plan, day):
            with recorded_run(
                engine,
                plan=plan.name,
                step=o.step,
                mode="apply",
                actor=actor,
                parameters={"day": day.isoformat(), "email": o.email},
            ) as run:
                ids = audience(o.audience)
                with engine.begin() as connection:
                    total = connection.execute(
                        select(func.count()).select_from(ids.subquery())
                    ).scalar_one()
                    added = queue_email(
                        connection,
                        email=o.email,
                        phase=o.phase,
                        occasion=o.occasion,
                        account_ids=ids,
                        context=o.context,
                        run_id=run.id,
                        now=utc_now(),
                    )
                outcome = QueueOutcome(o, total, added, total - added)
                run.summary = {"audience": total, "added": added, "already": total - added}
            outcomes.append(outcome)
    return outcomes


def queue_phase_summary(
    connection: Connection,
    plan: Plan,
    phase: str,
    *,
    counts: Mapping[str, int],
    run_id: str,
    now: datetime,
) -> int:
    """The release managers' summary of one enforcement run."""
    managers = plan.notifications.release_managers
    if not managers:
        return 0
    return queue_email(
        connection,
        email="phase_summary",
        phase=phase,
        occasion=run_id,
        account_ids=select(ACCOUNTS.c.id).where(ACCOUNTS.c.username.in_(managers)),
        context={"phase": phase, "counts": dict(counts), "run_id": run_id},
        run_id=run_id,
        now=now,
    )


# --- delivery ------------------------------------------------------------------------------


@dataclass
class DrainReport:
    sender: str
    sent: int = 0
    failed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    resumed: int = 0  # rows a crashed drain left in flight, sent again
    failures: list[tuple[int, str]] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.sent + self.failed + sum(self.skipped.values())


@dataclass(frozen=True)
class _Claimed:
    id: int
    account_id: int
    email: str
    phase: str
    occasion: str
    context: dict[str, Any]


def pending(engine: Engine) -> dict[str, int]:
    """Queued emails by kind (what a drain would send)."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(NOTIFICATIONS.c.email, func.count())
            .where(NOTIFICATIONS.c.state.in_(["queued", "sending"]))
            .group_by(NOTIFICATIONS.c.email)
            .order_by(NOTIFICATIONS.c.email)
        ).all()
    return {email: count for email, count in rows}


def _claim(engine: Engine, size: int, now: datetime) -> list[_Claimed]:
    with engine.begin() as connection:
        query = (
            select(NOTIFICATIONS.c.id)
            .where(NOTIFICATIONS.c.state == "queued")
            .order_by(NOTIFICATIONS.c.id)
            .limit(size)
        )
        if connection.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        ids = [row[0] for row in connection.execute(query)]
        if not ids:
            return []
        rows = connection.execute(
            update(NOTIFICATIONS)
            .where(and_(NOTIFICATIONS.c.id.in_(ids), NOTIFICATIONS.c.state == "queued"))
            .values(state="sending", attempts=NOTIFICATIONS.c.attempts + 1, updated_at=now)
            .returning(
                NOTIFICATIONS.c.id,
                NOTIFICATIONS.c.account_id,
                NOTIFICATIONS.c.email,
                NOTIFICATIONS.c.phase,
                NOTIFICATIONS.c.occasion,
                NOTIFICATIONS.c.context,
            )
        ).all()
    return sorted((_Claimed(*row) for row in rows), key=lambda c: c.id)


_METHOD_RANK = case((TfaFactor.kind == "webauthn", 2), else_=1)


def _recipients(connection: Connection, claimed: list[_Claimed]) -> dict[int, Recipient]:
    """The accounts of a claimed batch as they are now: address, verified, 2FA method."""
    ids = sorted({c.account_id for c in claimed})
    methods = dict(
        connection.execute(
            select(TfaFactor.account_id, func.max(_METHOD_RANK))
            .where(and_(TfaFactor.account_id.in_(ids), TfaFactor.removed_at.is_(None)))
            .group_by(TfaFactor.account_id)
        ).all()
    )
    return {
        account.id: Recipient(
            account.id,
            account.username,
            account.email,
            bool(account.email_verified),
            {2: "webauthn", 1: "totp"}.get(methods.get(account.id, 0)),
        )
        for account in connection.execute(
            select(
                ACCOUNTS.c.id, ACCOUNTS.c.username, ACCOUNTS.c.email, ACCOUNTS.c.email_verified
            ).where(ACCOUNTS.c.id.in_(ids))
        )
    }


def _packages(
    connection: Connection, plan: Plan, claimed: list[_Claimed]
) -> dict[tuple[str, int], tuple[str, ...]]:
    """{(cohort, account): the packages that put the account in the cohort}."""
    phases = {p.name: p.cohort for p in plan.phases}
    wanted: dict[str, set[int]] = {}
    for c in claimed:
        if EMAILS[c.email].needs_packages and c.phase in phases:
            wanted.setdefault(phases[c.phase], set()).add(c.account_id)
    found = {}
    for cohort, ids in wanted.items():
        # By cohort first: the (cohort, account) key is the index that finds them.
        for account_id, names in connection.execute(
            select(CohortMembership.account_id, CohortMembership.packages).where(
                and_(
                    CohortMembership.cohort == cohort, CohortMembership.account_id.in_(sorted(ids))
                )
            )
        ):
            found[(cohort, account_id)] = tuple(sorted(names or []))
    return found


def _last_sent(
    connection: Connection, plan: Plan, claimed: list[_Claimed]
) -> dict[tuple[int, str], datetime]:
    """When each (account, email) with a repeat window was last sent."""
    windowed = [c for c in claimed if c.email in plan.notifications.repeat_days]
    if not windowed:
        return {}
    rows = connection.execute(
        select(NOTIFICATIONS.c.account_id, NOTIFICATIONS.c.email, func.max(NOTIFICATIONS.c.sent_at))
        .where(
            and_(
                NOTIFICATIONS.c.account_id.in_(sorted({c.account_id for c in windowed})),
                NOTIFICATIONS.c.email.in_(sorted({c.email for c in windowed})),
                NOTIFICATIONS.c.state == "sent",
            )
        )
        .group_by(NOTIFICATIONS.c.account_id, NOTIFICATIONS.c.email)
    ).all()
    return {(a, e): at for a, e, at in rows if at is not None}


@dataclass
class _Outcome:
    id: int
    state: str
    reason: str | None = None
    message_id: str | None = None


def _prepare(
    plan: Plan,
    claimed: _Claimed,
    recipient: Recipient | None,
    packages: Mapping[tuple[str, int], tuple[str, ...]],
    suppressed: set[str],
    last_sent: Mapping[tuple[int, str], datetime],
    now: datetime,
) -> _Outcome | Message:
    """A message to send, or why this row ends here (skipped, or failed to render)."""
    definition = EMAILS.get(claimed.email)
    if definition is None:
        return _Outcome(claimed.id, "failed", f"no email named {claimed.email!r}")
    if recipient is None:
        return _Outcome(claimed.id, "failed", f"account {claimed.account_id} no longer exists")
    if not recipient.verified:
        return _Outcome(claimed.id, "skipped", UNVERIFIED)
    if recipient.address.lower() in suppressed:
        return _Outcome(claimed.id, "skipped", SUPPRESSED)
    if recipient.compliant and definition.when_compliant == "skip":
        return _Outcome(claimed.id, "skipped", COMPLIANT)
    days = plan.notifications.repeat_days.get(claimed.email)
    previous = last_sent.get((claimed.account_id, claimed.email))
    if days and previous and now - previous < timedelta(days=days):
        return _Outcome(claimed.id, "skipped", REPEAT)
    try:
        if definition.needs_packages:
            cohort = plan.phase(claimed.phase).cohort
            recipient = replace(
                recipient, packages=packages.get((cohort, recipient.account_id), ())
            )
        rendered = render(definition, recipient, claimed.context, plan)
    except Exception as error:  # a template or context bug fails this message, not the run
        return _Outcome(claimed.id, "failed", f"render: {type(error).__name__}: {error}")
    return Message(
        claimed.id,
        claimed.email,
        recipient.address,
        recipient.username,
        rendered.subject,
        rendered.text,
        rendered.html,
    )


def _deliver(sender: Sender, message: Message) -> _Outcome:
    try:
        return _Outcome(message.outbox_id, "sent", message_id=sender.send(message))
    except DeliveryFailed as failure:
        if not failure.permanent and _is_misconfiguration(failure):
            raise
        return _Outcome(message.outbox_id, "failed", failure.reason[:2000])


def _is_misconfiguration(failure: DeliveryFailed) -> bool:
    from rollout.notify.senders import SenderMisconfigured

    return isinstance(failure, SenderMisconfigured)


def _record(engine: Engine, outcomes: Iterable[_Outcome], now: datetime) -> None:
    rows = [
        {
            "row_id": o.id,
            "new_state": o.state,
            "new_reason": o.reason if o.state == "skipped" else None,
            "new_error": o.reason if o.state == "failed" else None,
            "new_message_id": o.message_id,
            "new_sent_at": now if o.state == "sent" else None,
            "now": now,
        }
        for o in outcomes
    ]
    if not rows:
        return
    with engine.begin() as connection:
        connection.execute(
            update(NOTIFICATIONS)
            .where(
                and_(
                    NOTIFICATIONS.c.id == bindparam("row_id"),
                    NOTIFICATIONS.c.state == "sending",
                )
            )
            .values(
                state=bindparam("new_state"),
                skip_reason=bindparam("new_reason"),
                error=bindparam("new_error"),
                message_id=bindparam("new_message_id"),
                sent_at=bindparam("new_sent_at"),
                updated_at=bindparam("now"),
            ),
            rows,
        )


def _release(engine: Engine, ids: list[int]) -> None:
    """Put claimed rows back, unsent (the sender is misconfigured: nothing went out)."""
    with engine.begin() as connection:
        connection.execute(
            update(NOTIFICATIONS)
            .where(and_(NOTIFICATIONS.c.id.in_(ids), NOTIFICATIONS.c.state == "sending"))
            .values(state="queued", attempts=NOTIFICATIONS.c.attempts - 1)
        )


@dataclass
class _Batch:
    """Claimed rows: those that end here (skips, render failures) and those to send."""

    outcomes: list[_Outcome]
    messages: list[Message]

    @property
    def ids(self) -> list[int]:
        return [o.id for o in self.outcomes] + [m.outbox_id for m in self.messages]


def _next_batch(
    engine: Engine, plan: Plan, size: int, clock: Callable[[], datetime]
) -> _Batch | None:
    """Claim up to ``size`` queued rows and decide, for each, to skip it or its message."""
    claimed = _claim(engine, size, clock()) if size > 0 else []
    if not claimed:
        return None
    now = clock()
    with engine.connect() as connection:
        recipients = _recipients(connection, claimed)
        packages = _packages(connection, plan, claimed)
        suppressed = {
            address
            for (address,) in connection.execute(
                select(SUPPRESSIONS.c.address).where(
                    SUPPRESSIONS.c.address.in_([r.address.lower() for r in recipients.values()])
                )
            )
        }
        last_sent = _last_sent(connection, plan, claimed)
    prepared = [
        _prepare(plan, c, recipients.get(c.account_id), packages, suppressed, last_sent, now)
        for c in claimed
    ]
    return _Batch(
        [p for p in prepared if isinstance(p, _Outcome)],
        [p for p in prepared if isinstance(p, Message)],
    )


def _count(report: DrainReport, outcomes: Iterable[_Outcome]) -> None:
    for o in outcomes:
        if o.state == "sent":
            report.sent += 1
        elif o.state == "failed":
            report.failed += 1
            report.failures.append((o.id, o.reason or ""))
        else:
            report.skipped[o.reason or ""] += 1


def _drain_loop(
    engine: Engine,
    plan: Plan,
    sender: Sender,
    *,
    concurrency: int,
    limit: int | None,
    clock: Callable[[], datetime],
    progress: Callable[[DrainReport], None] | None = None,
) -> DrainReport:
    """Claim, send and record batches until nothing is queued (or ``limit`` is reached)."""
    report = DrainReport(sender.name)
    claimed = 0
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="send") as pool:
        while limit is None or claimed < limit:
            size = concurrency if limit is None else min(concurrency, limit - claimed)
            batch = _next_batch(engine, plan, size, clock)
            if batch is None:
                break
            claimed += len(batch.ids)
            futures = [pool.submit(_deliver, sender, m) for m in batch.messages]
            try:
                sent = [f.result() for f in futures]
            except DeliveryFailed as misconfigured:
                _record(engine, batch.outcomes, clock())
                _release(engine, [m.outbox_id for m in batch.messages])
                raise RolloutError(
                    f"{sender.name}: {misconfigured.reason}; nothing more was sent "
                    "(fix the settings and run again)"
                ) from None
            _record(engine, [*batch.outcomes, *sent], clock())
            _count(report, [*batch.outcomes, *sent])
            if progress:
                progress(report)
    return report


def _drain_worker(
    registry_url: str, plan: Plan, sender: Sender, concurrency: int, limit: int | None
) -> DrainReport:
    """One worker process of a drain: its own connections, the real clock."""
    with open_registry(registry_url) as engine:
        return _drain_loop(
            engine, plan, sender, concurrency=concurrency, limit=limit, clock=utc_now
        )


def _merge(reports: Iterable[DrainReport], into: DrainReport) -> DrainReport:
    for r in reports:
        into.sent += r.sent
        into.failed += r.failed
        into.skipped.update(r.skipped)
        into.failures += r.failures
    return into


def drain(
    registry_url: str,
    plan: Plan,
    sender: Sender,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    processes: int = 1,
    limit: int | None = None,
    clock: Callable[[], datetime] = utc_now,
    progress: Callable[[int, int], None] | None = None,
) -> DrainReport:
    """Send every queued email (at most ``limit``), ``concurrency`` at a time in each
    of ``processes`` processes.

    Claimed rows are sent and recorded before more are claimed: a crash leaves at
    most ``concurrency`` rows in flight per process, the only messages a rerun may
    duplicate. More processes help where rendering and the HTTP client's own work
    are the limit (a local server on a small machine); against SendGrid, more
    concurrency is the lever. Worker processes use the real clock and need a
    sender that pickles (both senders do)."""
    report = DrainReport(sender.name)
    with exclusive_run(registry_url, "notify"), open_registry(registry_url) as engine:
        with engine.begin() as connection:
            # Left in flight by a drain that died: it may or may not have sent them.
            report.resumed = connection.execute(
                update(NOTIFICATIONS)
                .where(NOTIFICATIONS.c.state == "sending")
                .values(state="queued", updated_at=clock())
            ).rowcount
        waiting = sum(pending(engine).values())
        total = min(waiting, limit) if limit is not None else waiting
        if processes <= 1:
            return _merge(
                [
                    _drain_loop(
                        engine,
                        plan,
                        sender,
                        concurrency=concurrency,
                        limit=limit,
                        clock=clock,
                        progress=(lambda r: progress(r.done, total)) if progress else None,
                    )
                ],
                report,
            )
        share = None if limit is None else -(-limit // processes)
        context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        with context.Pool(processes) as pool:
            running = pool.starmap_async(
                _drain_worker,
                [(registry_url, plan, sender, concurrency, share)] * processes,
            )
            while not running.ready():
                running.wait(0.5)
                if progress:
                    done = waiting - sum(pending(engine).values())
                    progress(min(done, total), total)
            return _merge(running.get(), report)


def retry_failed(engine: Engine) -> int:
    """Queue failed emails again (after fixing what failed them); returns how many."""
    with engine.begin() as connection:
        return connection.execute(
            update(NOTIFICATIONS)
            .where(NOTIFICATIONS.c.state == "failed")
            .values(state="queued", error=None, updated_at=utc_now())
        ).rowcount


def suppress(engine: Engine, address: str, *, reason: str, actor: str) -> bool:
    """Stop all email to an address; returns False if it already was."""
    with engine.begin() as connection:
        return bool(
            connection.execute(
                dialect_insert(connection, SUPPRESSIONS)
                .values(
                    address=address.strip().lower(),
                    reason=reason,
                    created_at=utc_now(),
                    created_by=actor,
                )
                .on_conflict_do_nothing(index_elements=["address"])
            ).rowcount
        )


def outbox_status(engine: Engine) -> list[dict[str, Any]]:
    """Emails by kind, state and skip reason or error class."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                NOTIFICATIONS.c.email,
                NOTIFICATIONS.c.state,
                NOTIFICATIONS.c.skip_reason,
                func.count(),
            )
            .group_by(NOTIFICATIONS.c.email, NOTIFICATIONS.c.state, NOTIFICATIONS.c.skip_reason)
            .order_by(NOTIFICATIONS.c.email, NOTIFICATIONS.c.state, NOTIFICATIONS.c.skip_reason)
        ).all()
    return [{"email": e, "state": s, "reason": r or "", "count": n} for e, s, r, n in rows]


def account_recipient(engine: Engine, plan: Plan, username: str, phase: str | None) -> Recipient:
    """One account as a recipient (for previews), with its packages in ``phase``'s cohort."""
    with engine.connect() as connection:
        account_id = connection.execute(
            select(ACCOUNTS.c.id).where(ACCOUNTS.c.username == username)
        ).scalar()
        if account_id is None:
            raise BadInput(None, None, f"no account named {username!r}")
        claimed = [_Claimed(0, account_id, "phase_notice", phase or "", "", {})]
        recipient = _recipients(connection, claimed)[account_id]
        if phase is None:
            return recipient
        packages = _packages(connection, plan, claimed)
    return replace(recipient, packages=packages.get((plan.phase(phase).cohort, account_id), ()))
