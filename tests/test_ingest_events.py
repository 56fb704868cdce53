"""SendGrid's delivery events load like every landing file (docs/data-contracts.md):
each checked (a bad event quarantined with its file, place and reason), each event once
however often SendGrid posts it, many posts read as one batch yet each judged and
recorded on its own, and a file that is not a JSON array of events refused by name
while the others load."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from rollout import warehouse
from rollout.core.errors import BadInput
from rollout.warehouse import ingest
from tests.hostile import EVERYTHING
from tests.support.ingest import LIMIT, NOW, load

BLOCKED = "550 5.7.1 blocked"
STAMP = int((NOW - timedelta(days=1)).timestamp())


def event(number: int, **fields: Any) -> dict[str, Any]:
    """A delivered event of notification ``number``, as SendGrid posts it."""
    return {
        "email": f"user{number}@example.com",
        "timestamp": STAMP + number,
        "event": "delivered",
        "sg_event_id": f"event-{number}",
        "sg_message_id": f"message-{number}.filter0001.1.0",
        "outbox_id": str(number),
        "email_name": "phase_notice",
        "category": [],
        **fields,
    }


def _utc(stamp: int) -> datetime:
    return datetime.fromtimestamp(stamp, UTC).replace(tzinfo=None)


def post(root: Path, name: str, events: list[Any] | Any) -> Path:
    path = root / "events" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(events))
    return path


def run(con: duckdb.DuckDBPyConnection, root: Path, limit: float = LIMIT) -> ingest.IngestReport:
    return ingest.ingest(con, [root], quarantine_limit=limit, landing_root=root, now=NOW)


def stored(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return con.execute(
        "select sg_event_id, event, occurred_at, email, outbox_id, bounce_type, reason "
        "from raw_events order by sg_event_id"
    ).fetchall()


def test_a_post_loads_each_event_with_what_rollout_reads(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    bounce = event(2, event="bounce", type="blocked", reason=BLOCKED)
    deferral = event(3, event="deferred", response="421 try later", outbox_id=None)
    del deferral["outbox_id"]  # another sender's mail through the same account
    result = load(con, post(tmp_path, "events-1.json", [event(1), bounce, deferral]))
    assert (result.status, result.rows_loaded) == ("loaded", 3)
    assert stored(con) == [
        ("event-1", "delivered", _utc(STAMP + 1), "user1@example.com", 1, None, None),
        (
            "event-2",
            "bounce",
            _utc(STAMP + 2),
            "user2@example.com",
            2,
            "blocked",
            "550 5.7.1 blocked",
        ),
        ("event-3", "deferred", _utc(STAMP + 3), "user3@example.com", None, None, "421 try later"),
    ]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"sg_event_id": None}, "sg_event_id is missing"),
        ({"event": "Delivered!"}, "event 'Delivered!' is not an event type"),
        ({"event": None}, "event is missing"),
        ({"timestamp": "yesterday"}, "timestamp 'yesterday' is not a Unix time in whole seconds"),
        ({"timestamp": 1.5}, "timestamp '1.5' is not a Unix time in whole seconds"),
        ({"timestamp": None}, "timestamp is missing"),
        (
            {"timestamp": int((NOW + timedelta(days=2)).timestamp())},
            "timestamp 2022-02-03 12:00:00 is in the future",
        ),
        ({"timestamp": 0}, "timestamp 1970-01-01 00:00:00 is before 2000"),
        ({"outbox_id": "9223372036854775808"}, "outbox_id '9223372036854775808' is not a"),
        ({"outbox_id": "seven"}, "outbox_id 'seven' is not a positive whole number"),
        ({"outbox_id": "-7"}, "outbox_id '-7' is not a positive whole number"),
        ({"outbox_id": "0"}, "outbox_id '0' is not a positive whole number"),
        # Each field is a JSON string or number: anything else is no value, not its text.
        ({"email": ["user42@example.com"]}, "email is an array, not a string or a number"),
        ({"sg_event_id": {"id": "event-42"}}, "sg_event_id is an object, not a string or"),
        ({"reason": True}, "reason is a boolean, not a string or a number"),
        ({"outbox_id": [42]}, "outbox_id is an array, not a string or a number"),
    ],
)
def test_a_bad_event_is_quarantined_with_its_place_and_reason(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, fields: dict[str, Any], reason: str
) -> None:
    events = [event(n) for n in range(1, 100)]
    events[41] = {**events[41], **fields}
    result = load(con, post(tmp_path, "events-1.json", events), limit=0.05)
    assert (result.rows_loaded, result.rows_quarantined) == (98, 1)
    [(line, why)] = con.execute("select line, reason from quarantine").fetchall()
    assert line == 42
    assert why.startswith(reason)


def test_a_field_is_its_string_or_number_whatever_its_text_looks_like(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A string that reads like JSON stays that string; a number is its digits."""
    events = [
        event(1, email="[user1]@example.com", reason='{"not": "an object"}'),
        event(2, outbox_id=2, sg_event_id=20002),
    ]
    result = load(con, post(tmp_path, "events-1.json", events), limit=0.0)
    assert (result.rows_loaded, result.rows_quarantined) == (2, 0)
    assert stored(con) == [
        ("20002", "delivered", _utc(STAMP + 2), "user2@example.com", 2, None, None),
        (
            "event-1",
            "delivered",
            _utc(STAMP + 1),
            "[user1]@example.com",
            1,
            None,
            '{"not": "an object"}',
        ),
    ]


