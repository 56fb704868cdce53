"""Each sent email's delivery state comes from its SendGrid events, whatever their
order or repeats: the most final decides; states reach the registry as ingest loads
new events, once, and the same again after the warehouse is rebuilt."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlalchemy import select, update

from rollout import warehouse
from rollout.notify.delivery import DeliveryReport, apply_delivery
from rollout.notify.drain import _claim, _Outcome, _put_back, _record, _requeue_in_flight
from rollout.notify.message import MAY_HAVE_GONE
from rollout.notify.outbox import CUT_SHORT, retry_failed
from rollout.registry import Registry, migrate
from rollout.registry.models import Notification, RegistryChange
from rollout.warehouse import ingest
from tests.factories import NotificationFactory, bound_to

STAMP = 1_641_800_000  # 2022-01-10, SendGrid's time
NOW = datetime(2022, 2, 1)


def event(outbox_id: int | str, kind: str, at: int, **fields: Any) -> dict[str, Any]:
    return {
        "sg_event_id": f"{outbox_id}-{kind}-{at}",
        "event": kind,
        "timestamp": STAMP + at,
        "email": f"maintainer{outbox_id}@example.com",
        "outbox_id": str(outbox_id),
        **fields,
    }


class Events:
    """Posts landed under ``root``, ingested and applied as the daily run does."""

    def __init__(self, root: Path, con: duckdb.DuckDBPyConnection, registry: Registry) -> None:
        self.root, self.con, self.registry = root, con, registry
        self.posts = 0

    def post(self, *events: dict[str, Any]) -> None:
        self.posts += 1
        path = self.root / "events" / f"events-{self.posts:04d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(list(events)))

    def apply(self) -> DeliveryReport:
        ingest.ingest(self.con, [self.root], quarantine_limit=0.0, landing_root=self.root, now=NOW)
        return apply_delivery(self.con, self.registry)


@pytest.fixture
def sent(registry: Registry) -> list[int]:
    """Five emails sent to five maintainers."""
    with bound_to(registry.engine):
        return [NotificationFactory(state="sent").id for _ in range(5)]


@pytest.fixture
def events(tmp_path: Path, con: duckdb.DuckDBPyConnection, registry: Registry) -> Events:
    return Events(tmp_path / "landing", con, registry)


def states(registry: Registry) -> dict[int, tuple[str | None, datetime | None, str | None]]:
    with registry.engine.connect() as connection:
        rows = connection.execute(
            select(
                Notification.id,
                Notification.delivery,
                Notification.delivery_at,
                Notification.delivery_reason,
            )
        ).all()
    return {i: (d, at, reason) for i, d, at, reason in rows}


def at(offset: int) -> datetime:
    return datetime.fromtimestamp(STAMP + offset, UTC).replace(tzinfo=None)


def test_the_most_final_event_decides_whatever_the_order(
    registry: Registry, sent: list[int], events: Events
) -> None:
    a, b, c, d, e = sent
    events.post(
        event(a, "delivered", 5),
        event(a, "processed", 1),  # late, and less final
        event(b, "deferred", 2, response="421 mailbox busy"),
        event(b, "bounce", 9, type="bounce", reason="550 no such user"),
        event(b, "deferred", 12, response="421 again"),
        event(c, "processed", 1),
        event(c, "dropped", 2, reason="Bounced Address"),
        event(d, "delivered", 3),
        event(d, "spamreport", 30),
        event(d, "open", 40),
    )
    report = events.apply()
    assert report.notifications == 4 and report.unknown == 0
    assert states(registry) == {
        a: ("delivered", at(5), None),
        b: ("bounced", at(9), "bounce: 550 no such user"),
        c: ("dropped", at(2), "Bounced Address"),
        d: ("spam_report", at(30), None),
        e: (None, None, None),  # no event yet
    }


def test_a_deferral_then_a_delivery_is_delivered_and_an_open_proves_delivery(
    registry: Registry, sent: list[int], events: Events
) -> None:
    a, b, *_ = sent
    events.post(event(a, "processed", 1), event(a, "deferred", 2), event(b, "processed", 1))
    events.apply()
    assert states(registry)[a][0] == "deferred" and states(registry)[b][0] == "processed"
    events.post(event(a, "delivered", 60), event(b, "open", 70))
    events.apply()
    assert states(registry)[a] == ("delivered", at(60), None)
    assert states(registry)[b] == ("delivered", at(70), None)


def test_only_new_events_are_applied_and_a_rebuilt_warehouse_writes_the_same(
    registry: Registry,
    sent: list[int],
    events: Events,
    tmp_path: Path,
) -> None:
    a, b, *_ = sent
    events.post(event(a, "delivered", 1), event(b, "bounce", 2, reason="550"))
    first = events.apply()
    assert first.notifications == 2
    nothing = events.apply()
    assert (nothing.notifications, nothing.applied_file_id) == (0, first.applied_file_id)
    events.post(event(b, "open", 3))  # says nothing new of b: bounced stays
    assert events.apply().notifications == 0  # nothing written
    before = states(registry)
    # The warehouse is derived: deleted and rebuilt, it gives the registry the same.
    with registry.engine.begin() as connection:
        connection.execute(Notification.__table__.update().values(delivery=None))
    fresh = warehouse.connect(tmp_path / "rebuilt.duckdb")
    rebuilt = Events(events.root, fresh, registry)
    rebuilt.apply()
    assert states(registry) == before


def test_events_naming_no_notification_are_counted_not_applied(
    registry: Registry, sent: list[int], events: Events
) -> None:
    events.post(event(sent[0], "delivered", 1), event(999_999, "delivered", 1))
    report = events.apply()
    assert (report.notifications, report.unknown) == (1, 1)


def test_the_deciding_events_reason_is_kept_even_when_it_has_none(
    registry: Registry, sent: list[int], events: Events
) -> None:
    a, b, c, *_ = sent
    events.post(
        event(a, "deferred", 1, response="421 4.7.0 try again later"),
        event(a, "bounce", 2),  # no reason: not the deferral's
        event(b, "delivered", 1, response="250 OK"),
        event(b, "spamreport", 5),
        # Two bounces in one second: the same one decides every time (by event id).
        event(c, "bounce", 7, reason="550 first", sg_event_id="c-2"),
        event(c, "bounce", 7, reason="550 second", sg_event_id="c-1"),
    )
    events.apply()
    found = states(registry)
    assert found[a] == ("bounced", at(2), None)
    assert found[b] == ("spam_report", at(5), None)
    assert found[c] == ("bounced", at(7), "550 first")


def test_events_of_another_message_do_not_touch_a_notification_of_the_same_id(
    registry: Registry, events: Events
) -> None:
    """A registry replaced by another, its warehouse kept: the old registry's events name
    outbox ids the new one has too, but not its messages."""
    with bound_to(registry.engine):
        ours = NotificationFactory(state="sent", message_id="new-message").id
    events.post(
        event(ours, "bounce", 1, sg_message_id="old-message.filter0001.1.0"),
        event(ours, "delivered", 2, sg_message_id="new-message.filter0002.3.0"),
    )
    events.apply()
    assert states(registry)[ours] == ("delivered", at(2), None)


def test_another_registry_gets_every_event_applied_afresh(
    registry: Registry, sent: list[int], events: Events
) -> None:
    events.post(event(sent[0], "delivered", 1))
    events.apply()
    with registry.engine.begin() as connection:  # as if the registry were another one
        connection.execute(Notification.__table__.update().values(delivery=None))
        connection.execute(RegistryChange.__table__.update().values(instance="another"))
    assert events.apply().notifications == 1
    assert states(registry)[sent[0]][0] == "delivered"


def test_states_a_downgrade_below_0014_dropped_are_applied_again_after_the_upgrade(
    registry: Registry, sent: list[int], events: Events
) -> None:
    """`rollout db downgrade 0013` drops the states with their columns, and the events
    stay in the warehouse; back at the newest revision, the warehouse still counted them
    applied to this registry, so the next ingest applied only newer events: every email
    sent before read 'not delivered yet' (never reached, for the preview and the
    guard of max_unreached_share), for good."""
    a, b, c, *_ = sent
    events.post(
        event(a, "delivered", 5),
        event(b, "bounce", 9, type="bounce", reason="550 no such user"),
    )
    events.apply()
    applied = states(registry)
    migrate.downgrade(registry.engine, "0013")
    migrate.upgrade(registry.engine)
    assert states(registry)[a] == (None, None, None)  # gone with the columns
    events.post(event(c, "delivered", 20))  # the next day's post
    events.apply()
    assert states(registry) == {**applied, c: ("delivered", at(20), None)}


def test_states_a_restore_took_back_are_applied_again_by_the_next_ingest(
    registry: Registry, sent: list[int], events: Events
) -> None:
    """The registry restored from a backup made before the last ingest applied its
    events (docs/runbook-operator.md, section 12): the warehouse still counted them
    applied, so re-running the days since, which the runbook says does what is missing,
    left those emails 'not delivered yet' for good."""
    a, b, c, *_ = sent
    events.post(event(a, "delivered", 5))
    events.apply()  # the backup is made after this
    events.post(event(b, "bounce", 9, type="bounce", reason="550 no such user"))
    events.post(event(c, "delivered", 7))
    events.apply()
    applied = states(registry)
    with registry.engine.begin() as connection:  # the restore: b and c as backed up
        connection.execute(
            update(Notification)
            .where(Notification.id.in_([b, c]))
            .values(delivery=None, delivery_at=None, delivery_reason=None)
        )
    events.apply()  # the day run again: no new file
    assert states(registry) == applied
    report = events.apply()  # and then nothing more to do
    assert report.notifications == 0


def test_a_send_that_went_unanswered_is_recorded_sent_when_its_events_show_it_went(
    registry: Registry, events: Events
) -> None:
    """A send whose request went and got no answer fails, 'SendGrid may have sent it'
    (no message id recorded); so does one a stop cut short (queued again). The runbook
    said to retry only those that never went, but `--retry-failed` queued every failed
    email again: one SendGrid's events showed delivered was sent a second time, and its
    account counted as never sent the notice."""
    unanswered = (
        "outbox 1: no answer from SendGrid within 10s after the request went: "
        f"{MAY_HAVE_GONE}, so it is not sent again"
    )
    ended = datetime(2022, 1, 10, 8, 30)
    with bound_to(registry.engine):
        went = NotificationFactory(state="failed", error=unanswered, updated_at=ended).id
        cut_short = NotificationFactory(state="queued", error=CUT_SHORT, updated_at=ended).id
        # Held by a drainer that died mid-send (its lease ran out), or by one sending now.
        held_by_the_dead = NotificationFactory(
            state="sending",
            updated_at=ended,
            lease_expires_at=ended + timedelta(minutes=5),
            skip_reason="withdrawn: wrong text",  # withdrawn while held: it went
        ).id
        held_now = NotificationFactory(
            state="sending", updated_at=ended, lease_expires_at=datetime(2999, 1, 1)
        ).id
        never_went = NotificationFactory(state="failed", error=unanswered).id
        # Refused outright: an event naming its outbox id is another message's.
        refused = NotificationFactory(state="failed", error="SendGrid answered 400: x").id
        # Events of another kind of email, or from before the row was made, are not its.
        other_kind = NotificationFactory(state="failed", error=unanswered).id
        made_later = NotificationFactory(
            state="failed", error=unanswered, created_at=datetime(2022, 1, 11)
        ).id
    events.post(
        event(went, "processed", 1, email_name="phase_notice"),
        event(went, "delivered", 2, email_name="phase_notice"),
        event(cut_short, "deferred", 3),
        event(held_by_the_dead, "processed", 3),
        event(held_now, "processed", 3),
        event(refused, "delivered", 4),
        event(other_kind, "delivered", 5, email_name="reminder"),
        event(made_later, "delivered", 6, email_name="phase_notice"),
    )
    report = events.apply()
    assert report.gone == 3
    with registry.engine.connect() as connection:
        rows = {
            r.id: r
            for r in connection.execute(
                select(
                    Notification.id,
                    Notification.state,
                    Notification.sent_at,
                    Notification.error,
                    Notification.skip_reason,
                )
            )
        }
    assert [
        (rows[i].state, rows[i].sent_at, rows[i].error or rows[i].skip_reason)
        for i in (went, cut_short, held_by_the_dead, held_now)
    ] == [
        ("sent", ended, None),
        ("sent", ended, None),
        ("sent", ended, None),
        ("sending", None, None),  # its drainer records it
    ]
    assert states(registry)[went][0] == "delivered"
    # Only the failed emails no event shows went are queued again.
    assert retry_failed(registry) == 4
    with registry.engine.connect() as connection:
        queued = set(
            connection.scalars(select(Notification.id).where(Notification.state == "queued"))
        )
    assert queued == {never_went, refused, other_kind, made_later}
    assert events.apply().gone == 0  # once


def test_a_withdrawn_email_whose_send_went_is_recorded_sent_whatever_ended_its_hold(
    registry: Registry, events: Events
) -> None:
    """An email withdrawn while a drain held it goes only if that send goes (rollout.notify
    .withdraw). Each way its hold ended unanswered made it skipped, the withdrawal's
    reason, and no word that its send may have gone: SendGrid's events showing it went
    were never applied, and its account counted as never told."""
    held = datetime(2022, 1, 10, 8, 30)
    reason = "withdrawn: wrong text"
    with bound_to(registry.engine):
        ids = [
            NotificationFactory(
                state="sending",
                skip_reason=reason,
                updated_at=held,
                lease_expires_at=held + timedelta(minutes=5),
            ).id
            for _ in range(5)
        ]
    unanswered, cut_short, died, _lapsed, refused = ids
    after = held + timedelta(minutes=1)
    _record(
        registry.engine,
        [
            _Outcome(unanswered, "failed", f"no answer after the request went: {MAY_HAVE_GONE}"),
            _Outcome(refused, "failed", "SendGrid answered 400: x"),  # it did not go
        ],
        after,
    )
    _put_back(registry.engine, [cut_short], after)  # a stop cut its send short
    # `lapsed`: its drainer died and its lease ran out (a shard's claim settles it);
    # `died`: held without a lease when a drain, its run lock taken, requeues what a
    # dead drain held.
    assert _claim(registry.engine, 10, held + timedelta(hours=1), "sendgrid") == []
    with registry.engine.begin() as connection:
        connection.execute(
            update(Notification).where(Notification.id == died).values(lease_expires_at=None)
        )
    _requeue_in_flight(registry.engine, held + timedelta(hours=1))
    with registry.engine.connect() as connection:
        before = dict(connection.execute(select(Notification.id, Notification.state)).all())
    assert set(before.values()) == {"skipped"}
    events.post(*(event(i, "processed", 3) for i in ids))
    assert events.apply().gone == 4
    with registry.engine.connect() as connection:
        after_events = dict(connection.execute(select(Notification.id, Notification.state)).all())
    assert [after_events[i] for i in ids] == ["sent", "sent", "sent", "sent", "skipped"]
    assert events.apply().gone == 0  # once


def test_an_email_accepted_without_a_message_id_gets_its_events(
    registry: Registry, events: Events
) -> None:
    """SendGrid (or a proxy before it) answered 202 without X-Message-Id: the send is
    recorded with an empty message id, which no event's sg_message_id starts with, so
    its delivery stayed unknown for good ('not delivered yet': never reached)."""
    with bound_to(registry.engine):
        accepted = NotificationFactory(state="sent", message_id="").id
    events.post(event(accepted, "delivered", 1, sg_message_id="abc.filter0001.1.0"))
    events.apply()
    assert states(registry)[accepted] == ("delivered", at(1), None)


def test_a_send_that_went_unanswered_in_the_second_it_was_queued_is_recorded_sent(
    registry: Registry, events: Events
) -> None:
    """SendGrid's event times are whole seconds, cut down; the row's creation time has
    microseconds. An email queued at 08:30:00.6 and sent at once is processed by SendGrid
    at 08:30:00.9, an event of 08:30:00: it read as from before the row was made, the
    send stayed failed, and `--retry-failed` sent it a second time."""
    queued = at(0) + timedelta(milliseconds=600)
    unanswered = (
        f"outbox 1: no answer from SendGrid within 10s after the request went: {MAY_HAVE_GONE}"
    )
    with bound_to(registry.engine):
        went = NotificationFactory(
            state="failed", error=unanswered, created_at=queued, updated_at=queued
        ).id
        earlier = NotificationFactory(
            state="failed",
            error=unanswered,
            created_at=at(1) + timedelta(milliseconds=1),
            updated_at=at(1),
        ).id
    events.post(
        event(went, "processed", 0, email_name="phase_notice"),
        # A second before the row's: another registry's email of the same outbox id.
        event(earlier, "processed", 0, email_name="phase_notice"),
    )
    assert events.apply().gone == 1
    with registry.engine.connect() as connection:
        rows = dict(connection.execute(select(Notification.id, Notification.state)).all())
    assert (rows[went], rows[earlier]) == ("sent", "failed")
    assert retry_failed(registry) == 1  # only the one no event shows went
