"""The outbox ledger: the ``notifications`` rows and what is known about them.

An email lives in ``notifications`` from its queueing (rollout.notify.queue: the
emails the plan calls for, set-based) to its delivery (rollout.notify.drain: claimed,
rendered, sent and recorded exactly once). This module is what both share and what
reads the ledger as a whole: the tables, the reasons a row is skipped, the day a row
counts as sent on, what is pending or failed, retries, suppressions and the status.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    case,
    func,
    or_,
    select,
    update,
)

from rollout.core.controls import quoted
from rollout.core.errors import BadInput, RolloutError
from rollout.core.words import by_count, counted
from rollout.notify.message import address_forms, normal_address
from rollout.registry import Registry
from rollout.registry.batches import in_chunks
from rollout.registry.engine import begin_writing
from rollout.registry.ledger import dialect_insert, record_actions, utc_now
from rollout.registry.locks import hold_transaction_lock
from rollout.registry.models import (
    Account,
    EmailSuppression,
    Notification,
)

log = logging.getLogger(__name__)

NOTIFICATIONS = Notification.__table__
ACCOUNTS = Account.__table__
SUPPRESSIONS = EmailSuppression.__table__

UNVERIFIED = "unverified email"
SUPPRESSED = "suppressed"
# Where a suppression comes from: set by hand (`rollout notify suppress`), or one of
# SendGrid's lists (rollout.notify.suppressions). A global unsubscribe is recorded but
# does not stop the security notices: see rollout.notify.suppressions.
MANUAL = "manual"
# Held by every change of email_suppressions from its check to its commit (a suppression
# by hand, its lifting, a copy of SendGrid's lists): two at once each passed their check
# against the rows as they were (an address suppressed twice in two of its forms, with
# two audit rows; two syncs inserting the same rows, the second failing on PostgreSQL).
SUPPRESSIONS_LOCK = "email-suppressions"
UNSUBSCRIBE = "unsubscribe"
SENDGRID_SOURCES = ("bounce", "block", "spam_report", "invalid_email", UNSUBSCRIBE)
COMPLIANT = "already compliant"
# A warning of a phase (its notice, a reminder) to an account the phase has already been
# enforced on, or a heads-up of a brown-out or of ELV (emails.LOGIN_HEADS_UPS) to one
# without 2FA that any phase requires it of: at queueing (queue._skip_reason) and at
# sending (drain._enforced).
ENFORCED = "already enforced"
# A heads-up of a brown-out or of ELV for all (emails.LOGIN_HEADS_UPS) to an account
# enrolled in ELV since it was queued (the opt-in trial, an early `elv enroll-all`): it
# meets the emailed code at every login already, and "from then, every login will need
# a code" is false: at queueing it is not in the audience (queue.audience), at sending
# drain._enforced skips it.
IN_ELV = "already in ELV"
# A warning of a phase to an account the plan exempts: its enforcement never touches it.
EXEMPT = "exempt by the plan"
REPEAT = "inside the repeat window"
# An email whose account the registry deleted (closed, erased at its owner's request)
# before it went: never sent, for good; the outbox row stays (revision 0021).
ACCOUNT_DELETED = "account deleted"
# An email whose last day (its mailing's: the day before the date it announces, or the
# account's own deadline) had passed when it came to be sent: "in 3 days" after the
# deadline, a brown-out heads-up once it began, an org's invitation back once it expired
# (rollout.notify.drain._too_late).
TOO_LATE = "too late"
# The context key of an email queued past its last day on purpose (``notify queue
# --late``): the drain sends it however late, as the release manager asked.
QUEUED_LATE = "queued_late"
# The context key of the day a queue run was for (``queue_due``'s ``day``): the day the
# repeat window is judged on, so a back-filled run (``--as-of`` a past day) spaces its
# emails by the plan's calendar, not by the minutes between drains today.
RUN_DAY = "queued_on"
# The key the drain adds to what it renders from (never stored): the UTC day it sends
# on, by the pipeline's clock, so "in N days" counts from the day the email goes, not
# from the day it was queued for (a send after an outage, or after midnight).
SENT_ON = "sent_on"

# What a stop writes on a row whose send it cut short and put back (the drain's
# ``_put_back``): the send may have gone out, so the next drain, which sends it again,
# counts it with the rows a crash left in flight (DrainReport.resumed); SendGrid's events
# may show it went first (rollout.notify.delivery). Sent, the row's error is cleared.
CUT_SHORT = "put back by a stop: its send may have gone out"
# The error of a withdrawn email whose drainer died holding it (rollout.notify.drain):
# skipped, its send maybe gone out (rollout.notify.delivery settles it by its events).
DIED_HOLDING = "its drainer died holding it: its send may have gone out"

_OUTBOX_PREFIX = re.compile(r"^outbox \d+: ")


def failure_reason(error: str | None) -> str:
    """A failed row's error as a reason to group by: its first line, without the
    ``outbox N:`` prefix some carry, so 20 rows refused alike count as one reason."""
    lines = (error or "").strip().splitlines()
    first = _OUTBOX_PREFIX.sub("", lines[0]) if lines else ""
    return first[:200] or "(no reason recorded)"


def pending(registry: Registry) -> dict[str, int]:
    """Queued emails by kind (what a drain would send)."""
    with registry.engine.connect() as connection:
        rows = connection.execute(
            select(NOTIFICATIONS.c.email, func.count())
            .where(NOTIFICATIONS.c.state.in_(["queued", "sending"]))
            .group_by(NOTIFICATIONS.c.email)
            .order_by(NOTIFICATIONS.c.email)
        ).all()
    return {email: count for email, count in rows}


def run_day(context: Mapping[str, Any], otherwise: date) -> date:
    """The day an email counts as sent on for the repeat window: its queue run's day
    (RUN_DAY), or ``otherwise`` for rows queued without one (enforcement, orgs, rows
    queued before RUN_DAY existed)."""
    try:
        return date.fromisoformat(str(context[RUN_DAY]))
    except (KeyError, TypeError, ValueError):
        return otherwise


def retry_failed(registry: Registry, *, sender: str | None = None) -> int:
    """Queue failed emails again (after fixing what failed them); returns how many.

    Given the ``sender`` that will send them, refuses as :func:`check_sender` does.
    ``drain(..., retry_failed=True)`` does this under the drain's run lock."""
    if sender is not None:
        check_sender(registry, sender, include_failed=True)
    # No run lock held (a drain under its lock does this itself): kept out of a
    # schema migration as every such writer is (Registry.writing).
    with registry.writing() as connection:
        return _requeue_failed(connection, utc_now())


