"""An outbox row sent twice (a sender paused past its lease: another shard took its
row over and sent it, then the paused one's request went out too) reaches its
maintainer twice, and the registry records one send: its delivery state counts only
the events of the message id it recorded (int_notification_delivery). The warehouse's
duplicate_sends lists such rows from SendGrid's events, and `rollout doctor`'s sends
row warns of those of the last week."""

from __future__ import annotations

import time
from datetime import UTC, timedelta
from pathlib import Path

import duckdb
import pytest

from rollout import warehouse
from rollout.ops import doctor
from rollout.ops.doctor import DUPLICATE_SENDS_DAYS, Status, check_duplicate_sends
from tests.hostile import TERMINAL
from tests.support.ingest import NOW

from .test_ingest_events import event, post, run


def ingested(tmp_path: Path, events: list[dict[str, object]]) -> Path:
    """A warehouse with ``events`` loaded from one SendGrid post."""
    root = tmp_path / "landing"
    post(root, "post-1.json", events)
    path = tmp_path / "warehouse.duckdb"
    con = warehouse.connect(path)
    try:
        report = run(con, root)
    finally:
        con.close()
    assert report.loaded == 1, report
    return path


def sends(path: Path) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(
            warehouse.render("marts/duplicate_sends"), {"since": NOW - timedelta(days=7)}
        ).fetchall()
    finally:
        con.close()


def test_an_outbox_row_sent_twice_is_listed_and_the_doctor_warns(tmp_path: Path) -> None:
    path = ingested(
        tmp_path,
        [
            # Notification 5 sent by the taker (message-5), then by the paused shard.
            event(5, event="processed", sg_event_id="a"),
            event(5, sg_event_id="b"),
            event(5, sg_event_id="c", sg_message_id="message-5-again.filter0002.4.0"),
            # Notification 6: one send, its events from two of SendGrid's filters.
            event(6, sg_event_id="d"),
            event(6, event="open", sg_event_id="e", sg_message_id="message-6.filter0009.2.1"),
        ],
    )
    assert [(row[0], row[1], row[3], row[6]) for row in sends(path)] == [
        (5, "user5@example.com", 2, ["message-5", "message-5-again"])
    ]
    result = check_duplicate_sends(path, NOW.replace(tzinfo=UTC))
    assert result.status is Status.warn, result
    assert "1 outbox row sent more than once" in result.detail
    assert "outbox ids 5 (phase_notice x2)" in result.detail
    assert "user5@example.com" not in result.detail  # no address in a monitor's mail

    # A week later it is no longer news.
    later = NOW.replace(tzinfo=UTC) + timedelta(days=DUPLICATE_SENDS_DAYS + 1)
    assert check_duplicate_sends(path, later).status is Status.ok


def test_a_registry_replaced_under_the_warehouse_reusing_outbox_ids_is_not_a_second_send(
    tmp_path: Path,
) -> None:
    """A new registry numbers its outbox from 1 again: its notification 7, to another
    address, is another row, not a second send of the old one's 7."""
    path = ingested(
        tmp_path,
        [
            event(7, sg_event_id="old"),
            event(
                7,
                sg_event_id="new",
                email="someone.else@example.com",
                sg_message_id="message-new.filter0001.1.0",
            ),
        ],
    )
    assert sends(path) == []
    assert check_duplicate_sends(path, NOW.replace(tzinfo=UTC)).status is Status.ok


def test_a_hostile_email_name_in_the_doctor_row_stays_data(tmp_path: Path) -> None:
    name = TERMINAL[0]
    path = ingested(
        tmp_path,
        [
            event(8, sg_event_id="x", email_name=name),
            event(8, sg_event_id="y", email_name=name, sg_message_id="other.filter0001.1.0"),
        ],
    )
    result = check_duplicate_sends(path, NOW.replace(tzinfo=UTC))
    assert result.status is Status.warn
    assert "\x1b" not in result.detail and "outbox ids 8 (" in result.detail


def test_no_warehouse_yet_is_nothing_sent_twice(tmp_path: Path) -> None:
    result = check_duplicate_sends(tmp_path / "warehouse.duckdb", NOW.replace(tzinfo=UTC))
    assert result.status is Status.ok
    assert not (tmp_path / "warehouse.duckdb").exists()


def test_a_season_of_events_too_long_to_scan_is_let_go_and_a_run_writes_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Millions of SendGrid events took the sends row 17 s at npm scale, each a second
    that no run could write the warehouse (DuckDB: readers or one writer), and the cron
    job of every 5 minutes a slow one. Past WAREHOUSE_SECONDS the query is stopped,
    the warehouse let go, and the row says it did not check."""
    path = tmp_path / "warehouse.duckdb"
    con = warehouse.connect(path)
    con.execute(
        "insert into raw_events (sg_event_id, event, occurred_at, email, outbox_id, "
        "email_name, sg_message_id, file_id) "
        "select 'e' || i, 'delivered', $now, 'user' || i || '@example.com', i, "
        "'phase_notice', 'message-' || i || '.filter0001.1.0', 1 from range(3000000) t(i)",
        {"now": NOW},
    )
    con.close()
    monkeypatch.setattr(doctor, "WAREHOUSE_SECONDS", 0.05)

    started = time.monotonic()
    result = check_duplicate_sends(path, NOW.replace(tzinfo=UTC))
    took = time.monotonic() - started

    assert result.status is Status.warn, result
    assert "not checked" in result.detail and "0.05 s" in result.detail
    assert "duplicate_sends" in result.detail
    assert took < 1.5, took
    warehouse.connect(path).close()  # a run opens it for writing at once
