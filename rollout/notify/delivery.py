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
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb
import pyarrow as pa
from sqlalchemy import bindparam, func, select, update

from rollout import warehouse
from rollout.registry import Registry
from rollout.registry.batches import in_chunks
from rollout.registry.engine import begin_writing
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
        return DeliveryReport(applied_file_id=since)
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
        with begin_writing(registry.engine) as connection:
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
    return DeliveryReport(len(changed), len(touched) - len(current), latest)


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