def requeue_failed(engine: Engine, now: datetime) -> int:
    """Failed emails queued again, by a drain under its run lock."""
    with begin_writing(engine) as connection:
        return _requeue_failed(connection, now)


def _requeue_failed(connection: Connection, now: datetime) -> int:
    return connection.execute(
        update(NOTIFICATIONS)
        .where(NOTIFICATIONS.c.state == "failed")
        .values(state="queued", error=None, updated_at=now)
    ).rowcount


def failed_count(registry: Registry) -> int:
    """Failed emails: what ``retry_failed`` would queue again."""
    with registry.engine.connect() as connection:
        return connection.execute(
            select(func.count()).where(NOTIFICATIONS.c.state == "failed")
        ).scalar_one()


# The only sender that delivers nothing: an email meant for a provider must never end
# up there, marked sent, because the key was missing from one shell or one worker.
FILE_SENDER = "file"


def meant_for_a_provider(registry: Registry, *, include_failed: bool) -> int:
    """Emails a drain would take (queued, in flight; failed too if ``include_failed``)
    that were last attempted through a sender that delivers (SendGrid)."""
    states = ["queued", "sending", *(["failed"] if include_failed else [])]
    with registry.engine.connect() as connection:
        return connection.execute(
            select(func.count()).where(
                and_(
                    NOTIFICATIONS.c.state.in_(states),
                    NOTIFICATIONS.c.sender.is_not(None),
                    NOTIFICATIONS.c.sender != FILE_SENDER,
                )
            )
        ).scalar_one()


