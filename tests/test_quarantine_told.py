"""Quarantined rows are told to the operator, not only kept: `rollout ingest` warns on
stderr (a file nothing of which loaded by name), the daily flow logs it, and `rollout
doctor` names the last week's quarantined rows by kind, and each file every row of which
was bad, with the command that lists them (docs/runbook-operator.md)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rollout.cli import app
from rollout.ops.doctor import QUARANTINE_DAYS, Status, check_quarantine

from .conftest import DATA

RUNNER = CliRunner()


def run(*args: str) -> object:
    return RUNNER.invoke(app, list(args))


def sendgrid_post(landing: Path, name: str, count: int, **fields: object) -> Path:
    """A post as the events receiver saves it, of ``count`` delivered events."""
    stamp = int((datetime.now(UTC) - timedelta(hours=1)).timestamp())
    events = [
        {
            "email": f"user{n}@example.com",
            "timestamp": stamp + n,
            "event": "delivered",
            "sg_event_id": f"{name}-{n}",
            "outbox_id": str(n),
            **fields,
        }
        for n in range(1, count + 1)
    ]
    path = landing / "events" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(events))
    return path


def quarantine_row(home: Path, now: datetime | None = None) -> object:
    return check_quarantine(home / "warehouse.duckdb", now or datetime.now(UTC))


def test_a_post_whose_every_event_is_bad_is_told_by_ingest_and_doctor(rollout_home: Path) -> None:
    """SendGrid dropped the custom args (no outbox_id an email of ours carries): every
    delivery state of the post is lost, and it was said nowhere but the quarantine."""
    run("db", "upgrade")
    landing = rollout_home / "landing"
    sendgrid_post(landing, "events-good.json", 2)
    bad = sendgrid_post(landing, "events-foreign.json", 3, outbox_id="newsletter-7")
    ingested = run("ingest")
    assert ingested.exit_code == 0, ingested.stderr
    assert f"{bad}: every one of its 3 rows is quarantined, nothing of it loaded" in (
        " ".join(ingested.stderr.split())
    )
    assert "`rollout quarantine --days 1` lists them" in ingested.stderr

    row = quarantine_row(rollout_home)
    assert row.status is Status.warn
    assert f"3 rows quarantined in the last {QUARANTINE_DAYS} days (3 events)" in row.detail
    assert f"`rollout quarantine --days {QUARANTINE_DAYS}`" in row.detail
    assert f"1 file nothing of which loaded, every row bad: '{bad}'" in row.detail

    listed = run("quarantine", "--days", str(QUARANTINE_DAYS), "--format", "json")
    assert listed.exit_code == 0, listed.stderr
    assert {r["file"] for r in json.loads(listed.stdout)} == {str(bad)}

    doctor = run("doctor", "--format", "json")
    rows = {r["check"]: r for r in json.loads(doctor.stdout)}
    assert rows["quarantine"]["status"] == "warn"


def test_the_doctor_names_each_wholly_bad_file_as_one_even_one_holding_a_comma(
    rollout_home: Path,
) -> None:
    """A post named "events-a, events-b.json" read, in the doctor's list joined by
    ", ", as two files (neither of which exists): each name is quoted, whole."""
    run("db", "upgrade")
    landing = rollout_home / "landing"
    commas = sendgrid_post(landing, "events-a, events-b.json", 1, outbox_id="x")
    other = sendgrid_post(landing, "events-c.json", 1, outbox_id="y")
    assert run("ingest").exit_code == 0
    row = quarantine_row(rollout_home)
    assert row.status is Status.warn
    assert "2 files nothing of which loaded, every row bad: " in row.detail
    named = row.detail.split("every row bad: ", 1)[1]
    assert sorted(named.split(", '")) == sorted([f"'{commas}'", f"{other}'"])


def test_rows_quarantined_longer_ago_than_the_check_looks_are_not_named(
    rollout_home: Path,
) -> None:
    run("db", "upgrade")
    sendgrid_post(rollout_home / "landing", "events-foreign.json", 1, outbox_id="x")
    assert run("ingest").exit_code == 0
    later = datetime.now(UTC) + timedelta(days=QUARANTINE_DAYS, minutes=1)
    row = quarantine_row(rollout_home, later)
    assert row.status is Status.ok and "no row quarantined" in row.detail
    listed = run("quarantine", "--days", "1", "--format", "json")
    assert len(json.loads(listed.stdout)) == 1  # today's row, still listed


@pytest.mark.parametrize(
    ("kind", "good", "bad_line"),
    [
        ("logins", "logins-2022-01-10.csv", "2022-01-10T10:05:00Z,bob,elv,lost"),
        ("downloads", "downloads-2022-01-10.csv", "left-pad,2022-01-10,-5"),
    ],
)
def test_a_bad_row_of_every_other_kind_loaded_below_the_limit_is_told_too(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch, kind: str, good: str, bad_line: str
) -> None:
    """Another kind's file of bad rows only is refused (exit 2, said); one whose bad
    share is under ROLLOUT_QUARANTINE_LIMIT loads, and its bad rows are named the same."""
    monkeypatch.setenv("ROLLOUT_QUARANTINE_LIMIT", "0.5")
    run("db", "upgrade")
    folder = rollout_home / "landing" / kind
    folder.mkdir(parents=True)
    path = folder / good
    shutil.copy(DATA / "good" / good, path)
    path.write_text(path.read_text().rstrip("\n") + "\n" + bad_line + "\n")
    ingested = run("ingest")
    assert ingested.exit_code == 0, ingested.stderr
    assert "1 row quarantined: `rollout quarantine --days 1`" in ingested.stderr
    assert "nothing of it loaded" not in ingested.stderr
    row = quarantine_row(rollout_home)
    assert row.status is Status.warn
    assert f"1 row quarantined in the last {QUARANTINE_DAYS} days (1 {kind})" in row.detail
    assert "nothing of which loaded" not in row.detail


def test_no_quarantine_and_no_warehouse_are_fine(rollout_home: Path) -> None:
    assert quarantine_row(rollout_home).status is Status.ok
    run("db", "upgrade")
    sendgrid_post(rollout_home / "landing", "events-good.json", 2)
    ingested = run("ingest")
    assert ingested.exit_code == 0 and "quarantined:" not in ingested.stderr
    assert quarantine_row(rollout_home).status is Status.ok


@pytest.mark.parametrize("days", ["800000", "1000000000", "99999999999999999999"])
def test_days_reaching_before_any_date_list_every_row(rollout_home: Path, days: str) -> None:
    """`quarantine --days N` of more days than the calendar holds asks for the rows of
    every day: it lists them, where it stopped in a traceback of the date's overflow."""
    run("db", "upgrade")
    bad = sendgrid_post(rollout_home / "landing", "events-foreign.json", 2, outbox_id="x")
    assert run("ingest").exit_code == 0
    listed = run("quarantine", "--days", days, "--format", "json")
    assert listed.exit_code == 0, (listed.stderr, listed.exception)
    assert [r["file"] for r in json.loads(listed.stdout)] == [str(bad), str(bad)]


def test_a_listing_cut_at_its_limit_says_how_many_rows_there_are(rollout_home: Path) -> None:
    """`rollout quarantine` shows 100 rows unless --limit says otherwise: the doctor's
    "`rollout quarantine --days 7` lists them" of thousands listed the first 100, said
    nowhere. Cut, it says on stderr how many there are and how to list them all; JSON
    on stdout stays the rows alone."""
    run("db", "upgrade")
    sendgrid_post(rollout_home / "landing", "events-foreign.json", 3, outbox_id="x")
    assert run("ingest").exit_code == 0
    cut = run("quarantine", "--days", "7", "--limit", "2", "--format", "json")
    assert cut.exit_code == 0, cut.stderr
    assert len(json.loads(cut.stdout)) == 2
    assert "the first 2 of 3 rows quarantined in the last 7 days: --limit 3 lists them all" in (
        " ".join(cut.stderr.split())
    )
    whole = run("quarantine", "--limit", "3", "--format", "json")
    assert len(json.loads(whole.stdout)) == 3
    assert "--limit" not in whole.stderr
