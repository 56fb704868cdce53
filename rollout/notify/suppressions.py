"""SendGrid's suppression lists, copied into ``email_suppressions`` before emails go.

SendGrid keeps five suppression lists: bounces, blocks, spam reports, invalid emails and
global unsubscribes. It will not deliver to an address on any but the blocks: an email
queued to such an address is accepted (202) and then dropped, so counting it as sent
would hide that the maintainer was never told. Each day, before queueing, the
``notify`` flow (and ``rollout notify sync-suppressions``) reads every list whole, page
by page, and replaces the rows of those sources: an address SendGrid no longer lists
(support removed a bounce) gets email again. A list that cannot be read changes nothing.

What each source does:

- ``bounce``, ``invalid_email``, ``spam_report``: no email goes to the address
  (skipped, reason ``suppressed: bounce`` ...), at queueing and again at sending.
  Sending would only be dropped by SendGrid (or, for a spam report, hurt every other
  notice's delivery).
- ``block``: recorded, and the emails still go. SendGrid lists a block when a message
  was refused for its content or the sending IP, not for the address, and sends to
  blocked addresses as usual; skipping them lost every later notice, the enforcement
  notice too, for one refused message.
- ``unsubscribe`` (a global unsubscribe): recorded, but the emails still go, sent with
  SendGrid's ``bypass_unsubscribe_management``. Every email rollout sends is a mandatory
  account-security notice: that an account will lose publish access, and when. Someone
  who once unsubscribed from a registry's newsletters must still learn they are about
  to be locked out; such transactional notices are outside what an unsubscribe covers
  (as for password resets). Bounces and spam reports are not bypassed.

Addresses are compared lower-cased by Python's rules (``rollout.notify.message.
normal_address``: never by SQL's lower(), which on SQLite folds only ASCII), as
everywhere in the outbox, and in each form of an international domain (IDNA, as
SendGrid lists it, or Unicode, as an account may hold it: ``address_forms``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, func, or_, select

from rollout.core.controls import quoted
from rollout.core.errors import GuardRefused, RolloutError
from rollout.core.words import counted
from rollout.notify.message import DeliveryFailed, address_forms, normal_address
from rollout.notify.outbox import (
    ADDRESS_LIMIT,
    MANUAL,
    NOT_STOPPING,
    NOTIFICATIONS,
    SUPPRESSED,
    SUPPRESSIONS,
    SUPPRESSIONS_LOCK,
    accounts_using,
    checked_address,
    checked_reason,
)
from rollout.notify.queue import REOPENED_WHEN_ADDRESS_FIXED
from rollout.notify.senders import SendGridSender
from rollout.registry import Registry
from rollout.registry.batches import in_chunks
from rollout.registry.ledger import record_actions, utc_now
from rollout.registry.locks import hold_transaction_lock

log = logging.getLogger(__name__)

# SendGrid's list name -> the source recorded.
LISTS: dict[str, str] = {
    "bounces": "bounce",
    "blocks": "block",
    "spam_reports": "spam_report",
    "invalid_emails": "invalid_email",
    "unsubscribes": "unsubscribe",
}
# SendGrid answers at most 500 entries a page.
PAGE_SIZE = 500
# Rows inserted per statement.
_CHUNK = 5_000


class SuppressionsUnreadable(RolloutError):
    """A SendGrid suppression list could not be read whole: nothing was changed."""


@dataclass(frozen=True)
class SyncReport:
    by_source: dict[str, int]
    added: int
    removed: int
    pages: int

    def summary(self) -> dict[str, Any]:
        """Addresses per list, those added and removed since the last sync, pages read:
        the command's output and the notify artifact's table."""
        return {
            # Named as SendGrid names its lists (snake_case, as every --format json key).
            **{name: self.by_source.get(source, 0) for name, source in LISTS.items()},
            "added": self.added,
            "removed": self.removed,
            "pages_read": self.pages,
        }


def read_list(
    sender: SendGridSender, list_name: str, page_size: int = PAGE_SIZE
) -> tuple[list[dict[str, Any]], int]:
    """Every entry of one SendGrid list, paging until a short page; and the pages read.

    A server that does not page as asked (a page longer than the limit: the whole list
    each time; a full page the same as the one before: the offset ignored) never gives a
    short page, and the reader asked for pages forever: such a list is unreadable."""
    entries: list[dict[str, Any]] = []
    pages = 0
    previous: list[Any] | None = None
    while True:
        try:
            page = sender.suppression_page(list_name, page_size, pages * page_size)
        except DeliveryFailed as error:
            raise SuppressionsUnreadable(
                f"could not read SendGrid's {list_name} list (the page at offset "
                f"{pages * page_size}): {error.reason}; nothing was changed"
            ) from None
        pages += 1
        if len(page) > page_size or (page and page == previous):
            what = (
                f"{counted(len(page), 'entry', 'entries')} for a page of {page_size}"
                if len(page) > page_size
                else "the same page again for the next offset"
            )
            raise SuppressionsUnreadable(
                f"SendGrid's {list_name} list is not paged as asked ({what}, page "
                f"{pages}); nothing was changed"
            )
        previous = page
        for entry in page:
            if not isinstance(entry, dict) or not isinstance(entry.get("email"), str):
                raise SuppressionsUnreadable(
                    f"SendGrid's {list_name} list has an entry without an email "
                    f"(page {pages}); nothing was changed"
                )
        entries.extend(page)
        if len(page) < page_size:
            return entries, pages


def _reason(source: str, entry: dict[str, Any]) -> str:
    """What SendGrid says about the address, kept with the row (plain text, capped)."""
    parts = {
        "bounce": [entry.get("status"), entry.get("reason")],
        "block": [entry.get("status"), entry.get("reason")],
        "invalid_email": [entry.get("reason")],
        "spam_report": ["spam report" + (f" from {entry['ip']}" if entry.get("ip") else "")],
        "unsubscribe": ["global unsubscribe"],
    }[source]
    text = " ".join(str(part).strip() for part in parts if part not in (None, ""))
    return text[:1000] or source.replace("_", " ")


def _created(entry: dict[str, Any], fallback: datetime) -> datetime:
    created = entry.get("created")
    if isinstance(created, int | float) and not isinstance(created, bool) and created >= 0:
        try:
            return datetime.fromtimestamp(created, UTC).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):
            pass
    return fallback


def sync_suppressions(
    registry: Registry,
    sender: SendGridSender,
    *,
    actor: str,
    page_size: int = PAGE_SIZE,
    progress: Callable[[str, int], None] | None = None,
) -> SyncReport:
    """Replace the SendGrid-sourced rows of ``email_suppressions`` with SendGrid's lists
    as they are now: all five read first, then written in one transaction (a list that
    cannot be read raises :class:`SuppressionsUnreadable` with nothing changed). Syncs
    take turns at the write (``SUPPRESSIONS_LOCK``): one started while another writes waits for
    it, then writes its own copy."""
    now = utc_now()
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    pages = 0
    for list_name, source in LISTS.items():
        entries, read = read_list(sender, list_name, page_size)
        pages += read
        for entry in entries:
            address = normal_address(entry["email"])
            if not address or len(address) > ADDRESS_LIMIT:
                # Longer than any account's address can be (cut short, two such could
                # meet as one key): it stops no email of ours.
                continue
            rows[(address, source)] = {
                "address": address,
                "source": source,
                "reason": _reason(source, entry),
                "created_at": _created(entry, now),
                "created_by": actor,
            }
        if progress is not None:
            progress(list_name, len(entries))
    sources = list(LISTS.values())
    with registry.writing() as connection:
        # One copy at a time, from what it replaces to its commit: two at once (the
        # notify flow's and one by hand) each deleted the rows as they were and then
        # inserted the same addresses, and on PostgreSQL the second failed on a
        # duplicate key. The second now waits, and replaces the first's copy.
        hold_transaction_lock(connection, SUPPRESSIONS_LOCK)
        before = {
            (address, source)
            for address, source in connection.execute(
                select(SUPPRESSIONS.c.address, SUPPRESSIONS.c.source).where(
                    SUPPRESSIONS.c.source.in_(sources)
                )
            )
        }
        connection.execute(delete(SUPPRESSIONS).where(SUPPRESSIONS.c.source.in_(sources)))
        values = list(rows.values())
        for at in range(0, len(values), _CHUNK):
            connection.execute(SUPPRESSIONS.insert(), values[at : at + _CHUNK])
    after = set(rows)
    by_source = {source: 0 for source in sources}
    for _, source in after:
        by_source[source] += 1
    report = SyncReport(
        by_source=by_source, added=len(after - before), removed=len(before - after), pages=pages
    )
    log.info(
        "SendGrid suppressions synced: %s; %d added, %d removed",
        by_source,
        report.added,
        report.removed,
    )
    return report


# --- by hand: what suppressing or lifting an address does, and lifting it ----------------

# The source recorded -> SendGrid's list that holds it (where support removes it).
LIST_OF = {source: list_name for list_name, source in LISTS.items()}
UNSUPPRESS_EXAMPLES = "the address works again, suppressed by mistake"


@dataclass(frozen=True)
class Suppression:
    """One row of ``email_suppressions`` for some form of an address."""

    address: str
    source: str
    reason: str
    created_at: datetime
    created_by: str

    @property
    def stops_email(self) -> bool:
        return self.source not in NOT_STOPPING

    def words(self) -> str:
        """Who holds it and why, as a preview says it."""
        if self.source == MANUAL:
            held = f"by hand, by {quoted(self.created_by)} on {self.created_at:%Y-%m-%d}"
        else:
            held = f"on SendGrid's {LIST_OF.get(self.source, self.source)} list"
            if not self.stops_email:
                held += " (recorded; it does not stop these emails)"
        return f"{held} ({quoted(self.address)}): {self.reason}"


@dataclass(frozen=True)
class AddressStanding:
    """What a suppression of an address (stored lower-cased) touches: the accounts it
    stops as the drain matches them, the suppressions of any of its forms, the emails to
    those accounts not sent yet (queued or failed, by kind) and in flight, and those
    skipped because an address was suppressed (by kind)."""

    address: str
    accounts: list[tuple[int, str, str]]
    suppressions: list[Suppression]
    waiting: dict[str, int]
    in_flight: int
    skipped: dict[str, int]

    @property
    def usernames(self) -> list[str]:
        return [username for _, username, _ in self.accounts]

    @property
    def manual(self) -> list[Suppression]:
        return [s for s in self.suppressions if s.source == MANUAL]

    @property
    def sendgrid_stopping(self) -> list[Suppression]:
        """SendGrid's rows that stop email: a lifting by hand would not bring it back."""
        return [s for s in self.suppressions if s.source != MANUAL and s.stops_email]

    @property
    def reopened(self) -> int:
        """Of the skipped, the emails the next day's queue sends again once nothing stops
        the address (rollout.notify.queue.REOPENED_WHEN_ADDRESS_FIXED), until their last
        day; every other kind skipped stays skipped."""
        return sum(n for email, n in self.skipped.items() if email in REOPENED_WHEN_ADDRESS_FIXED)