def check_sender(registry: Registry, sender: str, *, include_failed: bool) -> None:
    """Refuse to let the file outbox take emails last attempted through SendGrid.

    The CLI reads the key only from SENDGRID_API_KEY, the notify deployment also from a
    Prefect Secret block: run from a shell without the key, a retry would otherwise write
    the emails to .eml files and mark them sent, and nobody would ever get them."""
    if sender != FILE_SENDER:
        return
    count = meant_for_a_provider(registry, include_failed=include_failed)
    if count:
        raise RolloutError(
            f"{counted(count, 'email')} waiting to be sent "
            f"{by_count(count, 'was', 'were')} last attempted through SendGrid, but "
            "no SendGrid key was found here, so the sender would be the file outbox: "
            "nothing was sent. Set SENDGRID_API_KEY (the notify deployment also reads the "
            "Prefect Secret block named by ROLLOUT_SENDGRID_SECRET_BLOCK, default "
            "sendgrid-api-key) and run again"
        )


def suppressed_reason(source: str) -> str:
    """The skip reason of an address on the ``source`` list: "suppressed" for one set
    by hand, "suppressed: bounce" (spam report, invalid email...) for SendGrid's."""
    return SUPPRESSED if source == MANUAL else f"{SUPPRESSED}: {source.replace('_', ' ')}"


# Recorded but not stopping email: a global unsubscribe (these are mandatory security
# notices: rollout.notify.suppressions) and a block, which SendGrid keeps for a message
# refused for its content or the sending IP, not for the address, and does not suppress
# ("subsequent sends to emails on this list will be sent like normal").
NOT_STOPPING = (UNSUBSCRIBE, "block")


def stops_email(source: Any) -> Any:
    """SQL: the suppressions that stop all email (bounces, spam reports, invalid
    addresses, and what was set by hand)."""
    return source.not_in(NOT_STOPPING)


def _suppression_reason() -> Any:
    """SQL: a suppression row's skip reason (:func:`suppressed_reason` of its source)."""
    return case(
        *((SUPPRESSIONS.c.source == s, suppressed_reason(s)) for s in SENDGRID_SOURCES),
        else_=SUPPRESSED,
    )


def suppression_reasons(connection: Connection, addresses: Iterable[str]) -> dict[str, str]:
    """{address as :func:`normal_address` gives it: skip reason} for those of
    ``addresses`` no email goes to, whichever form of the address (its domain in IDNA or
    in Unicode: :func:`address_forms`) is suppressed; of several reasons, the first (so
    the same one every time). What the send skips by, and the queue and its preview."""
    forms = {normal_address(address): address_forms(address) for address in addresses}
    wanted = sorted(set().union(*forms.values())) if forms else []
    found: dict[str, str] = {}
    for chunk in in_chunks(wanted):
        rows = connection.execute(
            select(SUPPRESSIONS.c.address, func.min(_suppression_reason()))
            .where(
                and_(
                    SUPPRESSIONS.c.address.in_(chunk),
                    stops_email(SUPPRESSIONS.c.source),
                )
            )
            .group_by(SUPPRESSIONS.c.address)
        )
        found.update({address: reason for address, reason in rows})
    reasons: dict[str, str] = {}
    for address, its_forms in forms.items():
        matched = [found[form] for form in its_forms if form in found]
        if matched:
            reasons[address] = min(matched)
    return reasons


# The longest address stored (accounts.email and email_suppressions.address).
ADDRESS_LIMIT = 320

# An address one could send to: one @, something on each side, a dot in the domain, no
# space or control character. (Not RFC 5322's every form: a check that a typed value,
# "not an email" or "a@b.c\nBcc: x", is not stored as if it were one.)
_ADDRESS = re.compile(
    r"[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s\x00-\x1f\x7f-\x9f.]+(\.[^@\s\x00-\x1f\x7f-\x9f.]+)+"
)


def _ascii_lower(connection: Connection, email: Any) -> Any:
    """SQL: ``email`` with its ASCII capitals lower-cased and nothing else changed, as
    Python's lower() does to printable ASCII. SQLite's lower() is that; PostgreSQL's
    follows the collation (the database's locale), and under a Turkish one made the I
    of ANNI@X.EXAMPLE a dotless i (U+0131), so no suppression of anni@x.example matched it: its
    collation "C" folds only ASCII."""
    if connection.dialect.name == "postgresql":
        return func.lower(email.collate("C"))
    return func.lower(email)