def test_event_types_rollout_has_no_use_for_load_all_the_same(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """SendGrid adds event types (account_status_change, ...): a post with one is not
    refused every day; it says nothing of delivery (int_notification_delivery)."""
    events = [
        event(1),
        event(2, event="account_status_change"),
        event(3, event="group_resubscribe"),
    ]
    events.append(event(4, outbox_id="9223372036854775807"))  # the largest id there is
    result = load(con, post(tmp_path, "events-1.json", events), limit=0.0)
    assert (result.rows_loaded, result.rows_quarantined) == (4, 0)
    assert stored(con)[3][4] == 9223372036854775807


def test_each_event_is_kept_once_however_often_it_is_posted(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """SendGrid posts a batch again when it thinks the first post failed: under a new
    signature, so another file with the same events; a batch may repeat one too."""
    post(tmp_path, "events-1.json", [event(1), event(2), event(1)])
    post(tmp_path, "events-2.json", [event(2), event(3)])
    report = run(con, tmp_path)
    assert [(f.rows_loaded, f.rows_duplicate) for f in report.files] == [(2, 1), (1, 1)]
    post(tmp_path, "events-3.json", [event(3), event(4)])
    again = run(con, tmp_path)
    assert [f.status for f in again.files] == ["skipped", "skipped", "loaded"]
    assert (again.files[2].rows_loaded, again.files[2].rows_duplicate) == (1, 1)
    assert [row[0] for row in stored(con)] == ["event-1", "event-2", "event-3", "event-4"]


def test_an_event_is_not_lost_when_the_file_that_brought_it_first_is_refused(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    post(tmp_path, "events-1.json", [event(1), 2])  # not an array of events: refused
    post(tmp_path, "events-2.json", [event(1)])
    report = run(con, tmp_path)
    assert [f.status for f in report.files] == ["rejected", "loaded"]
    assert [row[0] for row in stored(con)] == ["event-1"]


@pytest.mark.parametrize("name", ["events-1.json", "events-1.jsonl"])
def test_a_bad_event_is_quarantined_whatever_its_share_of_its_file(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, name: str
) -> None:
    """Events stand alone and a post holds a handful: one bad event of two (50%, far
    over the 1% limit) refused the whole file on every run, the good one never loaded."""
    events = [event(1), event(2, outbox_id="newsletter-7")]
    path = tmp_path / "events" / name
    path.parent.mkdir(parents=True)
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(e) + "\n" for e in events))
    else:
        path.write_text(json.dumps(events))
    result = load(con, path, limit=0.01)
    assert (result.status, result.rows_loaded, result.rows_quarantined) == ("loaded", 1, 1)
    assert [row[0] for row in stored(con)] == ["event-1"]
    assert con.execute("select line, reason from quarantine").fetchall() == [
        (2, "outbox_id 'newsletter-7' is not a positive whole number")
    ]


@pytest.mark.parametrize(
    ("content", "where", "reason"),
    [
        ('{"event": "delivered"}', "", "expected a JSON array of events, found an object"),
        ("[1, 2]", ":1", "event 1 is a number, not an object"),
        ('[{"event": "delivered"}, "x"]', ":1", "event 2 is a string, not an object"),
        # The line the event is on, not its place in the array.
        ('[\n{"event": "delivered"},\n\n "x"\n]', ":4", "event 2 is a string, not an object"),
        ('[{"event": \n "delivered"', ":2", "malformed JSON"),
    ],
)
def test_a_file_that_is_not_an_array_of_events_is_refused_by_name_and_the_rest_load(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, content: str, where: str, reason: str
) -> None:
    post(tmp_path, "events-1.json", [event(1)])
    bad = tmp_path / "events" / "events-2.json"
    bad.write_text(content)
    post(tmp_path, "events-3.json", [event(3)])
    report = run(con, tmp_path)
    assert [f.status for f in report.files] == ["loaded", "rejected", "loaded"]
    assert report.files[1].message.startswith(f"{bad}{where}: {reason}")
    assert [row[0] for row in stored(con)] == ["event-1", "event-3"]
    with pytest.raises(BadInput, match=reason):
        load(con, bad)


def test_an_empty_post_is_refused(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no events: the file is empty"):
        load(con, post(tmp_path, "events-1.json", []))


def test_many_posts_load_as_one_batch_each_recorded_on_its_own(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    for number in range(1, 51):
        events = [event(number * 10 + k) for k in range(3)]
        if number == 17:
            events[1]["event"] = "Nope!"
        post(tmp_path, f"events-{number:03d}.json", events)
    report = run(con, tmp_path, limit=0.5)
    assert report.loaded == 50 and report.rows_loaded == 149
    files = con.execute(
        "select path, rows_read, rows_loaded, rows_quarantined from ingested_files order by file_id"
    ).fetchall()
    assert [Path(p).name for p, *_ in files] == [f"events-{n:03d}.json" for n in range(1, 51)]
    assert files[16][1:] == (3, 2, 1)
    assert con.execute("select path, line from quarantine").fetchall() == [(files[16][0], 2)]
    # One file's events each name that file.
    per_file = dict(
        con.execute(
            "select f.path, count(*) from raw_events join ingested_files f using (file_id) "
            "group by all"
        ).fetchall()
    )
    assert per_file[files[0][0]] == 3 and per_file[files[16][0]] == 2


@pytest.mark.parametrize("value", EVERYTHING)
def test_hostile_values_are_kept_as_data(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, value: str
) -> None:
    hostile = event(1, email=value, reason=value, sg_event_id=value)
    load(con, post(tmp_path, "events-1.json", [hostile, event(2, event=value)]), limit=0.5)
    # Stored as sent (ids and names trimmed of spaces, as every landing text is).
    assert stored(con)[0][0] == value.strip(" ") and stored(con)[0][6] == value
    [(record,)] = con.execute("select record from quarantine").fetchall()
    assert json.loads(record)["event"] == value.strip(" ")
    assert warehouse.scalar(con, "select count(*) from raw_events") == 1