def address_standing(connection: Connection, address: str) -> AddressStanding:
    """Reads only: see :class:`AddressStanding`. ``address`` as :func:`checked_address`
    gives it."""
    forms = sorted(address_forms(address))
    s = SUPPRESSIONS.c
    found = [
        Suppression(*row)
        for row in connection.execute(
            select(s.address, s.source, s.reason, s.created_at, s.created_by)
            .where(s.address.in_(forms))
            .order_by(s.source, s.address)
        )
    ]
    accounts = accounts_using(connection, address)
    ids = [account_id for account_id, _, _ in accounts]
    n = NOTIFICATIONS.c
    waiting: dict[str, int] = {}
    skipped: dict[str, int] = {}
    in_flight = 0
    for chunk in in_chunks(ids):
        for email, state, count in connection.execute(
            select(n.email, n.state, func.count())
            .where(
                n.account_id.in_(chunk),
                or_(
                    n.state.in_(["queued", "failed", "sending"]),
                    and_(n.state == "skipped", n.skip_reason.like(f"{SUPPRESSED}%")),
                ),
            )
            .group_by(n.email, n.state)
        ):
            if state == "sending":
                in_flight += count
            elif state == "skipped":
                skipped[email] = skipped.get(email, 0) + count
            else:
                waiting[email] = waiting.get(email, 0) + count
    return AddressStanding(
        address,
        accounts,
        found,
        dict(sorted(waiting.items())),
        in_flight,
        dict(sorted(skipped.items())),
    )