def _beyond_sql_lower(connection: Connection, email: Any) -> Any:
    """SQL: an address whose suppressed forms SQL cannot find by :func:`_ascii_lower`: a
    character beyond printable ASCII (a space Python's strip would drop) or an IDNA
    label (its Unicode form is another address)."""
    if connection.dialect.name == "sqlite":
        unusual = email.op("GLOB")("*[^!-~]*")
    else:
        unusual = email.op("~")("[^!-~]")
    return or_(unusual, _ascii_lower(connection, email).contains("xn--", autoescape=True))


def suppressed_accounts(connection: Connection, account_ids: Any) -> dict[int, str]:
    """{account id: skip reason} of the accounts of ``account_ids`` (a subquery of ids)
    whose address a suppression stops, matched in Python as the send matches
    (:func:`suppression_reasons`): the queue's SQL compared lower(email), which on SQLite
    folds only ASCII, and one form of the domain, so its preview counted ÅSA@X.EXAMPLE
    (or ann@xn--bcher-kva.example) as queued while the send skipped it. Reads the
    audience's addresses only when some suppression stops email."""
    stopping = select(SUPPRESSIONS.c.address).where(stops_email(SUPPRESSIONS.c.source))
    if connection.execute(stopping.limit(1)).first() is None:
        return {}
    # Only the candidates reach Python (reading a 2M-account audience's addresses took
    # 13 s): an address SQL lower-cases as Python does (printable ASCII, no IDNA label,
    # by _ascii_lower whatever the database's locale) that a suppression names as
    # stored, and every address SQL cannot judge, which Python decides as the send does.
    rows = connection.execute(
        select(ACCOUNTS.c.id, ACCOUNTS.c.email).where(
            ACCOUNTS.c.id.in_(select(account_ids.c[0])),
            or_(
                _ascii_lower(connection, ACCOUNTS.c.email).in_(stopping),
                _beyond_sql_lower(connection, ACCOUNTS.c.email),
            ),
        )
    ).all()
    reasons = suppression_reasons(connection, {email for _, email in rows})
    return {
        account_id: reasons[normal_address(email)]
        for account_id, email in rows
        if normal_address(email) in reasons
    }


def checked_address(address: str) -> str:
    """The address as a suppression stores it (:func:`normal_address`); BadInput (exit
    2) for what is not an address, or one longer than any account's can be."""
    text = address.strip()
    if not _ADDRESS.fullmatch(text):
        raise BadInput(None, None, f"{quoted(address)} is not an email address (name@domain.tld)")
    if len(text) > ADDRESS_LIMIT:
        # No account's address is longer (accounts.email holds as many): on PostgreSQL
        # the insert failed with a traceback.
        raise BadInput(
            None,
            None,
            f"{quoted(text[:40])}... is {counted(len(text), 'character')}: an address has at most "
            f"{ADDRESS_LIMIT}",
        )
    return normal_address(text)


def checked_reason(reason: str, *, example: str) -> str:
    """A suppression's (or its lifting's) reason; BadInput (exit 2) when blank."""
    if not reason.strip():
        raise BadInput(None, None, f"--reason is blank: say why ({example})")
    return reason


SUPPRESS_EXAMPLES = "bounced, complained, asked"


