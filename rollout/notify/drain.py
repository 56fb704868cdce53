"""Draining: deliver the queued emails exactly once.

Draining claims a handful of rows at a time (``queued`` -> ``sending``, as many as
are sent at once), renders and sends them concurrently, and records each outcome.
A crash leaves at most that handful in ``sending``; the next drain sends them again
(the only possible duplicates, bounded by the concurrency), never a whole batch.
The file outbox claims FILE_BATCH (500) rows at a time and writes them in turn: a
crash leaves at most those 500 in flight, and writing them again replaces their files.
One drain runs at a time.

An email whose last day has passed when it is claimed (a reminder after the deadline
it counts to, a heads-up once its brown-out began, an org's invitation once it expired:
:func:`_too_late`) is not sent but recorded as skipped, ``too late``, as any skip: once,
and for good; so is a warning of
a phase (its notice, a reminder) whose account the phase's enforcement flagged since it
was queued (:func:`_enforced`), ``already enforced``.

A stop (SIGTERM, SIGINT; rollout.core.stopping) claims nothing more, gives the sends in
flight a moment, records what they came to and puts back the rest; worker processes are
told and, after a grace, killed; the run lock is let go only once the last of them is gone.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import pickle
import queue
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait as wait_for_pipes
from multiprocessing.process import BaseProcess
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    String,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal,
    literal_column,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql import Select

from rollout.core.calendar import phase_step, too_late, too_late_by_plan
from rollout.core.clock import day_start, naive_utc
from rollout.core.controls import quoted
from rollout.core.errors import BadInput, RolloutError
from rollout.core.plan import Phase, Plan
from rollout.core.stopping import (
    StopRequest,
    as_child,
    hold_for_multiprocessing,
    stop_processes,
    stop_requested_by_signals,
)
from rollout.core.words import by_count, counted, listed
from rollout.notify.emails import (
    ELV_HEADS_UP_EMAIL,
    EMAILS,
    ENFORCEMENT_EMAIL,
    HEADS_UP_EMAIL,
    INVITATION_EMAIL,
    LOGIN_HEADS_UPS,
    RERUN_OCCASION,
    Recipient,
    Stricter,
    TokenLine,
    asks_only_2fa,
    recommends_only,
    skips_compliant,
)
from rollout.notify.message import (
    DeliveryFailed,
    Message,
    SendAbandoned,
    Sender,
    SenderUnavailable,
    attempts_held_by,
    normal_address,
)
from rollout.notify.outbox import (
    ACCOUNT_DELETED,
    ACCOUNTS,
    COMPLIANT,
    CUT_SHORT,
    DIED_HOLDING,
    ENFORCED,
    FILE_SENDER,
    IN_ELV,
    NOTIFICATIONS,
    QUEUED_LATE,
    REPEAT,
    SENT_ON,
    TOO_LATE,
    UNVERIFIED,
    check_sender,
    failure_reason,
    pending,
    requeue_failed,
    run_day,
    suppression_reasons,
)
from rollout.notify.reach import WARNINGS
from rollout.notify.render import render
from rollout.notify.withdraw import marked_withdrawn
from rollout.registry import Registry
from rollout.registry.batches import IN_LIST_MAX, in_chunks
from rollout.registry.deadlines import (
    deadlines,
    deadlines_and_snoozes,
    notice_sent,
    own_deadline,
)
from rollout.registry.engine import (
    RegistryStatementCancelled,
    RegistryURLRefused,
    begin_writing,
)
from rollout.registry.invitations import member_again
from rollout.registry.ledger import utc_now
from rollout.registry.models import (
    Action,
    CohortMembership,
    OrgInvitation,
    PhaseRequirement,
    PlanRun,
    TfaFactor,
    ahead_until,
    current_members,
    windows_named,
)
from rollout.registry.requirements import (
    TOKENS,
    judged_at,
    lacks_factor,
    offending_token,
    revoked_by_phase,
    token_rules,
)

log = logging.getLogger(__name__)

ACTIONS = Action.__table__

# Messages sent at once, and so at most claimed at once: the most a crash can resend.
DEFAULT_CONCURRENCY = 8
# The most the notify flows' ``concurrency`` takes, as `notify send --concurrency`
# (rollout/cli/notify.py, which does not import this module to start quickly).
MAX_CONCURRENCY = 64
# What the file outbox claims at once, and writes in the drain's own thread: there is no
# network to wait on, so threads only add overhead, and a crash that leaves a batch in
# flight makes its rows be written again, replacing their own files (no duplicates).
FILE_BATCH = 500
# After a stop: how long sends in flight may still finish (and be recorded as sent)
# before their rows are put back; and how long a worker process has to do that and
# report before it is killed. Together they bound how long a stop takes.
IN_FLIGHT_GRACE = 0.5
WORKER_GRACE = 1.0
# How often a drain in processes looks that its run lock is still its own (a single
# process drain looks before each batch).
LOCK_CHECK_SECONDS = 1.0
_POLL = 0.05  # seconds between looks at a stop request while waiting
# Batches in a row of which nothing went and a send found the provider unavailable
# (SenderUnavailable: SendGrid down through every retry, the outbox folder unwritable)
# after which a drain stops: an outage failed every queued email, each after its
# retries, and nothing sends failed ones again but `--retry-failed` by hand. Stopped,
# only those batches failed; the rest stay queued for the next run. Not one batch: a
# blip of a few seconds (one email's retries) would hold back the rest for a day.
OUTAGE_BATCHES = 3
# How long a drainer holds the rows it claimed: renewed every tenth of it while their
# sends are under way, however long a request takes (_Heartbeat), and before each
# attempt of a send once a tenth of it has passed, or sooner when less is ahead than the
# attempt may take and a margin (_Hold; SendGrid's one attempt: a connection and an
# answer of up to 10 s each when each read gets its bytes in time, and a wait of up to
# 30 s before the next). A drainer that dies (or is paused: its heartbeat with it)
# leaves its rows to be taken over when it runs out (drain_shard waits for that); one
# only slow sends none it no longer holds, nor tries again one it lost during a wait.
# Never shorter than lease_for says.
DEFAULT_LEASE = timedelta(minutes=5)
# What a drainer keeps of its lease ahead of an attempt beyond the longest it may take
# (its sender's ``longest_attempt``): the clocks of the machines sharing the outbox,
# which may disagree a little, a short pause of the process, the record after the send.
LEASE_MARGIN = timedelta(seconds=15)

# --- delivery ------------------------------------------------------------------------------


@dataclass
class DrainReport:
    sender: str
    sent: int = 0
    failed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    # Rows a crashed drain left in flight, or a stop put back mid-send: sent again,
    # though they may have gone out (the only duplicates).
    resumed: int = 0
    put_back: int = 0  # claimed rows queued again by a stop: unsent, or not known to be
    # Claimed rows another drainer took over before this one sent or recorded them (it
    # outlived its lease): left to that one, counted by it.
    overtaken: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)
    requeued: int = 0  # failed rows queued again first (retry_failed)
    retried: int = 0  # sends retried after the provider answered 5xx or 429

    @property
    def done(self) -> int:
        return self.sent + self.failed + sum(self.skipped.values())

    def failure_message(self, top: int = 3) -> str:
        """One line: how many emails failed and the commonest reasons, e.g.
        ``20 emails failed: SendGrid answered 400: bad request (20)``."""
        reasons = Counter(failure_reason(why) for _, why in self.failures)
        shown = "; ".join(f"{why} ({n})" for why, n in reasons.most_common(top))
        more = f"; {counted(len(reasons) - top, 'other reason')}" if len(reasons) > top else ""
        return f"{counted(self.failed, 'email')} failed: {shown}{more}"


class EmailsFailed(RolloutError):
    """Some emails of a drain failed (each recorded with its reason); the rest went."""


class ShardOrphaned(RolloutError):
    """A shard's notify run is gone (nobody holds the ``notify`` lock, or another run
    does): the shard sends nothing more, having put back what it held, for the next
    notify run."""


@dataclass(frozen=True)
class _Claimed:
    id: int
    account_id: int
    email: str
    phase: str
    occasion: str
    context: dict[str, Any]
    error: str | None = None  # CUT_SHORT: a stop put it back, its send maybe gone out
    # The token its claim drew (a take-over draws another): the row is still this
    # drainer's while it is 'sending' under it (notifications.claim_token).
    claim: str | None = None


def _in_state(state: str) -> Any:
    """SQL: the row is in ``state``, named literally (a constant of this module): a
    bound parameter would hide from the planner that the claim's partial indexes
    (ix_notifications_queued, ix_notifications_sending) apply."""
    return NOTIFICATIONS.c.state == literal_column(f"'{state}'")


def _lapsed(now: datetime) -> Any:
    """SQL: a row claimed by a drainer whose lease on it has run out (presumed dead: it
    may or may not have sent it)."""
    c = NOTIFICATIONS.c
    return and_(_in_state("sending"), c.lease_expires_at.is_not(None), c.lease_expires_at < now)


def _claimable(now: datetime) -> Any:
    """SQL: a row a drainer may claim: queued, or held past its lease."""
    return or_(_in_state("queued"), _lapsed(now))


def _candidates(now: datetime, size: int) -> list[Select[tuple[int]]]:
    """The rows a claim of ``size`` takes, lowest ids first: those held past their
    lease, then queued ones, each query on its state's partial index, which holds only
    those rows. With the OR of :func:`_claimable`, or the state as a parameter,
    PostgreSQL walked the primary key past every row already sent (20-100 ms a claim
    once 60,000 were)."""
    c = NOTIFICATIONS.c
    return [
        select(c.id).where(which).order_by(c.id).limit(size)
        for which in (_lapsed(now), _in_state("queued"))
    ]


def _settle_lapsed_withdrawals(connection: Connection, now: datetime) -> None:
    """Rows withdrawn while a drainer held them, whose drainer is presumed dead (its
    lease ran out): skipped, not claimed and sent again. Rows another claim holds are
    passed over (PostgreSQL), as the claim itself does."""
    lapsed = select(NOTIFICATIONS.c.id).where(and_(_lapsed(now), marked_withdrawn()))
    if connection.dialect.name == "postgresql":
        lapsed = lapsed.with_for_update(skip_locked=True)
    ids = connection.scalars(lapsed).all()
    if ids:
        connection.execute(
            update(NOTIFICATIONS)
            .where(and_(NOTIFICATIONS.c.id.in_(ids), _in_state("sending")))
            .values(
                state="skipped",
                error=DIED_HOLDING,
                updated_at=now,
                lease_expires_at=None,
                claim_token=None,
            )
        )


def _claim(
    engine: Engine, size: int, now: datetime, sender: str, lease: timedelta = DEFAULT_LEASE
) -> list[_Claimed]:
    """Up to ``size`` claimable rows, marked as sending by this drainer until ``now`` +
    ``lease``: none when nothing is (the drainers sharing the outbox take that as the
    end of their work, or wait for the leases of others: drain_shard). The claim draws
    a token of its own (a random one: no other claim, before or after, has it), written
    to the rows it takes: what makes a row still this drainer's (_held_rows)."""
    token = secrets.token_hex(16)
    with begin_writing(engine) as connection:
        _settle_lapsed_withdrawals(connection, now)
        if connection.dialect.name == "postgresql":
            ids: list[int] = []
            for query in _candidates(now, size):
                # Rows another drainer holds are passed over, not waited for.
                locked = query.limit(size - len(ids)).with_for_update(skip_locked=True)
                ids += connection.scalars(locked).all()
                if len(ids) == size:
                    break
            if not ids:
                return []
            chosen = NOTIFICATIONS.c.id.in_(ids)
        else:
            # SQLite: chosen and claimed in one statement, under its one write lock. A
            # SELECT then an UPDATE let two drainers choose the same rows; the one whose
            # UPDATE came second claimed none and stopped as if the outbox were empty,
            # leaving a drain in two processes to one of them.
            both = union_all(*(select(q.subquery().c.id) for q in _candidates(now, size)))
            chosen = NOTIFICATIONS.c.id.in_(select(both.subquery().c.id).limit(size))
        rows = connection.execute(
            update(NOTIFICATIONS)
            .where(and_(chosen, _claimable(now)))
            # The sender is recorded as it claims: even a drain that dies mid-send
            # leaves word of who may have sent it (check_sender).
            .values(
                state="sending",
                attempts=NOTIFICATIONS.c.attempts + 1,
                sender=sender,
                updated_at=now,
                lease_expires_at=now + lease,
                claim_token=token,
            )
            .returning(
                NOTIFICATIONS.c.id,
                NOTIFICATIONS.c.account_id,
                NOTIFICATIONS.c.email,
                NOTIFICATIONS.c.phase,
                NOTIFICATIONS.c.occasion,
                NOTIFICATIONS.c.context,
                NOTIFICATIONS.c.error,
                NOTIFICATIONS.c.claim_token,
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
            tfa_required=account.tfa_required_at is not None,
        )
        for account in connection.execute(
            select(
                ACCOUNTS.c.id,
                ACCOUNTS.c.username,
                ACCOUNTS.c.email,
                ACCOUNTS.c.email_verified,
                ACCOUNTS.c.tfa_required_at,
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
        # An email this code has no definition of needs none: it fails, named (_ends_unsent).
        definition = EMAILS.get(c.email)
        if definition is not None and definition.needs_packages and c.phase in phases:
            wanted.setdefault(phases[c.phase], set()).add(c.account_id)
    found = {}
    for cohort, ids in wanted.items():
        # By cohort first: the (cohort, account) key is the index that finds them. Not
        # only current members (current_members): an email queued while the account was
        # one names the packages that put it in, though it has left since.
        for account_id, names in connection.execute(
            select(CohortMembership.account_id, CohortMembership.packages).where(
                and_(
                    CohortMembership.cohort == cohort, CohortMembership.account_id.in_(sorted(ids))
                )
            )
        ):
            found[(cohort, account_id)] = tuple(sorted(names or []))
    return found


# The emails whose wording follows the phase's requirements (and whose "already
# compliant" means meeting them).
_PHASE_EMAILS = ("phase_notice", "reminder", ENFORCEMENT_EMAIL)


@dataclass(frozen=True)
class _Standing:
    """Where a recipient stands in a phase that asks more than any 2FA, or gives each
    account its own deadline."""

    lacks_factor: bool
    tokens: tuple[TokenLine, ...]
    deadline: date | None = None
    snoozed: bool = False  # its own deadline was postponed on request
    stricter: Stricter | None = None  # Recipient.stricter
    rolled_back: bool = False  # Recipient.rolled_back
    told_on: date | None = None  # Recipient.told_on

    def apply(self, recipient: Recipient) -> Recipient:
        return replace(
            recipient,
            lacks_factor=self.lacks_factor,
            tokens=self.tokens,
            deadline=self.deadline,
            snoozed=self.snoozed,
            stricter=self.stricter,
            rolled_back=self.rolled_back,
            told_on=self.told_on,
        )


def _rerun_of(claimed: _Claimed) -> str:
    """The run whose own enforcement email this is (its occasion ``run:<id>``), or ''."""
    if claimed.email == ENFORCEMENT_EMAIL and claimed.occasion.startswith(RERUN_OCCASION):
        return claimed.occasion.removeprefix(RERUN_OCCASION)
    return ""


def _standing_key(claimed: _Claimed) -> tuple[str, str, int, str]:
    """Where :func:`_standing` files a claimed row: its email, phase and account, and
    for a rerun's enforcement email the run (it tells what that run revoked)."""
    return (claimed.email, claimed.phase, claimed.account_id, _rerun_of(claimed))


def _standing(
    connection: Connection, plan: Plan, claimed: list[_Claimed], now: datetime
) -> dict[tuple[str, str, int, str], _Standing]:
    """{(email, phase, account): where it stands} for the phase emails of phases that
    ask more than any 2FA or give each account its own deadline (phases that ask only
    2FA by one date are judged by the recipient's 2FA method, as before). The tokens:
    for a notice or a reminder, its live tokens the phase forbids; for the enforcement
    notice, those the phase's enforcement revoked. The deadline: for a notice, the one
    it starts (sent now); for the others, the account's own."""
    phases = {p.name: p for p in plan.phases if not asks_only_2fa(p)}
    wanted: dict[tuple[str, str, str], set[int]] = {}
    for c in claimed:
        if c.email in _PHASE_EMAILS and c.phase in phases:
            wanted.setdefault((c.email, c.phase, _rerun_of(c)), set()).add(c.account_id)
    found: dict[tuple[str, str, int, str], _Standing] = {}
    for (email, name, rerun), ids in wanted.items():
        phase = phases[name]
        requires = phase.requires
        accounts = sorted(ids)
        own: dict[int, tuple[date, bool]] = {}
        if phase.deadline is not None and email == "phase_notice":
            own = dict.fromkeys(accounts, (own_deadline(phase, now, None), False))
        elif phase.deadline is not None:
            own = deadlines_and_snoozes(connection, phase, accounts)
        lacking = set(
            connection.execute(
                select(ACCOUNTS.c.id).where(
                    and_(ACCOUNTS.c.id.in_(accounts), lacks_factor(requires, ACCOUNTS.c.id))
                )
            ).scalars()
        )
        # The enforcement notice lists what was revoked; a warning, what its account's
        # enforcement will revoke: tokens judged as they will be on that day (judged_at),
        # accounts grouped by the day (one, unless each has its own deadline).
        lists: list[tuple[list[int], Any]] = [(accounts, revoked_by_phase(TOKENS, name))]
        # A warning: each account's day there (the phase's, or its own).
        warned: dict[int, date] = {}
        if email != ENFORCEMENT_EMAIL:
            by_day: dict[date, list[int]] = {}
            for account_id in accounts:
                warned[account_id] = own.get(account_id, (phase.enforce_on,))[0]
                by_day.setdefault(warned[account_id], []).append(account_id)
            lists = [
                (group, offending_token(requires, TOKENS, judged_at(day, now)))
                for day, group in by_day.items()
            ]
        # A rerun's own email, to an account an earlier enforcement email of the phase
        # reached: what was revoked since the last such email went (listed then or
        # before), this run's tokens among them. Listing every token the phase ever
        # revoked, in the same words, told its owner a token revoked days before was
        # revoked again; listing this run's alone left out an earlier rerun's tokens
        # whose own email never went (skipped, failed, withdrawn).
        told = _told_on(connection, name, accounts) if rerun else {}
        in_run = _revoked_in_run(rerun) if rerun else true()
        # A warning's token that another phase revokes before its account's day: said so.
        sooner = _revoked_sooner(connection, plan, name, warned, now)
        tokens: dict[int, list[TokenLine]] = {}
        for group, which in lists:
            for token_id, account_id, *line in connection.execute(
                select(
                    TOKENS.c.id,
                    TOKENS.c.account_id,
                    TOKENS.c.name,
                    TOKENS.c.kind,
                    TOKENS.c.created_at,
                    TOKENS.c.last_used_at,
                    TOKENS.c.writes,
                    TOKENS.c.expires_at,
                    TOKENS.c.revoked_at,
                    in_run.label("in_run"),
                )
                .where(and_(TOKENS.c.account_id.in_(group), which))
                .order_by(TOKENS.c.account_id, TOKENS.c.created_at, TOKENS.c.id)
            ):
                *line, writes, expires_at, revoked_at, this_run = line
                if account_id in told and not this_run and revoked_at <= told[account_id]:
                    continue  # listed by an email that reached its owner
                stops_on, because, own_day = sooner.get(token_id, (None, "", False))
                tokens.setdefault(account_id, []).append(
                    TokenLine(
                        *line,
                        stops_on,
                        because,
                        stops_own=own_day,
                        writes=writes,
                        expires_at=expires_at,
                    )
                )
        stricter = _stricter(connection, plan, phase, sorted(lacking))
        # Kept through a rollback only for what it revoked (rollback_phase): said so.
        rolled_back = email == ENFORCEMENT_EMAIL and _rolled_back(connection, phase)
        for account_id in accounts:
            deadline, snoozed = own.get(account_id, (None, False))
            found[(email, name, account_id, rerun)] = _Standing(
                account_id in lacking,
                tuple(tokens.get(account_id, ())),
                deadline,
                snoozed,
                stricter.get(account_id),
                rolled_back,
                told[account_id].date() if account_id in told else None,
            )
    return found


def _revoked_in_run(run_id: str) -> Any:
    """SQL: the token's revocation was audited by run ``run_id`` (its ``revoke_token``
    row, keyed ``revoke-token:<id>``: one per token)."""
    return exists().where(
        and_(
            ACTIONS.c.effect_key == literal("revoke-token:") + cast(TOKENS.c.id, String),
            ACTIONS.c.run_id == run_id,
        )
    )


def _told_on(connection: Connection, phase: str, accounts: list[int]) -> dict[int, datetime]:
    """{account: when the last of the phase's enforcement emails to it that reached it
    was sent (the first or a rerun's)}: it listed every token the phase had revoked of
    the account by then, itself or with the emails before it. Only for accounts the
    first one reached (one skipped, failed or withdrawn told nothing: a rerun's email
    then lists every token the phase revoked of the account)."""
    n = NOTIFICATIONS.c
    found: dict[int, datetime] = {}
    sent = and_(
        n.email == ENFORCEMENT_EMAIL,
        n.phase == phase,
        n.state == "sent",
        n.sent_at.is_not(None),
    )
    for ids in in_chunks(accounts):
        for account_id, sent_at in connection.execute(
            select(n.account_id, func.max(n.sent_at))
            .where(and_(n.account_id.in_(ids), sent))
            .group_by(n.account_id)
            .having(func.sum(case((n.occasion == "", 1), else_=0)) > 0)
        ):
            found[account_id] = sent_at
    return found


def _revoked_sooner(
    connection: Connection, plan: Plan, phase: str, warned: Mapping[int, date], now: datetime
) -> dict[int, tuple[date, str, bool]]:
    """For a warning of ``phase`` to the accounts of ``warned``, each enforced there on
    its day (the phase's, or the account's own): {token id: (day, rules, own)} of their
    tokens that another phase of the plan revokes before that day: one enforced on a day
    still to come (today included) before it, not rolled back, whose cohort holds the
    account now (not exempt) and whose token rules forbid the token as its enforcement
    will judge it on that day (``judged_at``: its age and expiry then). That day is the
    other phase's ``enforce_on``, or under per-account deadlines the account's own there
    (its notice's day plus the phase's days, snooze included: ``own`` is then true; an
    account never sent that notice has none, and is not enforced there). The earliest
    such day, and the rules of the phases revoking on it that the token breaks, in
    words: not every token rule of the phase, which told the owner of a token named and
    new that "no unnamed tokens" and "no tokens older than 90 days" stopped it.
    npm 2025: the bypass-2FA notice listed a classic automation token as stopping in May
    2026, while the classic-token phase revoked it in December 2025. One statement per
    other phase and chunk of accounts, whatever their days."""
    if not warned:
        return {}
    today = now.date()
    accounts = sorted(warned)
    # An own deadline is never before its phase's enforce_on (the first one), and never
    # after its enforce_until (the last notice's, snoozed).
    earlier = sorted(
        (
            p
            for p in plan.phases
            if p.name != phase
            and p.does("revoke_tokens")
            and today <= p.enforce_until
            and p.enforce_on < max(warned.values())
            and p.requires.token_rules
        ),
        key=lambda p: (p.enforce_on, p.name),
    )
    exempt = sorted(plan.exempt_usernames)
    found: dict[int, tuple[date, list[str], bool]] = {}
    for other in earlier:
        if _rolled_back(connection, other):
            continue  # withdrawn: it revokes nothing now
        rule_names = list(token_rules(other.requires, TOKENS, now))
        # Each account's IN list appears once per rule and once in the WHERE.
        own = other.deadline is not None
        for ids in in_chunks(accounts, IN_LIST_MAX // (len(rule_names) + 1)):
            # An account never sent that phase's notice has no deadline there: not enforced.
            days = _days_there(connection, other, ids)
            by_day: dict[date, list[int]] = {}
            for account_id, on in days.items():
                if today <= on < warned[account_id]:  # not sooner, or passed
                    by_day.setdefault(on, []).append(account_id)
            if not by_day:
                continue
            # Each day's accounts, and the phase's rules as its enforcement judges their
            # tokens on that day (a token's age and expiry then).
            judged = [
                (
                    TOKENS.c.account_id.in_(group),
                    list(token_rules(other.requires, TOKENS, judged_at(on, now)).values()),
                    offending_token(other.requires, TOKENS, judged_at(on, now)),
                )
                for on, group in sorted(by_day.items())
            ]
            broken = [
                case(*((and_(theirs, rules[i]), 1) for theirs, rules, _ in judged), else_=0)
                for i in range(len(rule_names))
            ]
            offends = or_(*(and_(theirs, offending) for theirs, _, offending in judged))
            for token_id, account_id, *hits in connection.execute(
                select(TOKENS.c.id, TOKENS.c.account_id, *broken)
                .join(ACCOUNTS, ACCOUNTS.c.id == TOKENS.c.account_id)
                .where(
                    and_(
                        TOKENS.c.account_id.in_(current_members(other.cohort)),
                        ACCOUNTS.c.username.not_in(exempt),
                        offends,
                    )
                )
            ):
                on = days[account_id]
                breaks = [rule for rule, hit in zip(rule_names, hits, strict=True) if hit]
                day_found, said, was_own = found.get(token_id, (on, [], own))
                if on < day_found:
                    day_found, said, was_own = on, [], own
                if on == day_found:  # the earliest day's phases, each rule once
                    said += [rule for rule in breaks if rule not in said]
                    # Its own deadline only if no phase revokes it that day for everyone.
                    found[token_id] = (on, said, was_own and own)
    return {token_id: (on, listed(rules), own) for token_id, (on, rules, own) in found.items()}


def _days_there(
    connection: Connection, phase: Phase, account_ids: Sequence[int]
) -> dict[int, date]:
    """Each of ``account_ids``' enforcement day in ``phase``: its ``enforce_on``, or
    under per-account deadlines the account's own (its notice's day plus the phase's
    days, snooze included; an account never sent that notice has none, and is left
    out)."""
    if phase.deadline is None:
        return dict.fromkeys(account_ids, phase.enforce_on)
    return deadlines(connection, phase, account_ids)


def _stricter(
    connection: Connection, plan: Plan, phase: Phase, lacking: list[int]
) -> dict[int, Stricter]:
    """For a phase that only recommends: of its accounts without the factor, those a
    later phase of the plan requiring 2FA has told so already (its notice sent) and
    that still fall short of what it asks: what it asks, and by when (the account's
    own deadline under per-account deadlines). Not before that notice: the line would
    announce a policy not announced yet (pypi 2023's banner of July 2022 and the
    mandate of 2024), and "we wrote to you" would be false."""
    if not recommends_only(phase) or not lacking:
        return {}
    requiring = sorted(
        (
            p
            for p in plan.phases
            if p.name != phase.name
            and p.does("require_2fa")
            and p.requires.two_factor != "none"
            and p.enforce_on >= phase.enforce_on
        ),
        key=lambda p: (p.enforce_on, p.name),
    )
    found: dict[int, Stricter] = {}
    for other in requiring:
        if _rolled_back(connection, other):
            continue  # withdrawn: it requires nothing of anyone now
        asks = other.requires.factor_in_words()
        cohort = plan.cohort(other.cohort).in_words() if other.cohort != phase.cohort else None
        for ids in in_chunks([a for a in lacking if a not in found]):
            told = list(
                connection.execute(
                    select(ACCOUNTS.c.id).where(
                        and_(
                            ACCOUNTS.c.id.in_(ids),
                            lacks_factor(other.requires, ACCOUNTS.c.id),
                            exists().where(notice_sent(other, ACCOUNTS.c.id)),
                        )
                    )
                ).scalars()
            )
            days = _days_there(connection, other, told)
            for account_id in told:
                found[account_id] = Stricter(cohort, days.get(account_id, other.enforce_on), asks)
    return found


def _required_sooner(
    connection: Connection,
    plan: Plan,
    claimed: list[_Claimed],
    standing: Mapping[tuple[str, str, int, str], _Standing],
    now: datetime,
) -> dict[tuple[str, int], Stricter]:
    """{(phase, account): the sooner requirement} for the batch's notices and reminders
    of phases requiring 2FA, to accounts that another phase requires 2FA of before this
    one's deadline (the phase's ``enforce_on``, or the account's own): one enforced on a
    day still to come (today included), not rolled back, whose cohort holds the account
    now, that is not exempt, has not been required 2FA yet (its email says so already)
    and lacks both phases' factors. That day is the other phase's ``enforce_on``, or
    under per-account deadlines the account's own there (its notice's day plus the
    phase's days, snooze included; an account never sent that notice has none yet, and
    that notice will tell it). The earliest such day, its phase's factor.
    The plan language allows a later phase's notice before an earlier phase enforces:
    its "required from" the later day told an account in both cohorts there was time
    until then (the tokens' counterpart: :func:`_revoked_sooner`)."""
    today = now.date()
    phases = {p.name: p for p in plan.phases}
    wanted: dict[str, dict[int, date]] = {}
    for c in claimed:
        phase = phases.get(c.phase)
        if (
            c.email not in ("phase_notice", "reminder")
            or phase is None
            or not phase.does("require_2fa")
            or phase.requires.two_factor == "none"
        ):
            continue
        found = standing.get(_standing_key(c))
        day = found.deadline if found is not None and found.deadline else phase.enforce_on
        wanted.setdefault(phase.name, {})[c.account_id] = day
    exempt = sorted(plan.exempt_usernames)
    sooner: dict[tuple[str, int], Stricter] = {}
    for name, days in wanted.items():
        phase = phases[name]
        latest = max(days.values())
        # An own deadline is never before its phase's enforce_on (the first one), and
        # never after its enforce_until (the last notice's, snoozed).
        earlier = sorted(
            (
                p
                for p in plan.phases
                if p.name != name
                and p.does("require_2fa")
                and p.requires.two_factor != "none"
                and today <= p.enforce_until
                and p.enforce_on < latest
            ),
            key=lambda p: (p.enforce_on, p.name),
        )
        for other in earlier:
            if _rolled_back(connection, other):
                continue  # withdrawn: it requires nothing of anyone now
            cohort = plan.cohort(other.cohort).in_words() if other.cohort != phase.cohort else None
            asks = other.requires.factor_in_words()
            ids = [a for a, day in days.items() if other.enforce_on < day]
            for chunk in in_chunks(sorted(ids)):
                held = list(
                    connection.execute(
                        select(ACCOUNTS.c.id).where(
                            and_(
                                ACCOUNTS.c.id.in_(chunk),
                                ACCOUNTS.c.id.in_(current_members(other.cohort)),
                                ACCOUNTS.c.username.not_in(exempt),
                                ACCOUNTS.c.tfa_required_at.is_(None),
                                lacks_factor(phase.requires, ACCOUNTS.c.id),
                                lacks_factor(other.requires, ACCOUNTS.c.id),
                            )
                        )
                    ).scalars()
                )
                there = _days_there(connection, other, held)
                for account_id, on in there.items():
                    if not today <= on < days[account_id]:
                        continue  # not sooner (an account not noticed there has no day yet)
                    told = sooner.get((name, account_id))
                    if told is None or on < told.on:
                        sooner[(name, account_id)] = Stricter(
                            cohort, on, asks, own=other.deadline is not None
                        )
    return sooner


def _as_sooner(recipient: Recipient | None, sooner: Stricter | None) -> Recipient | None:
    return replace(recipient, sooner=sooner) if recipient is not None and sooner else recipient


def _too_late(
    connection: Connection,
    plan: Plan,
    claimed: list[_Claimed],
    standing: Mapping[tuple[str, str, int, str], _Standing],
    now: datetime,
) -> set[int]:
    """The claimed rows too late by ``now`` (rollout.core.calendar.too_late, by the
    pipeline's clock): sent after an outage of the sender, a paused deployment or a
    retry of an old failure, each would announce as still to come what has come. An
    email is too late from its mailing's instant (the calendar's Mailing.too_late_at), as
    the plan and the registry stand now:

    - a phase notice: from the phase's deadline (00:00 UTC); with per-account deadlines
      the day after ``last_notice_on`` (a notice starts its account's deadline, and one
      sent later would start it past the days the phase enforces);
    - a reminder: from the deadline it counts to, the phase's or, with per-account
      deadlines, the account's own (snoozed or not);
    - a brown-out heads-up: from the instant its window starts, as the registry has it
      (or was called off), to the minute: at 09:00 one still announces a window that
      begins at 14:00;
    - the ELV heads-up: from the day it tells;
    - an org's invitation back: from the instant the invitation expires (its
      ``expires_at``, INVITATION_DAYS after the owner sent it): "accept before" a time
      gone, of an invitation the registry no longer takes, sent after an outage; and
      once the registry has it accepted or expired however early (no longer pending:
      "invites you back" to a member back already).

    Emails of no date (the enforcement notice, an org's removal notice and enforcement
    summary, the phase summary, a snooze reply) are never too late; nor is one queued
    late on purpose (QUEUED_LATE)."""
    phases = {p.name: p for p in plan.phases}
    windows = windows_named(connection, (c.occasion for c in claimed if c.email == HEADS_UP_EMAIL))

    def too_late_at(c: _Claimed) -> datetime | None:
        """The instant the row is too late from, or None: the plan's (the calendar's),
        moved by what the registry and the row itself know."""
        planned = too_late_by_plan(plan, c.email, c.phase, c.occasion)
        phase = phases.get(c.phase)
        if c.email == "reminder" and phase is not None and phase.deadline is not None:
            found = standing.get(_standing_key(c))
            return day_start(found.deadline) if found and found.deadline else planned
        # A heads-up says the time its context holds: too late from then, or from the
        # start of what it announces, whichever comes first.
        if c.email == HEADS_UP_EMAIL:
            window = windows.get(c.occasion)
            starts = ahead_until(window) if window is not None else planned
            return _first(starts, _time_in(c.context, "starts_at"))
        if c.email == ELV_HEADS_UP_EMAIL:
            return _first(planned, _time_in(c.context, "enrolled_on"))
        if c.email == INVITATION_EMAIL:
            return _time_in(c.context, "expires_at")
        return planned

    late = _invitations_settled(connection, claimed)
    for c in claimed:
        if c.context.get(QUEUED_LATE):
            continue
        at = too_late_at(c)
        if at is not None and too_late(at, now):
            late.add(c.id)
    return late


def _invitations_settled(connection: Connection, claimed: list[_Claimed]) -> set[int]:
    """The claimed invitation emails whose invitation (``invitation:<id>``, its
    occasion) the registry no longer has pending: accepted (the member is back, recorded
    or not) or expired before its email went. One query for the batch."""
    invitations = {}
    for c in claimed:
        prefix, _, number = c.occasion.partition(":")
        if c.email == INVITATION_EMAIL and prefix == "invitation" and number.isdigit():
            invitations[c.id] = int(number)
    if not invitations:
        return set()
    table = OrgInvitation.__table__
    # Accepted on the registry's site (the member is back) is settled before any run of
    # ours records it so (``orgs invitations``, the org's next enforcement or reinvite).
    settled = set(
        connection.scalars(
            select(table.c.id).where(
                table.c.id.in_(sorted(set(invitations.values()))),
                or_(table.c.state != "pending", member_again()),
            )
        )
    )
    return {row for row, invitation in invitations.items() if invitation in settled}


def _first(*moments: datetime | None) -> datetime | None:
    return min((m for m in moments if m is not None), default=None)


def _time_in(context: Mapping[str, Any], key: str) -> datetime | None:
    """The instant a context's ``key`` holds (naive UTC): a time as it is, a day from
    its start; None when missing or unreadable."""
    try:
        return naive_utc(datetime.fromisoformat(str(context[key])))
    except (KeyError, TypeError, ValueError):
        return None


def _rolled_back(connection: Connection, phase: Phase) -> bool:
    """The phase's last apply or succeeded rollback run, by start and then by the order
    runs were recorded in (``seq``: an apply and its rollback can start at the same
    instant), is a rollback. An apply counts whatever its outcome: one again after the
    rollback that was stopped, killed or failed half way required accounts and revoked
    their tokens all the same, and its emails must not say the step was rolled back
    since. A rollback counts once it has released every account (succeeded): one that
    stopped or failed half way is to be run again."""
    runs = PlanRun.__table__.c
    last = connection.execute(
        select(runs.mode)
        .where(
            and_(
                runs.step == phase_step(phase.name),
                or_(
                    runs.mode == "apply",
                    and_(runs.mode == "rollback", runs.state == "succeeded"),
                ),
            )
        )
        .order_by(runs.started_at.desc(), runs.seq.desc())
        .limit(1)
    ).scalar()
    return last == "rollback"


def _last_sent(
    connection: Connection, plan: Plan, claimed: list[_Claimed]
) -> dict[tuple[int, str], list[tuple[str, date]]]:
    """The phase and day (_run_day) of each send of each (account, email) with a repeat
    window."""
    windowed = [c for c in claimed if c.email in plan.notifications.repeat_days]
    if not windowed:
        return {}
    rows = connection.execute(
        select(
            NOTIFICATIONS.c.account_id,
            NOTIFICATIONS.c.email,
            NOTIFICATIONS.c.phase,
            NOTIFICATIONS.c.sent_at,
            NOTIFICATIONS.c.context,
        ).where(
            and_(
                NOTIFICATIONS.c.account_id.in_(sorted({c.account_id for c in windowed})),
                NOTIFICATIONS.c.email.in_(sorted({c.email for c in windowed})),
                NOTIFICATIONS.c.state == "sent",
                NOTIFICATIONS.c.sent_at.is_not(None),
            )
        )
    ).all()
    days: dict[tuple[int, str], list[tuple[str, date]]] = {}
    for account_id, email, phase, sent_at, context in rows:
        sent_on = run_day(context or {}, sent_at.date())
        days.setdefault((account_id, email), []).append((phase, sent_on))
    return days


def _too_soon(claimed: _Claimed, on: date, days: int, previous: list[tuple[str, date]]) -> bool:
    """Inside the repeat window: another phase's email of this kind went fewer than
    ``days`` days before (two campaigns' reminders in one week), or this phase's went
    the same day (reminders caught up together). The phase's own schedule is the plan's
    choice: GitHub's 7- and 1-day reminders, 6 days apart, both go. (Emails of no phase,
    such as two brown-outs' heads-ups, keep the window between them.)"""
    return any(
        sent_on == on if phase and phase == claimed.phase else abs((on - sent_on).days) < days
        for phase, sent_on in previous
    )


@dataclass
class _Outcome:
    id: int
    state: str
    reason: str | None = None
    message_id: str | None = None
    unavailable: bool = False  # failed: the provider took nothing (SenderUnavailable)


def _phase_of(plan: Plan, name: str | None) -> Phase | None:
    """The plan's phase of that name, if it has one (an email of no phase, or of a phase
    taken out of the plan since it was queued: None)."""
    return next((p for p in plan.phases if p.name == name), None)


def _ends_unsent(
    plan: Plan,
    claimed: _Claimed,
    recipient: Recipient | None,
    suppressed: Mapping[str, str],
    standing: Mapping[tuple[str, str, int, str], _Standing] | None,
    late: bool,
    enforced: str | None = None,
) -> _Outcome | Recipient:
    """Why the row ends here, whatever else its batch holds: failed (no such email) or
    skipped (its account deleted, an unverified or a suppressed address, already
    compliant, too late: ``late``, :func:`_too_late`'s, already enforced: ``enforced``,
    :func:`_enforced`'s), the first that applies; else its recipient as its email
    sees it (its standing applied). What :func:`_prepare` judges each claimed row by
    before the repeat window and rendering, and what the send's preview counts by
    (:func:`skips_waiting`): one judgement, so the preview tells what the send does."""
    definition = EMAILS.get(claimed.email)
    if definition is None:
        return _Outcome(claimed.id, "failed", f"no email named {quoted(claimed.email)}")
    if recipient is None:
        # Deleted by the registry since it was queued: there is no one to send it to,
        # and retrying would not bring the account back.
        return _Outcome(claimed.id, "skipped", ACCOUNT_DELETED)
    found = (standing or {}).get(_standing_key(claimed))
    if found is not None:
        recipient = found.apply(recipient)
    if not recipient.verified:
        return _Outcome(claimed.id, "skipped", UNVERIFIED)
    why_suppressed = suppressed.get(normal_address(recipient.address))
    if why_suppressed is not None:
        return _Outcome(claimed.id, "skipped", why_suppressed)
    if recipient.compliant and skips_compliant(claimed.email, _phase_of(plan, claimed.phase)):
        return _Outcome(claimed.id, "skipped", COMPLIANT)
    if late:
        return _Outcome(claimed.id, "skipped", TOO_LATE)
    if enforced:
        return _Outcome(claimed.id, "skipped", enforced)
    return recipient


def _enforced(connection: Connection, claimed: list[_Claimed]) -> dict[int, str]:
    """The claimed warnings of a phase (its notice, a reminder) whose account the
    phase's enforcement has flagged (``phase_requirements``) since they were queued: an
    early enforcement (``phase enforce --early``) between the queue and the send, a
    failure retried after it. "In 3 days you will be signed out", after the enforcement
    notice, to one signed out already: skipped, ``already enforced``, as the queue skips
    them (rollout.notify.queue._skip_reason). So are the heads-ups of a brown-out or of
    ELV (LOGIN_HEADS_UPS) to an account the registry requires 2FA of since (any
    phase's enforcement): "you will just be asked for the code at login" to one that
    must set 2FA up to sign in at all; and those to an account enrolled in ELV since
    (the opt-in trial, an early ``elv enroll-all``), as the queue leaves it out
    (queue.audience): "every login will need a code" to one that has needed it at
    every login already, ``already in ELV``. One query for the batch of each; a
    rolled-back phase requires nothing of its accounts (its rows are gone), and its
    warnings go. {row id: the skip reason}."""
    found: dict[int, str] = {}
    heads_ups = {c.id: c.account_id for c in claimed if c.email in LOGIN_HEADS_UPS}
    if heads_ups:
        standing = dict(
            connection.execute(
                select(
                    ACCOUNTS.c.id,
                    case(
                        (ACCOUNTS.c.tfa_required_at.is_not(None), ENFORCED),
                        (ACCOUNTS.c.elv_enrolled_at.is_not(None), IN_ELV),
                    ),
                ).where(
                    ACCOUNTS.c.id.in_(sorted(set(heads_ups.values()))),
                    or_(
                        ACCOUNTS.c.tfa_required_at.is_not(None),
                        ACCOUNTS.c.elv_enrolled_at.is_not(None),
                    ),
                )
            ).all()
        )
        found |= {
            row: standing[account_id]
            for row, account_id in heads_ups.items()
            if account_id in standing
        }
    wanted = {(c.phase, c.account_id): c.id for c in claimed if c.email in WARNINGS and c.phase}
    if not wanted:
        return found
    requirements = PhaseRequirement.__table__
    rows = connection.execute(
        select(requirements.c.phase, requirements.c.account_id).where(
            requirements.c.account_id.in_(sorted({a for _, a in wanted})),
            requirements.c.phase.in_(sorted({p for p, _ in wanted})),
        )
    ).all()
    return found | {wanted[key]: ENFORCED for key in map(tuple, rows) if key in wanted}


# The skips of a waiting email the send's preview counts (:func:`skips_waiting`): those
# judged by the day or the registry at the send, which the queue could not foresee.
PREVIEWED_SKIPS = (TOO_LATE, ENFORCED, IN_ELV)


def skips_waiting(
    registry: Registry,
    plan: Plan,
    *,
    include_failed: bool = False,
    clock: Callable[[], datetime] = utc_now,
) -> Counter[tuple[str, str]]:
    """By (skip reason, email kind), the emails waiting to be sent (queued or left in
    flight; failed too with ``include_failed``, as ``retry_failed`` queues them again
    first) that a send started now would skip as too late or as already enforced:
    judged as the drain judges each row it claims (:func:`_too_late`, :func:`_enforced`,
    then :func:`_ends_unsent`), so one it would skip for its address or as compliant
    first is not counted, and one both too late and enforced counts once, as too late.
    ``notify send``'s preview: it announced every waiting email as to be sent. Reads
    only, FILE_BATCH rows at a time."""
    states = ["queued", "sending", *(["failed"] if include_failed else [])]
    c = NOTIFICATIONS.c
    now = clock()
    found: Counter[tuple[str, str]] = Counter()
    after = 0
    with registry.engine.connect() as connection:
        while True:
            rows = connection.execute(
                select(c.id, c.account_id, c.email, c.phase, c.occasion, c.context)
                .where(c.state.in_(states), c.id > after)
                .order_by(c.id)
                .limit(FILE_BATCH)
            ).all()
            if not rows:
                return found
            batch = [_Claimed(*row[:5], context=row.context or {}) for row in rows]
            after = batch[-1].id
            standing = _standing(connection, plan, batch, now)
            late = _too_late(connection, plan, batch, standing, now)
            enforced = _enforced(connection, batch)
            judged = [w for w in batch if w.id in late or w.id in enforced]
            if not judged:
                continue
            recipients = _recipients(connection, judged)
            suppressed = suppression_reasons(connection, (r.address for r in recipients.values()))
            for w in judged:
                ended = _ends_unsent(
                    plan,
                    w,
                    recipients.get(w.account_id),
                    suppressed,
                    standing,
                    late=w.id in late,
                    enforced=enforced.get(w.id),
                )
                if isinstance(ended, _Outcome) and ended.reason in PREVIEWED_SKIPS:
                    found[(ended.reason, w.email)] += 1


def _prepare(
    plan: Plan,
    claimed: _Claimed,
    recipient: Recipient | None,
    packages: Mapping[tuple[str, int], tuple[str, ...]],
    suppressed: Mapping[str, str],
    last_sent: dict[tuple[int, str], list[tuple[str, date]]],
    now: datetime,
    standing: Mapping[tuple[str, str, int, str], _Standing] | None = None,
    late: bool = False,
    enforced: str | None = None,
) -> _Outcome | Message:
    """A message to send, or why this row ends here (skipped, or failed to render).
    ``late``: its last day has passed (:func:`_too_late`); ``enforced``: a warning of a
    phase that has flagged its account since (:func:`_enforced`)."""
    ended = _ends_unsent(plan, claimed, recipient, suppressed, standing, late, enforced)
    if isinstance(ended, _Outcome):
        return ended
    recipient, definition = ended, EMAILS[claimed.email]
    days = plan.notifications.repeat_days.get(claimed.email)
    # Judged on the days the emails' runs were for: a back-filled run's day is not now.
    on = run_day(claimed.context, now.date())
    previous = last_sent.get((claimed.account_id, claimed.email), [])
    if days and _too_soon(claimed, on, days, previous):
        return _Outcome(claimed.id, "skipped", REPEAT)
    try:
        if definition.needs_packages:
            cohort = plan.phase(claimed.phase).cohort
            recipient = replace(
                recipient, packages=packages.get((cohort, recipient.account_id), ())
            )
        rendered = render(
            definition, recipient, {**claimed.context, SENT_ON: now.date().isoformat()}, plan
        )
    except Exception as error:  # a template or context bug fails this message, not the run
        return _Outcome(claimed.id, "failed", f"render: {type(error).__name__}: {error}")
    if days:
        # Two emails of one kind in one batch (a caught-up day queues the reminders it
        # missed at once): the second is judged against the first, not let through.
        last_sent.setdefault((claimed.account_id, claimed.email), []).append((claimed.phase, on))
    return Message(
        claimed.id,
        claimed.email,
        recipient.address,
        recipient.username,
        rendered.subject,
        rendered.text,
        rendered.html,
    )


# What ``notifications.message_id`` holds.
_MESSAGE_ID_LIMIT = NOTIFICATIONS.c.message_id.type.length


def _kept_message_id(outbox_id: int, message_id: str | None) -> str | None:
    """The message id to record for a sent email: NULL (unknown, as when SendGrid's
    answer had none) for an empty one, and for one the column cannot hold (past its
    length, or with a character no printable ASCII: PostgreSQL refused it, the record
    failed after the send, and the next drain sent the email again). Events then count
    for the email by its outbox id alone (sql/intermediate/int_notification_delivery.sql)."""
    if not message_id:
        return None
    if (
        len(message_id) > _MESSAGE_ID_LIMIT
        or not message_id.isprintable()
        or not (message_id.isascii())
    ):
        log.warning(
            "outbox %d: sent, but its message id (%s) cannot be kept: %r; recorded as unknown",
            outbox_id,
            counted(len(message_id), "character"),
            message_id[:80],
        )
        return None
    return message_id


# The state of an outcome whose row this drainer no longer held when it was to send it
# (another drainer took it over: _Hold): not sent, nothing recorded.
OVERTAKEN = "overtaken"


def _deliver(
    sender: Sender, message: Message, keeps: Callable[[int], bool] | None = None
) -> _Outcome:
    if keeps is not None and not keeps(message.outbox_id):
        return _Outcome(message.outbox_id, OVERTAKEN)
    try:
        # Each attempt after the first looks again (its lease may run out during a wait).
        with attempts_held_by(lambda: keeps is None or keeps(message.outbox_id)):
            message_id = sender.send(message)
    except SendAbandoned:
        return _Outcome(message.outbox_id, OVERTAKEN)
    except DeliveryFailed as failure:
        if not failure.permanent and _is_misconfiguration(failure):
            raise
        # A NUL (from SendGrid's error body) is no text PostgreSQL keeps: the record
        # failed, and the batch stayed in flight to be sent again.
        reason = failure.reason.replace("\x00", "\\x00")[:2000]
        return _Outcome(
            message.outbox_id,
            "failed",
            reason,
            unavailable=isinstance(failure, SenderUnavailable),
        )
    return _Outcome(
        message.outbox_id, "sent", message_id=_kept_message_id(message.outbox_id, message_id)
    )


def _remove_leftovers(sender: Sender) -> None:
    """The file outbox's temporary files a drain killed mid-write left (under the notify
    lock, before any worker starts: no write of this run is under way)."""
    from rollout.notify.senders import FileSender

    if isinstance(sender, FileSender):
        sender.remove_leftovers()


def _is_misconfiguration(failure: DeliveryFailed) -> bool:
    from rollout.notify.senders import SenderMisconfigured

    return isinstance(failure, SenderMisconfigured)


def _held_rows(connection: Connection, held: Mapping[int, str]) -> tuple[set[int], dict[int, str]]:
    """Of the rows of ``held`` ({id: its claim's token}), those still this drainer's
    ('sending' under the token its claim drew), locked until the transaction ends
    (SQLite: begin_writing's write lock); and the state of each of the others."""
    c = NOTIFICATIONS.c
    query = select(c.id, c.state, c.claim_token).where(c.id.in_(sorted(held)))
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()
    mine, others = set(), {}
    for row_id, state, token in connection.execute(query):
        if state == "sending" and token is not None and token == held[row_id]:
            mine.add(row_id)
        else:
            others[row_id] = state
    return mine, others


def _renew(engine: Engine, held: Mapping[int, str], now: datetime, lease: timedelta) -> set[int]:
    """Extend to ``now`` + ``lease`` the lease on the rows of ``held`` this drainer still
    holds (checked and extended in one transaction: a claim taking one over cannot come
    in between); returns them. One whose lease ran out but that nobody took over is
    still its own (the claim that takes a row over draws another token)."""
    if not held:
        return set()
    with begin_writing(engine) as connection:
        mine, _ = _held_rows(connection, held)
        if mine:
            connection.execute(
                update(NOTIFICATIONS)
                .where(NOTIFICATIONS.c.id.in_(sorted(mine)))
                .values(lease_expires_at=now + lease)
            )
    return mine


# A sent email's row that another drainer took over may still be recorded sent while it
# is in one of these states: it went, and recorded so it is not sent (or, failed or put
# back, retried) again; one recorded sent or skipped is left as it is.
_OVERTAKEN_SENT_RECORDED_FROM = ("sending", "queued", "failed")


def _record(
    engine: Engine,
    outcomes: Iterable[_Outcome],
    now: datetime,
    sent_at: datetime | None = None,
    held: Mapping[int, str] | None = None,
) -> set[int]:
    """Write what became of each row, at ``now``; a sent one is dated ``sent_at`` (when
    its message was made: its batch's ``prepared_at``), or ``now``. Returns the ids
    written.

    ``held`` ({id: its claim's token}): only the rows this drainer still holds are
    written; one another drainer took over (this one outlived its lease) is that one's
    to record, but for a send that went: it is recorded sent unless already recorded
    sent or skipped, so that it is not sent again. Without ``held``, every row in
    flight is written (whoever holds it)."""
    outcomes = list(outcomes)
    if not outcomes:
        return set()
    with begin_writing(engine) as connection:
        if held is None:
            written = {o.id for o in outcomes}
        else:
            mine, others = _held_rows(connection, {o.id: held[o.id] for o in outcomes})
            written = mine | {
                o.id
                for o in outcomes
                if o.state == "sent" and others.get(o.id) in _OVERTAKEN_SENT_RECORDED_FROM
            }
        chosen = [o for o in outcomes if o.id in written]
        _write_outcomes(connection, chosen, now, sent_at, checked=held is not None)
    return written


def _write_outcomes(
    connection: Connection,
    outcomes: list[_Outcome],
    now: datetime,
    sent_at: datetime | None,
    *,
    checked: bool,
) -> None:
    """``checked``: the rows were chosen under this transaction's lock (_record); else
    only rows in flight are written."""
    rows = [
        {
            "row_id": o.id,
            "new_state": o.state,
            "new_reason": o.reason if o.state == "skipped" else None,
            "new_error": o.reason if o.state == "failed" else None,
            "new_message_id": o.message_id,
            "new_sent_at": (sent_at or now) if o.state == "sent" else None,
            "now": now,
        }
        for o in outcomes
    ]
    if not rows:
        return
    # One withdrawn while in flight (rollout.notify.withdraw) that did not go ends
    # skipped with the withdrawal's reason: a failed one would be retried. It keeps its
    # failure's reason: one that may have gone out (MAY_HAVE_GONE) is recorded sent
    # once SendGrid's events show it went (rollout.notify.delivery).
    c = NOTIFICATIONS.c
    stays_withdrawn = and_(marked_withdrawn(), bindparam("new_state") != "sent")
    recordable = literal(True) if checked else c.state == "sending"
    connection.execute(
        update(NOTIFICATIONS)
        .where(and_(c.id == bindparam("row_id"), recordable))
        .values(
            state=case((stays_withdrawn, "skipped"), else_=bindparam("new_state")),
            skip_reason=case((stays_withdrawn, c.skip_reason), else_=bindparam("new_reason")),
            error=bindparam("new_error"),
            message_id=bindparam("new_message_id"),
            sent_at=bindparam("new_sent_at"),
            updated_at=bindparam("now"),
            lease_expires_at=None,
            claim_token=None,
        ),
        rows,
    )


def _unsent() -> Any:
    """SQL: the state a claimed row goes back to unsent: queued, or skipped if it was
    withdrawn while held."""
    return case((marked_withdrawn(), "skipped"), else_="queued")


def _update_held(
    engine: Engine, ids: list[int], held: Mapping[int, str] | None, **values: Any
) -> None:
    """Update the rows of ``ids`` in flight; with ``held`` ({id: its claim's token}),
    only those this drainer still holds (not taken over by another: see _Claimed)."""
    c = NOTIFICATIONS.c
    if not ids:
        return
    with begin_writing(engine) as connection:
        if held is None:
            connection.execute(
                update(NOTIFICATIONS)
                .where(and_(c.id.in_(ids), c.state == "sending"))
                .values(**values)
            )
            return
        connection.execute(
            update(NOTIFICATIONS)
            .where(
                c.id == bindparam("row_id"),
                c.claim_token == bindparam("row_claim"),
                c.state == "sending",
            )
            .values(**values),
            [{"row_id": i, "row_claim": held[i]} for i in ids],
        )


def _release(engine: Engine, ids: list[int], held: Mapping[int, str] | None = None) -> None:
    """Put claimed rows back, unsent (the sender is misconfigured: nothing went out)."""
    _update_held(
        engine,
        ids,
        held,
        state=_unsent(),
        attempts=NOTIFICATIONS.c.attempts - 1,
        lease_expires_at=None,
        claim_token=None,
    )


def _cut_short() -> Any:
    """SQL: the error a row put back mid-send gets (CUT_SHORT), withdrawn meanwhile too
    (it goes to skipped, its send maybe gone out: rollout.notify.delivery records it sent
    if SendGrid's events show it went)."""
    return literal(CUT_SHORT)


def _put_back(
    engine: Engine, ids: list[int], now: datetime, held: Mapping[int, str] | None = None
) -> None:
    """Queue claimed rows again whose sends a stop cut short: they may have gone out, so
    the attempt counts, and the row says so (CUT_SHORT): the next drain sends them again,
    the only duplicates, and counts them as resent."""
    _update_held(
        engine,
        ids,
        held,
        state=_unsent(),
        error=_cut_short(),
        updated_at=now,
        lease_expires_at=None,
        claim_token=None,
    )


def _requeue_in_flight(
    engine: Engine, now: datetime, *, cut_short: bool = False, unleased: bool = False
) -> int:
    """Queue again every row in flight. Only while holding the run lock with no drain
    process left: the rows are then those of a drain (or worker) that died, and it may or
    may not have sent them. ``cut_short``: put back by this run's stop, so marked for the
    next run to count as resent (CUT_SHORT); else counted by the caller, now.
    ``unleased``: only the rows held without a lease, which no drainer of this code
    holds (each claim takes one): a drain of a rollout before leases left them."""
    # A withdrawn one goes to skipped, marked as maybe gone (rollout.notify.delivery).
    marked = {
        "error": _cut_short()
        if cut_short
        else case((marked_withdrawn(), literal(DIED_HOLDING)), else_=NOTIFICATIONS.c.error)
    }
    held = NOTIFICATIONS.c.state == "sending"
    if unleased:
        held = and_(held, NOTIFICATIONS.c.lease_expires_at.is_(None))
    with begin_writing(engine) as connection:
        return connection.execute(
            update(NOTIFICATIONS)
            .where(held)
            .values(
                state=_unsent(), updated_at=now, lease_expires_at=None, claim_token=None, **marked
            )
        ).rowcount


@dataclass
class _Batch:
    """Claimed rows: those that end here (skips, render failures) and those to send."""

    outcomes: list[_Outcome]
    messages: list[Message]
    # When its messages were made: what a notice's own deadline counts from, so the
    # sent_at recorded is that moment too (recorded after midnight UTC, the deadline
    # the registry enforced was a day later than the one the notice gave).
    prepared_at: datetime
    # Of its rows, those a stop had put back with their send maybe gone out (CUT_SHORT).
    cut_short: int = 0
    # {id: its claim's token} of its rows (_Claimed), and when they were claimed (their
    # lease runs from then).
    held: dict[int, str] = field(default_factory=dict)
    claimed_at: datetime | None = None

    @property
    def ids(self) -> list[int]:
        return [o.id for o in self.outcomes] + [m.outbox_id for m in self.messages]


def _next_batch(
    engine: Engine,
    plan: Plan,
    size: int,
    clock: Callable[[], datetime],
    sender: str,
    lease: timedelta = DEFAULT_LEASE,
) -> _Batch | None:
    """Claim up to ``size`` queued rows and decide, for each, to skip it or its message."""
    claimed_at = clock()
    claimed = _claim(engine, size, claimed_at, sender, lease) if size > 0 else []
    if not claimed:
        return None
    cut_short = sum(c.error == CUT_SHORT for c in claimed)
    now = clock()
    with engine.connect() as connection:
        recipients = _recipients(connection, claimed)
        packages = _packages(connection, plan, claimed)
        suppressed = suppression_reasons(connection, (r.address for r in recipients.values()))
        last_sent = _last_sent(connection, plan, claimed)
        standing = _standing(connection, plan, claimed, now)
        earlier = _required_earlier(connection, claimed)
        sooner = _required_sooner(connection, plan, claimed, standing, now)
        late = _too_late(connection, plan, claimed, standing, now)
        enforced = _enforced(connection, claimed)
    prepared = [
        _prepare(
            plan,
            c,
            _as_sooner(
                _as_told(recipients.get(c.account_id), (c.phase, c.account_id) in earlier),
                sooner.get((c.phase, c.account_id)),
            ),
            packages,
            suppressed,
            last_sent,
            now,
            standing,
            c.id in late,
            enforced.get(c.id),
        )
        for c in claimed
    ]
    return _Batch(
        [p for p in prepared if isinstance(p, _Outcome)],
        [p for p in prepared if isinstance(p, Message)],
        now,
        cut_short,
        {c.id: c.claim for c in claimed if c.claim is not None},
        claimed_at,
    )


# A batch's lease is renewed once this share of it has passed since it was claimed or
# last renewed: by the heartbeat while its sends are under way, and before a send, which
# then starts with at least 90% of the lease ahead (SendGrid's one attempt, with its
# wait, takes 50 s of the 300 when its server answers in time, the margin 15 s more).
RENEW_AFTER = 0.1


def send_hold(sender: Sender) -> timedelta:
    """How long a row must stay this drainer's past the start of an attempt to send it:
    the longest one attempt of the sender may take (with the wait before the next), and
    LEASE_MARGIN."""
    seconds = float(getattr(sender, "longest_attempt", 0.0) or 0.0)
    return timedelta(seconds=max(seconds, 0.0)) + LEASE_MARGIN


def lease_for(sender: Sender, lease: timedelta = DEFAULT_LEASE) -> timedelta:
    """The lease a drainer sending through ``sender`` holds its rows for: ``lease``, or
    longer, in whole seconds, when an attempt started with the least of it ahead (1 -
    RENEW_AFTER, just before a renewal is due) could outlast it: another drainer would
    take the row over while its request is under way (or one of its batch sent and not
    yet recorded) and send it a second time. (A request slower than that, its server
    answering a byte at a time, is covered by the heartbeat: _Heartbeat; this bound
    holds when a renewal cannot be made.) A longer lease only delays the take-over of a
    dead drainer's rows."""
    shortest = send_hold(sender) / (1 - RENEW_AFTER)
    if lease >= shortest:
        return lease
    return timedelta(seconds=math.ceil(shortest.total_seconds()))


class _Hold:
    """The lease on a batch's rows, kept while they are sent: renewed by a heartbeat
    (:class:`_Heartbeat`) every tenth of it while the batch's requests are under way,
    however long one takes (SendGrid's client bounds each read of an answer, not the
    request: a server that answers a byte at a time, a slow TLS handshake or DNS); and
    before each attempt of a send, if a tenth of it has passed, or if less of it is
    ahead than the attempt may take and a margin (``send_hold``: a process paused or a
    heartbeat that could not reach the registry). Each renewal checks and extends at
    once (_renew); a row this drainer no longer holds (it outlived its lease, paused,
    and another drainer took the row over) is not sent, nor tried again: looked at before
    the send, before each attempt after the first, and once an attempt's connection is
    made, just before its request is written (rollout.notify.senders._refuse_unheld). So
    a row is taken over only while no request of it is under way, but for one whose
    process was paused mid-request past the lease (its heartbeat paused too). Shared by
    the batch's send threads and its heartbeat."""

    def __init__(
        self,
        engine: Engine,
        batch: _Batch,
        clock: Callable[[], datetime],
        lease: timedelta,
        send_hold: timedelta = LEASE_MARGIN,
    ) -> None:
        self._engine, self._clock, self._lease = engine, clock, lease
        self._send_hold = send_hold
        self._held = dict(batch.held)
        self._renewed_at = batch.claimed_at or clock()
        self._lock = threading.Lock()

    def keeps(self, outbox_id: int) -> bool:
        """Whether this drainer still holds the row, its lease renewed if due."""
        with self._lock:
            now = self._clock()
            ahead = self._renewed_at + self._lease - now
            due = now - self._renewed_at >= self._lease * RENEW_AFTER
            if self._held and (due or ahead < self._send_hold):
                self._renew(now)
            return outbox_id in self._held

    def renew(self) -> None:
        """Renew the lease now (the heartbeat), on the rows this drainer still holds."""
        with self._lock:
            if self._held:
                self._renew(self._clock())

    def _renew(self, now: datetime) -> None:
        kept = _renew(self._engine, self._held, now, self._lease)
        for lost in set(self._held) - kept:
            del self._held[lost]
        self._renewed_at = now


class _Heartbeat:
    """A daemon thread that renews the lease on the batch in flight (:meth:`keeping`)
    every ``every`` seconds, by the monotonic clock (the drain's clock may be a test's),
    from the start of its sends until they are over. One per drain loop, idle between
    batches: a batch quicker than ``every`` (most are) costs it nothing. The batch is
    recorded or put back after :meth:`keeping` ends; a renewal still under way then
    changes nothing (a recorded or put back row is no longer 'sending' under the claim's
    token). A daemon: it never keeps a stopped process alive. A renewal that fails (the
    registry unreachable a moment) is logged and tried again at the next beat; the
    checks before each attempt (_Hold.keeps) still hold the batch to its lease."""

    def __init__(self, every: float) -> None:
        self._every = every
        self._lock = threading.Lock()
        self._hold: _Hold | None = None
        self._due = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def keeping(self, hold: _Hold) -> Iterator[None]:
        with self._lock:
            self._hold, self._due = hold, time.monotonic() + self._every
        try:
            yield
        finally:
            with self._lock:
                self._hold = None

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=IN_FLIGHT_GRACE)

    def _beat(self) -> None:
        wait = self._every
        while not self._done.wait(wait):
            with self._lock:
                hold, wait = self._hold, self._due - time.monotonic()
                if hold is None or wait > 0:
                    wait = self._every if hold is None else wait
                    continue
                self._due, wait = time.monotonic() + self._every, self._every
            try:
                hold.renew()
            except (SQLAlchemyError, RegistryURLRefused, RegistryStatementCancelled) as error:
                log.warning(
                    "the lease on a batch in flight could not be renewed (tried again in "
                    "%.1fs): %s",
                    self._every,
                    error,
                )


def _stopped(report: DrainReport) -> str:
    """A stopped drain's line: what went out, and what it put back, saying that sends
    it cut short may have gone out (the next run sends them again, and counts them)."""
    said = f"stopped: {report.sent} sent, {report.put_back} put back"
    if report.put_back:
        said += " (sends cut short may have gone out: the next run sends them again)"
    return said


def _required_earlier(connection: Connection, claimed: list[_Claimed]) -> set[tuple[str, int]]:
    """(phase, account) of the batch's enforcement emails whose account another phase
    had flagged before this one required it: it was flagged and signed out then, and
    "you were signed out" now would be false."""
    wanted = {(c.phase, c.account_id) for c in claimed if c.email == ENFORCEMENT_EMAIL}
    if not wanted:
        return set()
    requirements = PhaseRequirement.__table__
    rows = connection.execute(
        select(requirements.c.phase, requirements.c.account_id)
        .join(ACCOUNTS, ACCOUNTS.c.id == requirements.c.account_id)
        .where(
            requirements.c.account_id.in_(sorted({a for _, a in wanted})),
            requirements.c.phase.in_(sorted({p for p, _ in wanted})),
            ACCOUNTS.c.tfa_required_at < requirements.c.required_at,
        )
    ).all()
    return {(phase, account_id) for phase, account_id in rows} & wanted


def _as_told(recipient: Recipient | None, required_earlier: bool) -> Recipient | None:
    return (
        replace(recipient, required_earlier=True)
        if recipient is not None and required_earlier
        else recipient
    )


def _overtaken(unrecorded: list[_Outcome], unsent: int) -> int:
    """How many rows of a batch another drainer took over while this one held them (it
    outlived its lease): ``unsent`` were not sent (_Hold), ``unrecorded`` ended here but
    were left to the other to record (_record). A send among them went out, and the other
    drainer may send it again: said in the log, with its message id."""
    for o in unrecorded:
        if o.state == "sent":
            log.warning(
                "outbox %d: sent (message id %s) after another drainer took it over, its "
                "lease having run out: it may go out twice",
                o.id,
                o.message_id,
            )
    overtaken = len(unrecorded) + unsent
    if overtaken:
        log.warning(
            "%s %s taken over by another drainer while this one held them (their "
            "lease ran out: a slow or paused drainer); %d of them not sent by this one",
            counted(overtaken, "email"),
            by_count(overtaken, "was", "were"),
            unsent,
        )
    return overtaken


def _count(report: DrainReport, outcomes: Iterable[_Outcome]) -> None:
    for o in outcomes:
        if o.state == "sent":
            report.sent += 1
        elif o.state == "failed":
            report.failed += 1
            report.failures.append((o.id, o.reason or ""))
        else:
            report.skipped[o.reason or ""] += 1


class _InlineSends:
    """Sends in the calling thread, at once: the file outbox (FILE_BATCH)."""

    def __init__(self, sender: Sender) -> None:
        self._sender = sender

    def submit(self, message: Message, keeps: Callable[[int], bool]) -> Future[_Outcome]:
        future: Future[_Outcome] = Future()
        try:
            future.set_result(_deliver(self._sender, message, keeps))
        except Exception as error:  # as _SendThreads: the drain decides
            future.set_exception(error)
        return future

    def close(self) -> None:
        pass


class _SendThreads:
    """``count`` daemon threads that send. Not a ThreadPoolExecutor: its threads are
    joined when the process exits, so a send stuck on a slow server would keep a stopped
    process alive; a stop has put such a send's row back already."""

    def __init__(self, sender: Sender, count: int) -> None:
        self._work: queue.SimpleQueue[
            tuple[Message, Callable[[int], bool], Future[_Outcome]] | None
        ]
        self._work = queue.SimpleQueue()
        self._count = count
        for n in range(count):
            threading.Thread(
                target=self._run, args=(sender,), name=f"send-{n}", daemon=True
            ).start()

    def submit(self, message: Message, keeps: Callable[[int], bool]) -> Future[_Outcome]:
        future: Future[_Outcome] = Future()
        self._work.put((message, keeps, future))
        return future

    def close(self) -> None:
        for _ in range(self._count):
            self._work.put(None)

    def _run(self, sender: Sender) -> None:
        while (item := self._work.get()) is not None:
            message, keeps, future = item
            try:
                future.set_result(_deliver(sender, message, keeps))
            except Exception as error:  # the drain decides (a misconfigured sender stops it)
                future.set_exception(error)


def _await_sends(futures: list[Future[_Outcome]], stop: StopRequest) -> None:
    """Wait for a batch's sends; once a stop is asked for, IN_FLIGHT_GRACE more at most."""
    waiting = set(futures)
    while waiting and not stop.is_set():
        _, waiting = wait(waiting, timeout=_POLL)
    wait(waiting, timeout=IN_FLIGHT_GRACE)


def _drain_loop(
    engine: Engine,
    plan: Plan,
    sender: Sender,
    *,
    concurrency: int,
    limit: int | None,
    clock: Callable[[], datetime],
    progress: Callable[[DrainReport], None] | None = None,
    stop: StopRequest | None = None,
    lease: timedelta = DEFAULT_LEASE,
    wait_for_leases: bool = False,
    before_batch: Callable[[], None] | None = None,
) -> DrainReport:
    """Claim, send and record batches until nothing is queued (or ``limit`` is reached,
    or a stop is asked for: then the batch in flight is recorded or put back). With
    ``wait_for_leases``, rows other drainers hold are waited for: recorded by them, or
    taken over once their lease runs out (a drainer that died). ``before_batch`` is
    called before each claim, and may ask ``stop`` (a shard whose run is gone).

    A batch is ``concurrency`` rows sent by as many threads; for the file outbox it is
    FILE_BATCH rows written one after the other in this thread (see drain)."""
    stop = stop or StopRequest()
    report = DrainReport(sender.name)
    held_for = lease_for(sender, lease)
    if held_for != lease:
        log.warning(
            "a lease of %ds is shorter than an attempt through %s may take (%ds, and a %ds "
            "margin, with a tenth of the lease gone before it is renewed): rows are held "
            "%ds at a time instead",
            lease.total_seconds(),
            sender.name,
            send_hold(sender).total_seconds() - LEASE_MARGIN.total_seconds(),
            LEASE_MARGIN.total_seconds(),
            held_for.total_seconds(),
        )
    lease = held_for
    claimed = 0
    inline = sender.name == FILE_SENDER
    batch_size = FILE_BATCH if inline else concurrency
    sends: _InlineSends | _SendThreads
    sends = _InlineSends(sender) if inline else _SendThreads(sender, concurrency)
    # The file outbox writes in this thread (nothing beats while it does: a write that
    # outlasts the lease is written again by the taker, replacing its own file).
    heartbeat = None if inline else _Heartbeat(lease.total_seconds() * RENEW_AFTER)
    retried_before = _retried(sender)
    outage = 0  # batches in a row nothing of which went, the provider unavailable
    try:
        while (limit is None or claimed < limit) and not stop.is_set():
            if before_batch is not None:
                before_batch()
                if stop.is_set():
                    break
            size = batch_size if limit is None else min(batch_size, limit - claimed)
            batch = _next_batch(engine, plan, size, clock, sender.name, lease)
            if batch is None:
                if wait_for_leases and _wait_for_leases(engine, clock, stop):
                    continue
                break
            claimed += len(batch.ids)
            report.resumed += batch.cut_short
            hold = _Hold(engine, batch, clock, lease, send_hold(sender))
            with heartbeat.keeping(hold) if heartbeat else contextlib.nullcontext():
                futures = [sends.submit(m, hold.keeps) for m in batch.messages]
                _await_sends(futures, stop)
            # Looked at once: a send may still finish while the lists are made.
            settled = {
                m.outbox_id: f for m, f in zip(batch.messages, futures, strict=True) if f.done()
            }
            ended = [f.result() for f in settled.values() if not f.exception()]
            finished = [o for o in ended if o.state != OVERTAKEN]
            refused = [(i, e) for i, f in settled.items() if (e := f.exception())]
            unsent = [m.outbox_id for m in batch.messages if m.outbox_id not in settled]  # a stop
            outcomes = [*batch.outcomes, *finished]
            recorded = _record(engine, outcomes, clock(), batch.prepared_at, batch.held)
            _count(report, [o for o in outcomes if o.id in recorded])
            report.overtaken += _overtaken(
                [o for o in outcomes if o.id not in recorded], len(ended) - len(finished)
            )
            if unsent:
                _put_back(engine, unsent, clock(), batch.held)
                report.put_back += len(unsent)
            if refused:
                _release(engine, [outbox_id for outbox_id, _ in refused], batch.held)
                error = refused[0][1]
                if isinstance(error, DeliveryFailed):  # misconfigured (see _deliver)
                    raise RolloutError(
                        f"{sender.name}: {error.reason}; nothing more was sent "
                        "(fix the settings and run again)"
                    ) from None
                raise error
            if any(o.unavailable for o in finished) and not any(
                o.state == "sent" for o in finished
            ):
                outage += 1
            elif finished:
                outage = 0
            if outage >= OUTAGE_BATCHES:
                reason = next(o.reason for o in reversed(finished) if o.unavailable)
                raise RolloutError(
                    f"{sender.name} is unavailable: {reason}; "
                    f"{counted(report.failed, 'email')} failed, "
                    "nothing more was sent: the rest stay queued for the next run (the "
                    "failed ones: `rollout notify send --apply --retry-failed`)"
                )
            if progress:
                progress(report)
    finally:
        sends.close()
        if heartbeat:
            heartbeat.close()
        report.retried = _retried(sender) - retried_before
    return report


# How often a drainer with nothing to claim looks again at the rows others hold.
LEASE_POLL_SECONDS = 1.0


def _wait_for_leases(engine: Engine, clock: Callable[[], datetime], stop: StopRequest) -> bool:
    """Wait while other drainers hold rows, until one is claimable again (recorded rows
    are not) or none is held; True when there may be rows to take over."""
    with engine.connect() as connection:
        earliest = connection.execute(
            select(func.min(NOTIFICATIONS.c.lease_expires_at)).where(_in_state("sending"))
        ).scalar()
    if earliest is None:
        return False  # none held (rows of a drain before leases: begin_shards requeued them)
    remaining = min(max((earliest - clock()).total_seconds(), 0.0), LEASE_POLL_SECONDS) + _POLL
    deadline = time.monotonic() + remaining
    while not stop.is_set() and time.monotonic() < deadline:
        time.sleep(_POLL)
    return not stop.is_set()


def _retried(sender: Sender) -> int:
    """Retries after 5xx/429 the sender has made (only SendGridSender retries)."""
    return int(getattr(sender, "retried_after_status", 0))


def _drain_worker(
    registry_url: str,
    plan: Plan,
    sender: Sender,
    concurrency: int,
    limit: int | None,
    parent_pid: int,
    results: Pipe,
) -> None:
    """One worker process of a drain: its own connections, the real clock. It stops as
    the parent does, when the parent says so (SIGTERM) or dies, and reports through
    ``results``: its DrainReport, or the error that ended it.

    The parent's Registry stays in the parent (an engine does not cross a process
    boundary): the worker is handed its URL and makes a Registry of its own."""
    stop = as_child(parent_pid)
    outcome: DrainReport | Exception
    try:
        with Registry(registry_url) as registry:
            outcome = _drain_loop(
                registry.engine,
                plan,
                sender,
                concurrency=concurrency,
                limit=limit,
                clock=utc_now,
                stop=stop,
            )
    except Exception as error:
        outcome = error
    with contextlib.suppress(OSError):  # the parent is gone: nobody left to tell
        results.send(_picklable(outcome))


def _picklable(outcome: DrainReport | Exception) -> DrainReport | Exception:
    """The outcome, or an error that says what it was when it cannot travel (an exception
    whose constructor takes other arguments than its message)."""
    try:
        pickle.loads(pickle.dumps(outcome))
    except Exception:
        return RolloutError(f"a drain worker failed: {type(outcome).__name__}: {outcome}")
    return outcome


@dataclass
class _Worker:
    process: BaseProcess
    results: Pipe
    outcome: DrainReport | Exception | None = None  # None: it died without a word
    reported: bool = False


def _start_workers(each: list[tuple[Any, ...]]) -> list[_Worker]:
    """One worker for each of ``each``, the arguments of its drain."""
    context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
    workers = []
    with hold_for_multiprocessing():
        for args in each:
            results, sink = context.Pipe(duplex=False)
            process = context.Process(
                target=_drain_worker,
                args=(*args, os.getpid(), sink),
                name="rollout-drain",
                daemon=True,
            )
            process.start()
            sink.close()
            workers.append(_Worker(process, results))
    return workers


def _gather(workers: list[_Worker], timeout: float) -> None:
    """Take the reports that come within ``timeout``: a worker reports just before it exits."""
    waiting = {w.results: w for w in workers if not w.reported}
    for ready in wait_for_pipes(list(waiting), timeout):
        worker = waiting[ready]  # type: ignore[index]
        with contextlib.suppress(EOFError):  # died without a word: None
            worker.outcome = ready.recv()  # type: ignore[union-attr]
        worker.reported = True


def _shares(limit: int | None, processes: int) -> list[int | None]:
    """Each worker's part of ``limit``: together exactly ``limit`` (rounded up, four
    workers sent 8 of a limit of 5), and no worker with nothing to do."""
    if limit is None:
        return [None] * processes
    base, extra = divmod(limit, processes)
    return [base + (index < extra) for index in range(min(processes, limit))]


def _drain_in_processes(
    registry_url: str,
    plan: Plan,
    sender: Sender,
    *,
    processes: int,
    concurrency: int,
    limit: int | None,
    stop: StopRequest,
    progress: Callable[[], None] | None,
    check: Callable[[], None] | None = None,
) -> list[DrainReport]:
    """Run the drain in ``processes`` workers and wait for them, looking at ``stop``; on
    a stop or an error, tell them to wind down, then kill what is left. No worker is left
    when this returns, however it returns. ``check`` is called every LOCK_CHECK_SECONDS
    (the run lock still held), and what it raises stops the workers likewise."""
    workers = _start_workers(
        [(registry_url, plan, sender, concurrency, share) for share in _shares(limit, processes)]
    )
    try:
        shown = checked = time.monotonic()
        while not stop.is_set() and not all(w.reported for w in workers):
            _gather(workers, 4 * _POLL)
            if check and time.monotonic() - checked >= LOCK_CHECK_SECONDS:
                check()
                checked = time.monotonic()
            if any(w.reported and not isinstance(w.outcome, DrainReport) for w in workers):
                break  # a worker failed: stop the others rather than drain on half-manned
            if progress and time.monotonic() - shown >= 0.5:
                progress()
                shown = time.monotonic()
    finally:
        for w in workers:
            if not w.reported:
                w.process.terminate()  # wind down: record or put back the batch in flight
        deadline = time.monotonic() + WORKER_GRACE
        while not all(w.reported for w in workers) and (left := deadline - time.monotonic()) > 0:
            _gather(workers, left)
        stop_processes([w.process for w in workers], grace=WORKER_GRACE / 2)
        for w in workers:
            w.results.close()
    for w in workers:
        if isinstance(w.outcome, Exception):
            raise w.outcome
    if not stop.is_set() and any(w.outcome is None for w in workers):
        codes = ", ".join(str(w.process.exitcode) for w in workers if w.outcome is None)
        raise RolloutError(f"a drain worker died (exit code {codes}); run again to finish")
    return [w.outcome for w in workers if isinstance(w.outcome, DrainReport)]


def _merge(reports: Iterable[DrainReport], into: DrainReport) -> DrainReport:
    for r in reports:
        into.sent += r.sent
        into.failed += r.failed
        into.skipped.update(r.skipped)
        into.put_back += r.put_back
        into.overtaken += r.overtaken
        into.resumed += r.resumed
        into.failures += r.failures
        into.retried += r.retried
    return into


def check_concurrency(concurrency: int) -> None:
    """Refuse a concurrency outside 1..MAX_CONCURRENCY before anything is claimed: with
    0 (or less) a SendGrid drain claimed batches of no email, found none, and ended as if
    the outbox were empty, every email left queued."""
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise BadInput(
            None, None, f"concurrency {concurrency}: must be from 1 to {MAX_CONCURRENCY}"
        )


def drain(
    registry: Registry,
    plan: Plan,
    sender: Sender,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    processes: int = 1,
    limit: int | None = None,
    clock: Callable[[], datetime] = utc_now,
    progress: Callable[[int, int], None] | None = None,
    retry_failed: bool = False,
) -> DrainReport:
    """Send every queued email (at most ``limit``), ``concurrency`` at a time in each
    of ``processes`` processes; with ``retry_failed``, failed emails are queued again
    first (``report.requeued`` says how many).

    The file sender refuses to start (RolloutError) while an email it would take was
    last attempted through SendGrid: see :func:`check_sender`.

    Claimed rows are sent and recorded before more are claimed: a crash leaves at
    most ``concurrency`` rows in flight per process, the only messages a rerun may
    duplicate. The file outbox claims FILE_BATCH (500) rows at a time instead and writes
    them in the drain's own thread (``concurrency`` is unused): a crash leaves at most
    500 in flight per process, and a rerun writes them again, each replacing its own
    ``.eml``, so no email is there twice. More processes help where rendering and the
    HTTP client's own work are the limit (a local server on a small machine); against
    SendGrid, more concurrency is the lever. Worker processes use the real clock and need a
    sender that pickles (both senders do).

    SIGTERM or SIGINT (from the main thread's point of view) stops the drain: what was
    in flight is recorded or put back, every worker is gone before the run lock is let
    go, and then :class:`rollout.core.stopping.Stopped` is raised with the counts."""
    check_concurrency(concurrency)
    report = DrainReport(sender.name)
    with (
        stop_requested_by_signals() as stop,
        registry.lock("notify") as held,
    ):
        engine = registry.engine
        check_sender(registry, sender.name, include_failed=retry_failed)
        if retry_failed:
            report.requeued = requeue_failed(engine, clock())
        # Left in flight by a drain that died: it may or may not have sent them.
        report.resumed = _requeue_in_flight(engine, clock())
        _remove_leftovers(sender)
        waiting = sum(pending(registry).values())
        total = min(waiting, limit) if limit is not None else waiting
        if processes <= 1:
            _merge(
                [
                    _drain_loop(
                        engine,
                        plan,
                        sender,
                        concurrency=concurrency,
                        limit=limit,
                        clock=clock,
                        progress=(lambda r: progress(r.done, total)) if progress else None,
                        stop=stop,
                        # The lock gone (its PostgreSQL session ended), the next run may
                        # be at work, putting back the rows this one holds: no more.
                        before_batch=held.check,
                    )
                ],
                report,
            )
        else:

            def advance() -> None:
                if progress:
                    done = waiting - sum(pending(registry).values())
                    progress(min(done, total), total)

            try:
                # The workers get the URL, and each makes its own Registry (_drain_worker).
                reports = _drain_in_processes(
                    registry.url,
                    plan,
                    sender,
                    processes=processes,
                    concurrency=concurrency,
                    limit=limit,
                    stop=stop,
                    progress=advance,
                    check=held.check,
                )
                _merge(reports, report)
                # Once more at the end: the workers are looked at every half second, and a
                # drain done between two looks (or within the first) left the progress
                # short of what it came to, or never shown at all.
                advance()
            finally:
                # What killed workers held: no drain process is left, the lock still held
                # (one lost may be another run's now, and so may the rows in flight).
                if held.holds():
                    report.put_back += _requeue_in_flight(engine, clock(), cut_short=True)
    stop.raise_if_set(_stopped(report))
    return report


def drain_shard(
    registry: Registry,
    plan: Plan,
    sender: Sender,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    lease: timedelta = DEFAULT_LEASE,
    clock: Callable[[], datetime] = utc_now,
) -> DrainReport:
    """One of several drainers sharing the outbox, each in a process (or on a machine)
    of its own, while whoever started them holds the ``notify`` lock (the notify flow
    fanned out: flows/notify.py). Unlike :func:`drain` it takes no lock and puts back
    nobody's rows: it claims queued rows with a lease, and when none is left it waits for
    the rows others hold, taking over those whose lease runs out (their drainer died),
    so the run ends with nothing queued or held, not on the next day's drain. At most a
    dead drainer's rows in flight are sent twice.

    SIGTERM or SIGINT stops it as it stops a drain (what was in flight recorded or put
    back), then raises :class:`rollout.core.stopping.Stopped`. So does its run going
    away (nobody holds the ``notify`` lock any more: the process that started the shards
    died, and the next drain, which puts back whatever is held, may start any time; or
    another run holds it: this shard was frozen past its run's end): it stops within
    OWNER_POLL_SECONDS, and before it claims again, and raises ShardOrphaned, as it does
    at once when nobody holds the lock as it starts. Its run is the one holding the lock
    as it starts (Registry.lock_holder: a token each run draws as it takes the lock)."""
    check_concurrency(concurrency)
    owner = registry.lock_holder("notify")
    if owner is None:
        raise ShardOrphaned(
            "no notify run holds the notify lock: a shard sends only for the notify run "
            "that started it (its run is gone; the next notify run sends what is left)"
        )
    with (
        stop_requested_by_signals() as stop,
        _owner_watched(registry, owner, stop) as watch,
    ):
        check_sender(registry, sender.name, include_failed=False)
        report = _drain_loop(
            registry.engine,
            plan,
            sender,
            concurrency=concurrency,
            limit=None,
            clock=clock,
            stop=stop,
            lease=lease,
            wait_for_leases=True,
            before_batch=watch.look,
        )
    if watch.gone is not None:
        raise ShardOrphaned(
            f"its notify run is gone ({watch.gone}): stopped after {report.sent} sent, "
            f"{report.put_back} put back for the next run"
        )
    stop.raise_if_set(_stopped(report))
    return report


# How often a shard looks whether its notify run still holds the notify lock (and
# before each batch it claims).
OWNER_POLL_SECONDS = 2.0


class _OwnerWatch:
    """Whether the run holding the ``notify`` lock is still the shard's own (the token
    ``owner`` it found as it started: Registry.lock_holder). Not only whether some run
    holds it: a shard frozen (SIGSTOP, a paused VM) while its run ended, resumed while
    the next `notify send` or notify run holds the lock, would go on sending under that
    run with its old plan and settings, and that run's restart would queue again the
    rows the shard holds (sent twice). ``look`` sets ``gone`` (why) and asks ``stop``."""

    def __init__(self, registry: Registry, owner: str, stop: StopRequest) -> None:
        self._registry, self._owner, self._stop = registry, owner, stop
        self.gone: str | None = None

    def look(self) -> None:
        try:
            holder = self._registry.lock_holder("notify")
        except (SQLAlchemyError, RegistryURLRefused, RegistryStatementCancelled):
            return  # the registry unreachable: the drain itself will say so
        if holder == self._owner:
            return
        self.gone = (
            "nobody holds the notify lock"
            if holder is None
            else "another notify run holds the notify lock"
        )
        self._stop.set()


@contextlib.contextmanager
def _owner_watched(registry: Registry, owner: str, stop: StopRequest) -> Iterator[_OwnerWatch]:
    """While inside, a thread looks every OWNER_POLL_SECONDS whether the ``notify``
    lock is still held by the run ``owner`` (see _OwnerWatch), and when not asks ``stop``;
    the drain looks too, before each batch it claims (the thread may be paused with it,
    and wake after the drain claimed)."""
    watch, done = _OwnerWatch(registry, owner, stop), threading.Event()

    def beat() -> None:
        while not done.wait(OWNER_POLL_SECONDS) and watch.gone is None:
            watch.look()

    watcher = threading.Thread(target=beat, name="shard-owner", daemon=True)
    watcher.start()
    try:
        yield watch
    finally:
        done.set()
        watcher.join()


@dataclass(frozen=True)
class ShardedSend:
    """What a drain fanned out over shards must do before they start and tell after:
    see :func:`begin_shards` and :func:`shards_report`."""

    sender: str
    started_at: datetime
    requeued: int
    before: Counter[tuple[str, str | None]]
    resumed: int = 0  # rows a drain before leases left in flight, queued again


def _states(registry: Registry) -> Counter[tuple[str, str | None]]:
    c = NOTIFICATIONS.c
    with registry.engine.connect() as connection:
        rows = connection.execute(
            select(c.state, c.skip_reason, func.count()).group_by(c.state, c.skip_reason)
        ).all()
    return Counter({(state, reason): n for state, reason, n in rows})


def begin_shards(
    registry: Registry,
    sender: str,
    *,
    retry_failed: bool = False,
    clock: Callable[[], datetime] = utc_now,
) -> ShardedSend:
    """Before shards start (the caller holding the ``notify`` lock): refuse a file
    sender for emails last attempted through SendGrid, queue the failed ones again when
    asked, and note where the outbox stood."""
    check_sender(registry, sender, include_failed=retry_failed)
    started = clock()
    requeued = requeue_failed(registry.engine, started) if retry_failed else 0
    # Rows a drain of a rollout before leases (registry revision 0015) had claimed when
    # it died hold no lease, so no shard ever takes them over: left held, every sharded
    # run ended "not drained", each day, until a plain drain queued them again. Under
    # the notify lock, as that drain does; they may have gone out (resumed).
    resumed = _requeue_in_flight(registry.engine, started, unleased=True)
    return ShardedSend(sender, started, requeued, _states(registry), resumed)


def outbox_drained(registry: Registry) -> bool:
    """Nothing queued and nothing held: every shard's work is done, whatever became of
    the shard (a dead one's rows were taken over)."""
    with registry.engine.connect() as connection:
        return not connection.execute(
            select(func.count()).where(NOTIFICATIONS.c.state.in_(["queued", "sending"]))
        ).scalar()


def shards_report(registry: Registry, begun: ShardedSend) -> DrainReport:
    """What the shards did together, read from the outbox (a shard that died tells
    nothing): sent, failed (with why) and skipped since :func:`begin_shards`."""
    after = _states(registry)
    change = after - begun.before
    report = DrainReport(begun.sender, requeued=begun.requeued, resumed=begun.resumed)
    report.sent = sum(n for (state, _), n in change.items() if state == "sent")
    report.skipped = Counter(
        {reason or "": n for (state, reason), n in change.items() if state == "skipped"}
    )
    c = NOTIFICATIONS.c
    with registry.engine.connect() as connection:
        failed = connection.execute(
            select(c.id, c.error)
            .where(c.state == "failed", c.updated_at >= begun.started_at)
            .order_by(c.id)
        ).all()
    report.failed = len(failed)
    report.failures = [(i, failure_reason(error)) for i, error in failed]
    return report


def account_recipient(
    registry: Registry,
    plan: Plan,
    username: str,
    phase: str | None,
    email: str = "phase_notice",
    *,
    now: datetime | None = None,
) -> Recipient:
    """One account as a recipient (for previews), with its packages in ``phase``'s cohort
    and where it stands for ``email`` as a send at ``now`` (default: now) would find it:
    for a reminder or an enforcement notice its own deadline and snooze, and the tokens
    that email lists (a notice starts a deadline from then)."""
    with registry.engine.connect() as connection:
        account_id = connection.execute(
            select(ACCOUNTS.c.id).where(ACCOUNTS.c.username == username)
        ).scalar()
        if account_id is None:
            raise BadInput(None, None, f"no account named {quoted(username)}")
        claimed = [_Claimed(0, account_id, email, phase or "", "", {})]
        recipient = _recipients(connection, claimed)[account_id]
        if phase is None:
            return recipient
        packages = _packages(connection, plan, claimed)
        standing = _standing(connection, plan, claimed, now or utc_now())
        found = standing.get(_standing_key(claimed[0]))
        sooner = _required_sooner(connection, plan, claimed, standing, now or utc_now())
    recipient = replace(
        recipient, packages=packages.get((plan.phase(phase).cohort, account_id), ())
    )
    if found is not None:
        recipient = found.apply(recipient)
    return _as_sooner(recipient, sooner.get((phase, account_id))) or recipient
