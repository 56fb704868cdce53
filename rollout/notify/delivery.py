"""Delivery states: what SendGrid's events say became of each sent email, written to
the registry's notifications so previews and enforcement can ask who was reached.

Ingest loads the Event Webhook's files into the warehouse (``raw_events``); this
recomputes the state of every notification an event loaded since the last time names
(``sql/intermediate/int_notification_delivery.sql``: the most final of all its
events) and writes it, then records the last file applied (``delivery_state``). The
state depends only on the set of a notification's events, so applying again, in any
order or after the warehouse is rebuilt, writes the same: a crash between the
registry's commit and the warehouse's leaves the next run to write it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
from sqlalchemy import bindparam, update

from rollout import warehouse
from rollout.registry import Registry
from rollout.registry.models import Notification

NOTIFICATIONS = Notification.__table__
# Notifications written a transaction at a time: a day of a big campaign is ~1M
# events, a quarter of a million notifications.
BATCH = 10_000


@dataclass(frozen=True)
class DeliveryReport:
    notifications: int = 0  # states written
    unknown: int = 0  # outbox ids in events that name no notification (another sender's?)
    applied_file_id: int = 0  # the last ingested file whose events are applied

    def summary(self) -> dict[str, Any]:
        return {
            "notifications": self.notifications,
            "unknown": self.unknown,
            "applied_file_id": self.applied_file_id,
        }


def _applied(con: duckdb.DuckDBPyConnection) -> int:
    return int(
        warehouse.scalar(con, "select coalesce(max(applied_file_id), 0) from delivery_state")
    )


def apply_delivery(
    con: duckdb.DuckDBPyConnection,
    registry: Registry,
    *,
    full: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> DeliveryReport:
    """Write to the registry the delivery state of each notification with an event
    loaded since the last call (``full``: of every notification with an event)."""
    since = 0 if full else _applied(con)
    latest = int(warehouse.scalar(con, "select coalesce(max(file_id), 0) from ingested_files"))
    if latest <= since:
        return DeliveryReport(applied_file_id=since)
    states = warehouse.run(
        con,
        "intermediate/int_notification_delivery",
        {"since_file_id": since},
    ).fetchall()
    statement = (
        update(NOTIFICATIONS)
        .where(NOTIFICATIONS.c.id == bindparam("outbox_id"))
        .values(
            delivery=bindparam("new_delivery"),
            delivery_at=bindparam("new_at"),
            delivery_reason=bindparam("new_reason"),
        )
        # Only rows whose state changes: a notification's events keep coming
        # (processed, then delivered, then opens); most re-applications change nothing.
        .where(
            NOTIFICATIONS.c.delivery.is_distinct_from(bindparam("new_delivery"))
            | NOTIFICATIONS.c.delivery_at.is_distinct_from(bindparam("new_at"))
        )
    )
    ids = [row[0] for row in states]
    known = _existing(registry, ids)
    written = 0
    for start in range(0, len(states), BATCH):
        chunk = [
            {"outbox_id": outbox_id, "new_delivery": state, "new_at": at, "new_reason": reason}
            for outbox_id, state, at, reason in states[start : start + BATCH]
            if outbox_id in known
        ]
        if chunk:
            with registry.engine.begin() as connection:
                connection.execute(statement, chunk)
            written += len(chunk)
        if progress is not None:
            progress(min(start + BATCH, len(states)), len(states))
    with warehouse.transaction(con):
        con.execute("delete from delivery_state")
        con.execute("insert into delivery_state values ($latest)", {"latest": latest})
    return DeliveryReport(written, len(ids) - len(known), latest)


def _existing(registry: Registry, ids: list[int]) -> set[int]:
    """Of ``ids``, those of notifications in the registry."""
    found: set[int] = set()
    statement = NOTIFICATIONS.select().with_only_columns(NOTIFICATIONS.c.id)
    with registry.engine.connect() as connection:
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            found.update(
                connection.execute(statement.where(NOTIFICATIONS.c.id.in_(chunk))).scalars()
            )
    return found
