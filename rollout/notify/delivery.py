"""Delivery states: what SendGrid's events say became of each sent email, written to
the registry's notifications so previews and enforcement can ask who was reached.

Ingest loads the Event Webhook's files into the warehouse (``raw_events``); this
recomputes the state of every notification an event loaded since the last time names
(``sql/intermediate/int_notification_delivery.sql``: the most final of all its events
whose message id is the notification's) and writes the ones that changed, then records
the last file applied and to which registry (``delivery_state``). The state depends
only on the set of a notification's events, so applying again, in any order or after
the warehouse is rebuilt, writes the same: a crash between the registry's commit and
the warehouse's leaves the next run to write it again. A registry replaced by another
(``rollout sample --replace``) gets all the events applied afresh, and the message ids
keep the old registry's events off its notifications of the same ids. So does one
restored from a backup made before the last state written (kept with the state, and
read back first: one row).

An email whose send may have gone out unrecorded (no answer after its request went, a
stop cut it short, its drainer died holding it; withdrawn meanwhile too, then skipped)
has no message id; when events of its
outbox id and kind show SendGrid took it, it is recorded as sent (:func:`_settle_gone`),
so neither ``--retry-failed`` nor the next drain sends it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import pyarrow as pa
from sqlalchemy import and_, bindparam, func, or_, select, update

from rollout import warehouse
from rollout.notify.message import MAY_HAVE_GONE
from rollout.notify.outbox import CUT_SHORT, DIED_HOLDING
from rollout.notify.withdraw import marked_withdrawn
from rollout.registry import Registry
from rollout.registry.batches import in_chunks
from rollout.registry.ledger import utc_now
from rollout.registry.models import Notification, RegistryChange

NOTIFICATIONS = Notification.__table__
# Notifications read and written a transaction at a time: a day of a big campaign is
# ~1M events, a quarter of a million notifications.
BATCH = 10_000

State = tuple[str | None, datetime | None, str | None]


@dataclass(frozen=True)
class DeliveryReport:
    notifications: int = 0  # states written (changed)
    unknown: int = 0  # outbox ids in events that name no notification (another sender's?)
    applied_file_id: int = 0  # the last ingested file whose events are applied
    # Emails whose send may have gone out unanswered (failed, or put back by a stop)
    # that SendGrid's events show went: recorded as sent (:func:`_settle_gone`).
    gone: int = 0


def _instance(registry: Registry) -> str:
    """Which registry this is: a replaced one is another instance (rollout.registry.changes)."""
    with registry.engine.connect() as connection:
        found = connection.execute(select(func.min(RegistryChange.instance))).scalar()
    return found or ""


def apply_delivery(con: duckdb.DuckDBPyConnection, registry: Registry) -> DeliveryReport:
    """Write to the registry the delivery state of each notification with an event
    loaded since the last call (another registry than last time: of every notification
    an event names)."""
    instance = _instance(registry)
    kept = con.execute(
        "select applied_file_id, instance, written_id, written from delivery_state"
    ).fetchone()
    written: tuple[int, str] | None = None
    if kept is not None and kept[2] is not None:
        written = (int(kept[2]), kept[3])
    if kept is None or kept[1] != instance or _taken_back(registry, written):
        since, written = 0, None
    else:
        since = int(kept[0])
    latest = int(warehouse.scalar(con, "select coalesce(max(file_id), 0) from ingested_files"))
    if latest <= since:
        return DeliveryReport(applied_file_id=since, gone=_settle_gone(con, registry))
    touched = [
        row[0]
        for row in con.execute(
            "select distinct outbox_id from raw_events "
            "where file_id > $since and outbox_id is not null order by 1",
            {"since": since},
        ).fetchall()
    ]
    current = _current(registry, touched)
    con.register(
        "touched_notifications",
        pa.table(
            {
                "outbox_id": pa.array(list(current), pa.int64()),
                "message_id": pa.array([m for m, _ in current.values()], pa.string()),
            }
        ),
    )
    try:
        states = warehouse.run(con, "intermediate/int_notification_delivery").fetchall()
    finally:
        con.unregister("touched_notifications")
    changed = [
        {"outbox_id": i, "new_delivery": d, "new_at": at, "new_reason": why}
        for i, d, at, why in states
        if current[i][1] != (d, at, why)
    ]
    statement = (
        update(NOTIFICATIONS)
        .where(NOTIFICATIONS.c.id == bindparam("outbox_id"))
        .values(
            delivery=bindparam("new_delivery"),
            delivery_at=bindparam("new_at"),
            delivery_reason=bindparam("new_reason"),
        )
    )
    for start in range(0, len(changed), BATCH):
        with registry.writing() as connection:
            connection.execute(statement, changed[start : start + BATCH])
    if changed:  # the last row of the last batch: the last write to be committed
        last = changed[-1]["outbox_id"]
        written = (last, _shown(_current(registry, [last])[last][1]))
    with warehouse.transaction(con):
        con.execute("delete from delivery_state")
        con.execute(
            "insert into delivery_state by name select $latest as applied_file_id, "
            "$instance as instance, $written_id as written_id, $written as written",
            {
                "latest": latest,
                "instance": instance,
                "written_id": written[0] if written else None,
                "written": written[1] if written else None,
            },
        )
    return DeliveryReport(
        len(changed), len(touched) - len(current), latest, _settle_gone(con, registry)
    )


# The events that say SendGrid took a message (every kind that says anything of its
# delivery: it was processed first, even when then dropped).
_ACCEPTED_EVENTS = (
    "processed",
    "deferred",
    "delivered",
    "open",
    "click",
    "dropped",
    "bounce",
    "spamreport",
)


def _settle_gone(con: duckdb.DuckDBPyConnection, registry: Registry) -> int:
    """Record as sent the emails whose send may have gone out without word of it that
    SendGrid's events show it took: failed with no answer after the request went
    (MAY_HAVE_GONE), put back by a stop mid-send (CUT_SHORT), or held by a drainer
    whose lease ran out (it died mid-send). No message id was recorded for them, so
    their outbox id is what the events name. Left as they were, ``--retry-failed`` or
    the next drain sent them a second time, and an account so warned counted as never
    sent its notice.

    Only events of the email's own kind, from the second the row was made or after,
    count (another registry's events of the same outbox id came before; an event's time
    is whole seconds, cut down, so one of that very second may be this email's). Dated
    by the pipeline's clock when the attempt ended (held: when it was claimed), or just
    after SendGrid's first event if later: never before the email was made, so a
    deadline counted from it is never earlier than the one the email gave. Returns how
    many."""
    c = NOTIFICATIONS.c
    now = utc_now()
    may_have_gone = and_(
        c.message_id.is_(None),
        or_(
            and_(c.state == "failed", c.error.contains(MAY_HAVE_GONE, autoescape=True)),
            and_(c.state == "queued", c.error == CUT_SHORT),
            and_(c.state == "sending", c.lease_expires_at < now),
            # Withdrawn while held, its hold ended so (rollout.notify.drain): it goes if
            # its send went, and the withdrawal left it skipped.
            and_(
                c.state == "skipped",
                marked_withdrawn(),
                or_(
                    c.error.contains(MAY_HAVE_GONE, autoescape=True),
                    c.error == CUT_SHORT,
                    c.error == DIED_HOLDING,
                ),
            ),
        ),
    )
    with registry.engine.connect() as connection:
        rows = connection.execute(
            select(c.id, c.email, c.created_at, c.updated_at).where(may_have_gone)
        ).all()
    if not rows:
        return 0
    con.register(
        "may_have_gone",
        pa.table(
            {
                "outbox_id": pa.array([r.id for r in rows], pa.int64()),
                "email_name": pa.array([r.email for r in rows], pa.string()),
                "created_at": pa.array([r.created_at for r in rows], pa.timestamp("us")),
            }
        ),
    )
    try:
        first_event = dict(
            con.execute(
                "select outbox_id, min(e.occurred_at) from raw_events as e "
                "join may_have_gone as m using (outbox_id) "
                "where e.event in (select unnest($accepted)) "
                # SendGrid's times are whole seconds, cut down: an event of the second
                # the row was made in may come after it (queued and sent at once).
                "and e.occurred_at >= date_trunc('second', m.created_at) "
                "and (e.email_name is null or e.email_name = m.email_name) group by 1",
                {"accepted": list(_ACCEPTED_EVENTS)},
            ).fetchall()
        )
    finally:
        con.unregister("may_have_gone")
    # An event's time is whole seconds, cut down: the message went before the next one.
    gone = [
        {"row_id": r.id, "new_sent_at": max(r.updated_at, first_event[r.id] + timedelta(seconds=1))}
        for r in rows
        if r.id in first_event
    ]
    statement = (
        update(NOTIFICATIONS)
        .where(c.id == bindparam("row_id"), may_have_gone)
        .values(
            state="sent",
            sent_at=bindparam("new_sent_at"),
            # A withdrawal marks a held row: it goes if its send goes, and it went.
            skip_reason=None,
            error=None,
            updated_at=now,
            lease_expires_at=None,
            claim_token=None,
        )
    )
    settled = 0
    for start in range(0, len(gone), BATCH):
        with registry.writing() as connection:
            settled += connection.execute(statement, gone[start : start + BATCH]).rowcount
    return settled


def _shown(state: State) -> str:
    """A state as text to keep and compare: its parts as the registry gives them."""
    delivery, at, reason = state
    return repr((delivery, at.isoformat() if at else None, reason))


def _taken_back(registry: Registry, written: tuple[int, str] | None) -> bool:
    """Whether the registry no longer holds the state last written to it: restored from
    a backup made before (docs/runbook-operator.md, section 12). The states applied
    since that backup went with the restore, and re-running the days since loads no
    file again, so without this they never came back. One row read, not the outbox."""
    if written is None:
        return False
    found = _current(registry, [written[0]]).get(written[0])
    return found is None or _shown(found[1]) != written[1]


def _current(registry: Registry, ids: list[int]) -> dict[int, tuple[str | None, State]]:
    """Of ``ids``, the notifications in the registry: their message id and their
    delivery state as it stands."""
    c = NOTIFICATIONS.c
    found: dict[int, tuple[str | None, State]] = {}
    query = select(c.id, c.message_id, c.delivery, c.delivery_at, c.delivery_reason)
    with registry.engine.connect() as connection:
        for chunk in in_chunks(ids, BATCH):
            for i, message_id, delivery, at, reason in connection.execute(
                query.where(c.id.in_(chunk))
            ):
                found[i] = (message_id, (delivery, at, reason))
    return found