def suppress(registry: Registry, address: str, *, reason: str, actor: str) -> bool:
    """Stop all email to an address; returns False if it already was (by hand, in any
    form of the address: :func:`address_forms`). Raises BadInput for what is not an
    address, or a blank reason. Audited (``email_suppressed``) in the same transaction;
    ``rollout notify suppress`` previews first (rollout.notify.suppressions)."""
    stored = checked_address(address)
    checked_reason(reason, example=SUPPRESS_EXAMPLES)
    with registry.writing() as connection:
        hold_transaction_lock(connection, SUPPRESSIONS_LOCK)
        if connection.execute(
            select(SUPPRESSIONS.c.address).where(
                and_(
                    SUPPRESSIONS.c.address.in_(sorted(address_forms(stored))),
                    SUPPRESSIONS.c.source == MANUAL,
                )
            )
        ).first():
            return False
        now = utc_now()
        added = connection.execute(
            dialect_insert(connection, SUPPRESSIONS)
            .values(
                address=stored,
                source=MANUAL,
                reason=reason,
                created_at=now,
                created_by=actor,
            )
            .on_conflict_do_nothing(index_elements=["address", "source"])
        ).rowcount
        if not added:
            return False
        accounts = accounts_using(connection, stored)
        record_actions(
            connection,
            [
                {
                    "effect_key": f"email-suppress:{stored}:{now.isoformat()}",
                    "action": "email_suppressed",
                    "account_id": accounts[0][0] if len(accounts) == 1 else None,
                    # The column's 300; the details keep the address whole.
                    "subject": stored[:300],
                    "reason": reason,
                    "actor": actor,
                    "created_at": now,
                    "details": {
                        "address": stored,
                        "usernames": [username for _, username, _ in accounts],
                    },
                }
            ],
        )
        return True


def accounts_using(connection: Connection, address: str) -> list[tuple[int, str, str]]:
    """(id, username, email) of the accounts a suppression of ``address`` (as stored:
    lower-cased) stops, as the drain matches them: the account's address in any of its
    forms (:func:`address_forms`: case, the domain in IDNA or Unicode) is ``address``.
    By username."""
    # Found by the local part, then matched here: SQLite's lower() folds only ASCII, so
    # an account's ann@BÜCHER.example was missed by SQL's comparison of whole addresses,
    # while the send (Python's lower()) stops its emails. For the same reason a character
    # SQL may not have lower-cased as Python did (ÅSA's Å; the k of a Kelvin sign) is a
    # wildcard in the pattern: the candidates are never fewer than the matches.
    pattern = _local_part_pattern(address.rpartition("@")[0]) + "@%"
    rows = connection.execute(
        select(ACCOUNTS.c.id, ACCOUNTS.c.username, ACCOUNTS.c.email)
        .where(func.lower(func.trim(ACCOUNTS.c.email)).like(pattern, escape="\\"))
        .order_by(ACCOUNTS.c.username)
    ).all()
    return [(i, u, e) for i, u, e in rows if address in address_forms(e)]


@functools.cache
def _folded_from_beyond_ascii() -> frozenset[str]:
    """The ASCII characters Python's lower() makes of some other character (k of the
    Kelvin sign, i of İ): SQL's lower() on SQLite leaves those as they are."""
    return frozenset(
        c for code in range(0x80, sys.maxunicode + 1) for c in chr(code).lower() if c.isascii()
    )


def _local_part_pattern(local: str) -> str:
    """A LIKE pattern (escape \\) matching ``local`` (lower-cased by Python) in any
    address SQL's lower() gives: a non-ASCII character any run of characters (lower()
    may make two of one: İ is i and a combining dot), an ASCII one lower() makes of
    another (the k of a Kelvin sign) any one character."""
    loose = _folded_from_beyond_ascii()
    return "".join(
        "%" if not c.isascii() else "_" if c in loose else re.sub(r"([\\%_])", r"\\\1", c)
        for c in local
    )


def outbox_status(registry: Registry) -> list[dict[str, Any]]:
    """Emails by kind, state and reason: the skip reason, or for failed emails their
    error grouped by its first line (:func:`failure_reason`)."""
    c = NOTIFICATIONS.c
    with registry.engine.connect() as connection:
        rows = connection.execute(
            select(c.email, c.state, c.skip_reason, c.error, func.count()).group_by(
                c.email, c.state, c.skip_reason, c.error
            )
        ).all()
    counts: Counter[tuple[str, str, str]] = Counter()
    for email, state, skip_reason, error, count in rows:
        reason = failure_reason(error) if state == "failed" else skip_reason or ""
        counts[(email, state, reason)] += count
    return [
        {"email": e, "state": s, "reason": r, "count": n} for (e, s, r), n in sorted(counts.items())
    ]