def standing_of(registry: Registry, address: str) -> AddressStanding:
    """:func:`address_standing` of a typed address (BadInput for what is not one)."""
    stored = checked_address(address)
    with registry.engine.connect() as connection:
        return address_standing(connection, stored)


def sendgrid_refusal(standing: AddressStanding) -> str | None:
    """Why lifting a suppression of this address by hand would not bring its email back:
    SendGrid's lists hold it (the next sync copies them again), or None."""
    held = standing.sendgrid_stopping
    if not held:
        return None
    lists = ", ".join(sorted({LIST_OF.get(s.source, s.source) for s in held}))
    return (
        f"{quoted(standing.address)} is on SendGrid's {lists} list: its email stays stopped "
        "whatever is lifted here, and `rollout notify sync-suppressions` (the notify flow, "
        "each day) copies SendGrid's lists again. Remove it there first (SendGrid: "
        "Suppressions), run `rollout notify sync-suppressions`, then lift it here"
    )


def unsuppress(registry: Registry, address: str, *, reason: str, actor: str) -> list[Suppression]:
    """Lift the suppressions set by hand of an address, in each of its forms; returns
    those lifted (none: it was not suppressed by hand). Refused (GuardRefused, exit 3,
    nothing changed) while one of SendGrid's lists stops its email. Audited
    (``email_unsuppressed``, one row for each lifted) in the same transaction. The
    phase notices skipped meanwhile are queued again by the next day's queue, until their
    last day; other emails skipped meanwhile stay skipped (rollout.notify.queue)."""
    stored = checked_address(address)
    checked_reason(reason, example=UNSUPPRESS_EXAMPLES)
    with registry.writing() as connection:
        hold_transaction_lock(connection, SUPPRESSIONS_LOCK)
        standing = address_standing(connection, stored)
        refusal = sendgrid_refusal(standing)
        if refusal is not None:
            raise GuardRefused(f"{refusal}; nothing was changed")
        lifted = standing.manual
        if not lifted:
            return []
        connection.execute(
            delete(SUPPRESSIONS).where(
                and_(
                    SUPPRESSIONS.c.source == MANUAL,
                    SUPPRESSIONS.c.address.in_([s.address for s in lifted]),
                )
            )
        )
        now = utc_now()
        record_actions(
            connection,
            [
                {
                    # The suppression lifted: its address and when it was set.
                    "effect_key": (f"email-unsuppress:{s.address}:{s.created_at.isoformat()}"),
                    "action": "email_unsuppressed",
                    "account_id": (
                        standing.accounts[0][0] if len(standing.accounts) == 1 else None
                    ),
                    "subject": s.address[:300],
                    "reason": reason,
                    "actor": actor,
                    "created_at": now,
                    "details": {
                        "address": s.address,
                        "usernames": standing.usernames,
                        "suppressed_by": s.created_by,
                        "suppressed_at": s.created_at.isoformat(),
                        "suppressed_for": s.reason,
                    },
                }
                for s in lifted
            ],
        )
    log.info("%s: suppression by hand lifted by %s", stored, actor)
    return lifted
