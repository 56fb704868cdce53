"""An outbox row sent twice (a sender paused past its lease: another shard took its
row over and sent it, then the paused one's request went out too) reaches its
maintainer twice, and the registry records one send: its delivery state counts only
the events of the message id it recorded (int_notification_delivery). The warehouse's
duplicate_sends lists such rows from SendGrid's events, and `rollout doctor`'s sends
row warns of those of the last week."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout import warehouse
from rollout.ops import doctor
from rollout.ops.doctor import DUPLICATE_SENDS_DAYS, Status, check_duplicate_sends
from tests.hostile import TERMINAL
from tests.support.ingest import NOW

from .test_ingest_events import STAMP, event, post, run


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
    assert "outbox ids 5 ('phase_notice' x2)" in result.detail
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


def test_a_season_of_events_is_answered_from_the_kept_table_in_milliseconds(
    tmp_path: Path,
) -> None:
    """Millions of SendGrid events took the sends row 17 s when it grouped them all (then
    it gave up after WAREHOUSE_SECONDS and said "not checked", every 5 minutes). Ingest
    keeps the duplicate sends as it loads the events; the doctor reads that small table,
    and says as of which load."""
    path = tmp_path / "warehouse.duckdb"
    con = warehouse.connect(path)
    with warehouse.transaction(con):
        con.execute(
            "insert into ingested_files (file_id, kind, path, sha256, bytes, rows_read, "
            "rows_loaded, rows_duplicate, rows_quarantined, loaded_at) "
            "values (1, 'events', 'events/season.json', 'x', 0, 0, 0, 0, 0, $now)",
            {"now": NOW},
        )
        # 3M events of 1.5M outbox rows; the row 12345 sent twice.
        con.execute(
            "insert into raw_events (sg_event_id, event, occurred_at, email, outbox_id, "
            "email_name, sg_message_id, file_id) "
            "select 'e' || i, 'delivered', $now, 'user' || (i // 2) || '@example.com', "
            "i // 2, 'phase_notice', 'message-' || (i // 2) || "
            "case when i = 24691 then '-again' else '' end || '.filter0001.1.0', 1 "
            "from range(3000000) t(i)",
            {"now": NOW},
        )
        warehouse.keep_sends(con, 1, NOW)
    con.close()

    started = time.monotonic()
    result = check_duplicate_sends(path, NOW.replace(tzinfo=UTC))
    took = time.monotonic() - started

    assert result.status is Status.warn, result
    assert "outbox ids 12345 ('phase_notice' x2)" in result.detail
    assert f"as of the events loaded at {NOW:%Y-%m-%d %H:%M} UTC" in result.detail
    assert took < doctor.WAREHOUSE_SECONDS / 4, took
    warehouse.connect(path).close()  # a run opens it for writing at once


# The query the sends row ran over every event before ingest kept them: the reference
# the kept table must equal, however the events were split into loads.
EVERY_EVENT = """
with sends as (
    select outbox_id, email, email_name, split_part(sg_message_id, '.', 1) as message_id,
        min(occurred_at) as first_event_at
    from raw_events
    where outbox_id is not null and nullif(email, '') is not null
        and nullif(split_part(sg_message_id, '.', 1), '') is not null
    group by outbox_id, email, email_name, split_part(sg_message_id, '.', 1)
)
select outbox_id, email, email_name, count(*), min(first_event_at), max(first_event_at),
    list(message_id order by first_event_at, message_id)
from sends group by outbox_id, email, email_name
having count(*) > 1 and max(first_event_at) >= $since
order by 5, 1, 2, 3
"""

one_event = st.builds(
    lambda number, message, address, name, second, blank: event(
        number,
        email=f"user{address}@example.com",
        email_name=name,
        sg_message_id="" if blank else f"m{number}-{message}.filter000{second % 3}.1.0",
        timestamp=STAMP + second,
    ),
    number=st.integers(1, 2),
    message=st.integers(1, 3),
    address=st.sampled_from([1, 1, 1, 2]),
    name=st.sampled_from(["phase_notice", "phase_notice", None]),
    second=st.integers(0, 9),
    blank=st.sampled_from([False, False, False, True]),  # SendGrid gave no message id
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(loads=st.lists(st.lists(one_event, min_size=1, max_size=6), min_size=1, max_size=4))
def test_the_sends_kept_load_by_load_equal_the_query_over_every_event(
    loads: list[list[dict[str, object]]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """However SendGrid's events arrive (one post or many, a send's events split across
    them, an earlier event in a later post), what ingest keeps is what grouping every
    event at once gives."""
    root = tmp_path_factory.mktemp("loads")
    con = warehouse.connect(root / "warehouse.duckdb")
    try:
        for index, events in enumerate(loads):
            for position, one in enumerate(events):
                one["sg_event_id"] = f"load{index}-{position}"
            post(root / "landing", f"post-{index}.json", events)
            run(con, root / "landing")
        since = datetime.fromtimestamp(STAMP + 5, UTC).replace(tzinfo=None)
        kept = con.execute(warehouse.render("marts/duplicate_sends"), {"since": since})
        assert kept.fetchall() == con.execute(EVERY_EVENT, {"since": since}).fetchall()
    finally:
        con.close()


def test_a_warehouse_made_before_the_sends_were_kept_is_filled_by_the_next_run(
    tmp_path: Path,
) -> None:
    path = ingested(
        tmp_path,
        [
            event(5, sg_event_id="a"),
            event(5, sg_event_id="b", sg_message_id="message-5-again.filter0002.4.0"),
        ],
    )
    con = warehouse.connect(path)
    for table in ("event_sends", "duplicate_sends_kept", "sends_kept"):
        con.execute(f"drop table {table}")  # as an older rollout left it
    con.close()
    before = check_duplicate_sends(path, NOW.replace(tzinfo=UTC))
    assert before.status is Status.warn
    assert "not checked" in before.detail and "rollout ingest" in before.detail

    warehouse.connect(path).close()  # the next run that writes it

    after = check_duplicate_sends(path, NOW.replace(tzinfo=UTC))
    assert after.status is Status.warn, after
    assert "outbox ids 5 ('phase_notice' x2)" in after.detail
